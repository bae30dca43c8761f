"""Inference latency of the deploy paths, interleaved in one process (median, IQR, minimum).

    python tools/deploy_latency.py CONFIG [--checkpoint CKPT] [--onnx A.onnx B.int8.onnx]
        [--shape 1 512 512] [--threads 2] [--repeats 15] [--warmup 2] [--backbone]

Model variants (a segmentor's class scores at the input size, as the .onnx files give them):
``eager`` (the model as trained, its backbone channels-last inside as the tools run it on CPUs),
``eager-deploy`` (backbone fused, ``fuse()``'s defaults), and
each ``--onnx`` file in ONNX Runtime. With ``--backbone``: the backbone alone, plain, fused with
and without the oneDNN MLP kernels, and the same in channels-last memory format. The minimum is
listed beside the median: on a shared machine it is the steadier estimate of the undisturbed time.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from mmengine.config import DictAction

from backbones.checkpoint import fit_model_checkpoint
from backbones.cli.config import build_model, load_config
from backbones.cli.main import one_line_errors
from backbones.deploy.onnx_export import SegmentorLogits
from backbones.runtime.layout import channels_last_inside


def cpu_description() -> str:
    """CPU model name and its vector ISA flags (the numbers depend on them)."""
    name, flags = platform.processor() or 'unknown CPU', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name':
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile') if f in flags]
    return f'{name} ({", ".join(isa) or "no AVX2"})'


def backbone_variants(backbone: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable]:
    cl = torch.channels_last
    plain = copy.deepcopy(backbone)
    fused = {onednn: copy.deepcopy(backbone).fuse(onednn=onednn) for onednn in (True, False)}
    fused_cl = {k: copy.deepcopy(m).to(memory_format=cl) for k, m in fused.items()}
    x_cl = x.contiguous(memory_format=cl)
    return {'plain': lambda: plain(x),
            'fused, oneDNN MLP': lambda: fused[True](x),
            'fused, plain MLP': lambda: fused[False](x),
            'fused + channels_last, oneDNN MLP': lambda: fused_cl[True](x_cl),
            'fused + channels_last, plain MLP': lambda: fused_cl[False](x_cl)}


def model_variants(model: torch.nn.Module, x: torch.Tensor, onnx_files: list[str],
                   threads: int) -> dict[str, Callable]:
    from backbones.deploy.onnx_runtime import OnnxNetwork
    eager = SegmentorLogits(model).eval()
    deploy = copy.deepcopy(model)
    deploy.backbone.fuse()
    variants = {'eager': lambda: eager(x), 'eager-deploy': lambda: SegmentorLogits(deploy)(x)}
    for path in onnx_files:
        network = OnnxNetwork(path, threads=threads)
        variants[f'ONNX Runtime {path}'] = lambda network=network: network(x)
    return variants


def time_interleaved(variants: dict[str, Callable], repeats: int,
                     warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call; each round calls every variant once, so drifts hit all alike."""
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    return times


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description='Latency of the deploy paths (interleaved)')
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='whole-model checkpoint (default: random weights)')
    parser.add_argument('--onnx', nargs='*', default=[], help='.onnx files of this segmentor')
    parser.add_argument('--shape', nargs=3, type=int, default=[1, 512, 512],
                        metavar=('BATCH', 'H', 'W'))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--backbone', action='store_true', help='time the backbone alone')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    if args.checkpoint:
        model.load_state_dict(fit_model_checkpoint(model, args.checkpoint)[1], strict=False)
    channels_last_inside(model.backbone)  # as the tools run it on CPUs; the copies keep it
    x = torch.randn(args.shape[0], 3, *args.shape[1:])
    variants = (backbone_variants(model.backbone, x) if args.backbone
                else model_variants(model, x, args.onnx, args.threads))
    times = time_interleaved(variants, args.repeats, args.warmup)
    first = statistics.median(next(iter(times.values())))
    print(f'{cpu_description()}, {args.threads} threads, torch {torch.__version__}, input '
          f'{"x".join(map(str, [args.shape[0], 3, *args.shape[1:]]))}, median of {args.repeats}')
    best = min(next(iter(times.values())))
    print('| variant | median ms | IQR ms | min ms | speed vs first (median / min) |\n'
          '|---|---|---|---|---|')
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        median = statistics.median(values)
        print(f'| {name} | {median:.1f} | {q3 - q1:.1f} | {min(values):.1f} | '
              f'{first / median:.2f}x / {best / min(values):.2f}x |')


if __name__ == '__main__':
    main()
