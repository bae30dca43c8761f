"""Training and inference speed of InceptionNeXt against timm and ConvNeXt, timm-benchmark style.

    python tools/analysis_tools/benchmark.py --models backbone,upernet --sizes t --batch 2 \\
        --shape 512 --variants ours,ours-cl-inside,timm,convnext --repeats 9 --threads 2

One runner per variant (random weights), all in one process; their steps alternate round-robin so
that noise hits all alike, and the median step is reported. A training step (forward + loss,
backward, AdamW) is split by three timestamps. Variants and flags: see the README's Speed and
Deploy sections. Writes results.json, results.csv and results.md to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import os.path as osp
import re
import shlex
import statistics
import sys
import tempfile
import time
from functools import partial

import torch
import torch.nn as nn
import zoo
from flops import inference_gflops
from machine import machine_info, peak_memory_mib
from report import input_size, markdown_table
from zoo import CALIB, CONFIGS, SIZES, TASK, TimmFeatures

from backbones.checks.outputs import check_output_folder
from backbones.cli.main import one_line_errors, parse_shape
from backbones.deploy.fuse import fuse_inception_next
from backbones.errors import ConfigError
from backbones.runtime.amp import float32_mmcv_ops
from backbones.runtime.layout import channels_last_inside

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VARIANT = re.compile(r'(ours-deploy(?:-onednn|-no-onednn)?|ours|timm|convnext)(-cl-inside|-cl)?'
                     r'|(ours|convnext)(-ort(?:-int8)?)')
COLUMNS = [('model', 'family', ''), ('size', lambda r: SIZES[r['size']], ''),
           ('variant', 'variant', ''), ('mode', 'mode', ''),
           ('input', lambda r: f'{input_size(r)} {r["precision"]}', ''),
           ('ms', 'median_ms', '.1f'), ('min', 'min_ms', '.1f'), ('fwd', 'fwd_ms', '.1f'),
           ('bwd', 'bwd_ms', '.1f'), ('opt', 'opt_ms', '.1f'), ('IQR %', 'iqr_pct', '.0f'),
           ('images/s', 'images_per_s', '.2f'), ('GMACs', 'gmacs', '.3g'),
           ('GFLOP/s', 'gflop_per_s', '.1f'), ('x first', 'speed_vs_first', '.2f'),
           ('x timm', 'speed_vs_timm', '.2f'), ('x ConvNeXt', 'speed_vs_convnext', '.2f'),
           ('mem MiB', 'peak_mem_mib', '.0f'), ('params M', 'params_m', '.1f'),
           ('dets', 'detections', '.0f')]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='backbone', help='comma list of backbone,upernet,maskrcnn')
    p.add_argument('--sizes', default='t', help='comma list of t, s, b, a (default: t)')
    p.add_argument('--variants', default='ours,ours-cl-inside,ours-cl,ours-deploy-cl-inside,'
                   'ours-deploy-cl,timm,convnext', help='comma list (default: %(default)s)')
    p.add_argument('--mode', default='train,infer', help='train, infer or both')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--shape', type=int, nargs='+', help='H W, or one size (default: 512)')
    p.add_argument('--repeats', type=int, default=10, help='timed steps per variant and mode')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first (default: 2)')
    p.add_argument('--amp', action='store_true', help='autocast: fp16 on CUDA, bf16 on CPUs')
    p.add_argument('--channels-last', action='store_true', help='every model and input')
    p.add_argument('--compile', action='store_true', help='torch.compile every backbone')
    p.add_argument('--threads', type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--device', choices=['cpu', 'cuda'], help='(default: cuda if there is one)')
    p.add_argument('--memory', action='store_true', help='peak memory of 2 steps too')
    p.add_argument('--gemm', type=int, default=4096, help='N of the N x N x N fp32 matrix product '
                   "timed as the machine's ceiling (default: %(default)s; 0: none)")
    p.add_argument('--out', default='work_dirs/benchmark', help='folder (default: %(default)s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the results.* files of an earlier run in --out')
    return p.parse_args(argv)


RESULT_FILES = ('results.json', 'results.csv', 'results.md')


def _split(value: str, what: str, allowed: tuple = ()) -> list[str]:
    items = list(dict.fromkeys(v.strip() for v in value.split(',') if v.strip()))
    valid = (lambda v: v in allowed) if allowed else VARIANT.fullmatch
    if not items or not all(map(valid, items)):
        raise ConfigError(f'--{what} {value!r}: expected a comma list of ' + (', '.join(
            allowed) or 'ours, ours-deploy[-onednn|-no-onednn], timm or convnext, each optionally '
            'with -cl-inside or -cl; ours-ort[-int8], convnext-ort[-int8]'))
    return items


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate the flags; the comma lists become lists."""
    args.models = _split(args.models, 'models', tuple(CONFIGS))
    args.sizes = _split(args.sizes, 'sizes', tuple(SIZES))
    args.mode = _split(args.mode, 'mode', ('train', 'infer'))
    args.variants = _split(args.variants, 'variants')
    if args.channels_last:  # every variant is channels_last: the -cl ones are duplicates
        args.variants = list(dict.fromkeys(re.sub('-cl.*', '', v) for v in args.variants))
    args.shape = parse_shape(args.shape, (512, 512))
    if min(args.batch, args.repeats, args.threads or 1) < 1 or args.warmup < 0:
        raise ConfigError('--batch, --repeats and --threads must be >= 1, --warmup >= 0')
    if 'upernet' in args.models and 'train' in args.mode and args.batch < 2:
        raise ConfigError('--batch 1: training UperNet needs 2 images (the BatchNorm after its '
                          '1x1 pyramid pooling sees one value per channel otherwise)')
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda: CUDA is not available here')
    if args.device == 'cuda' and any('-ort' in v for v in args.variants):
        raise ConfigError('the -ort variants run ONNX Runtime on the CPU: use --device cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


class Runner:
    """One variant: its model, inputs and optimizer; ``step`` times one step in parts."""

    def __init__(self, name: str, model: nn.Module, family: str, size: str, channels_last: bool,
                 args: argparse.Namespace, raw: dict | None, gmacs: float, params_m: float):
        self.name, self.model, self.family, self.size, self.args = name, model, family, size, args
        self.gmacs, self.params_m, self.cuda = gmacs, params_m, args.device == 'cuda'
        layout = torch.channels_last if channels_last else torch.contiguous_format
        onnx = '-ort' in name
        self.modes = [m for m in args.mode if m == 'infer' or not (onnx or 'deploy' in name)]
        self.precision = ('int8' if name.endswith('-int8') else 'fp32' if onnx or not args.amp
                          else 'amp-fp16' if self.cuda else 'amp-bf16')
        self.inputs = {}  # mode: (input tensor, keyword arguments of the model)
        for mode in self.modes:
            x, kwargs = torch.randn(args.batch, 3, *args.shape).to(args.device), {}
            if raw is not None:  # mmseg's and mmdet's models: forward(inputs, data_samples, mode)
                data = model.data_preprocessor(copy.deepcopy(raw), mode == 'train')
                x, kwargs = data['inputs'], dict(data_samples=data['data_samples'],
                                                 mode='loss' if mode == 'train' else 'predict')
            self.inputs[mode] = x.contiguous(memory_format=layout), kwargs
        if 'train' in self.modes:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        self.scaler = torch.amp.GradScaler('cuda', enabled=args.amp and self.cuda)
        self.times: dict[str, list[list[float]]] = {mode: [] for mode in self.modes}
        self.peak_mib: dict[str, float] = {}
        self.detections: float | None = None  # per image, of a detector's last inference step
        if args.compile and not onnx:
            if family == 'backbone':
                self.model = torch.compile(model)
            else:
                model.backbone = torch.compile(model.backbone)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def step(self, mode: str) -> list[float]:
        """Seconds of [forward] (infer), or [forward + loss, backward, optimizer step] (train)."""
        torch.manual_seed(0)  # the same dropout and sampling draws for every variant
        x, kwargs = self.inputs[mode]
        amp, dtype = self.args.amp, torch.float16 if self.cuda else torch.bfloat16
        stamps = [self._now()]  # mmcv's CPU nms and RoIAlign have float32 kernels only:
        with float32_mmcv_ops(amp and not self.cuda), torch.set_grad_enabled(mode == 'train'), \
                torch.autocast(self.args.device, dtype, enabled=amp):
            out = self.model(x, **kwargs)
            if mode == 'train':
                out = (sum(o.float().mean() for o in out) if self.family == 'backbone'
                       else self.model.parse_losses(out)[0])
            elif TASK[self.family] == 'det':
                self.detections = sum(len(s.pred_instances) for s in out) / len(out)
        stamps.append(self._now())
        if mode == 'train':
            self.scaler.scale(out).backward()
            stamps.append(self._now())
            self.scaler.step(self.optimizer)  # optimizer.step() unless CUDA AMP
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            stamps.append(self._now())
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def result(self, mode: str) -> dict:
        """The median step of a mode (the upper one of an even count), with its parts."""
        steps, a = sorted(self.times[mode], key=sum), self.args
        mid, totals = steps[len(steps) // 2], [sum(s) for s in steps]
        q = statistics.quantiles(totals, n=4) if len(totals) >= 4 else None
        rate = 2 * self.gmacs * a.batch / sum(mid) if mode == 'infer' else None
        return dict(family=self.family, size=self.size, variant=self.name, mode=mode,
                    batch=a.batch, shape=list(a.shape), precision=self.precision,
                    median_ms=1e3 * sum(mid), min_ms=1e3 * totals[0], **dict(zip(
                        ('fwd_ms', 'bwd_ms', 'opt_ms'), [1e3 * t for t in mid] + [None] * 2)),
                    images_per_s=a.batch / sum(mid), gflop_per_s=rate,
                    gmacs=self.gmacs if rate else None,
                    iqr_pct=100 * (q[2] - q[0]) / sum(mid) if q else None, params_m=self.params_m,
                    peak_mem_mib=self.peak_mib.get(mode), times_ms=[1e3 * t for t in totals],
                    detections=self.detections if mode == 'infer' else None)


def build_runners(family: str, size: str, args: argparse.Namespace, folder: str) -> list[Runner]:
    """A runner per variant; those of our model share the weights of one ``ours``, ConvNeXt's
    of one ``convnext``; -ort variants run their exports (in ``folder``)."""
    models, runners = {}, []
    raw = zoo.synthetic_batch(family, args.batch, args.shape) if family != 'backbone' else None
    for name in args.variants:
        m = VARIANT.fullmatch(name)
        base, suffix = m[1] or m[3], m[2] or m[4] or ''
        if base == 'timm' and family != 'backbone':
            print(f'[benchmark] {family}: no {name} (timm: backbone only)')
            continue
        src = 'convnext' if base == 'convnext' else 'ours'
        if src not in models:
            model = zoo.build(family, size, src == 'convnext', args.shape, ROOT, args.device)
            models[src] = model, inference_gflops(model, TASK[family], args.shape)
        eager, gmacs = models[src]
        if '-ort' in suffix:
            path = osp.join(folder, f'{src}-{family}-{size}.onnx')
            model = zoo.in_onnx_runtime(eager, family, path, args.shape, args.threads,
                                        suffix == '-ort-int8')
        else:
            model = (TimmFeatures(eager, SIZES[size]).to(args.device) if base == 'timm'
                     else copy.deepcopy(eager))
            backbone = getattr(model, 'backbone', model)
            if base.startswith('ours-deploy'):
                fuse_inception_next(backbone.eval(),
                                    {'-onednn': True, '-no-onednn': False}.get(base[11:]))
            if suffix == '-cl-inside':
                channels_last_inside(backbone)
        cl = (args.channels_last or suffix == '-cl') and '-ort' not in suffix
        model = model.to(memory_format=torch.channels_last) if cl else model
        params_m = sum(p.numel() for p in (eager if '-ort' in suffix else model).parameters()) / 1e6
        runners.append(Runner(name, model, family, size, cl, args, raw, gmacs, params_m))
    return runners


def run_mode(runners: list[Runner], mode: str, args: argparse.Namespace) -> None:
    """Memory first (``--memory``), then the warm-up and the timed steps of every runner of the
    mode, round-robin, the order rotating per round."""
    runners = [r for r in runners if mode in r.modes]
    for r in runners:
        r.model.train(mode == 'train')
        if args.memory:
            if args.compile:  # compiling allocates much host memory: leave it out
                r.step(mode)
            r.peak_mib[mode] = peak_memory_mib(partial(r.step, mode), args.device)
    for i in range(args.warmup + args.repeats) if runners else ():
        for r in runners[i % len(runners):] + runners[:i % len(runners)]:
            parts = r.step(mode)
            if i >= args.warmup:
                r.times[mode].append(parts)


def markdown(report: dict) -> str:
    m, s = report['machine'], report['settings']
    lines = ['# InceptionNeXt speed benchmark', '',
             f'- machine: {m["cpu"]} ({", ".join(m["isa"])}; torch kernels '
             f'{m["torch_cpu_capability"]}), {m["logical_cpus"]} logical CPUs, '
             f'{m["torch_threads"]} torch threads; GPU: {m["gpu"] or "none"}',
             f'- software: Python {m["python"]}, '
             + ', '.join(f'{k} {v}' for k, v in m['versions'].items()),
             f'- command: `{report["command"]}`',
             f'- load average before: {m["load_average"]}, after: {report["load_average_after"]}',
             '- fp32 GEMM ceiling: ' + (f'{m["gemm"]["gflop_per_s"]:.1f} GFLOP/s (best '
                                        f'{m["gemm"]["n"]}^3 torch.mm)' if m['gemm'] else '-'),
             '', f'ms: the median of {s["repeats"]} steps (after {s["warmup"]} warm-up), min: the '
             'fastest, split into fwd (forward + loss), bwd (backward), opt (AdamW step); IQR in % '
             'of it; GMACs: multiply-adds per image at inference, GFLOP/s: 2 x GMACs x images/s; '
             'x first / x timm / x ConvNeXt: throughput ratio to the first variant of the model, '
             'timm, ConvNeXt (> 1: faster); mem: peak MiB of 2 steps; int8: calibrated on '
             f'{CALIB} random images; -ort: the exported segmentor or whole detector in ONNX '
             'Runtime (a detector\'s data preprocessor and mask pasting in PyTorch, as in eager); '
             'dets: detections per image (Mask R-CNN: score_thr 0 on every side, so each keeps '
             'max_per_img).', '']
    return '\n'.join(lines + markdown_table(COLUMNS, report['results'])) + '\n'


def run(args: argparse.Namespace) -> dict:
    """Build, measure and write everything the flags ask for; returns the report."""
    args = check_args(args)
    check_output_folder(args.out, '--out', names=RESULT_FILES, overwrite=args.overwrite)
    report = dict(command=shlex.join(['python', 'tools/analysis_tools/benchmark.py',
                                      *sys.argv[1:]]),
                  machine=machine_info(args.device, args.gemm),
                  settings=dict(vars(args), shape=list(args.shape)), results=[])
    with tempfile.TemporaryDirectory() as folder:  # the -ort exports
        for family in args.models:
            for size in args.sizes:
                print(f'[benchmark] {family} {SIZES[size]}: {", ".join(args.variants)}',
                      flush=True)
                runners = build_runners(family, size, args, folder)
                for mode in args.mode:
                    run_mode(runners, mode, args)
                report['results'] += [r.result(mode) for r in runners for mode in r.modes]
    refs = {}  # (family, size, mode, variant or 'first'): row
    for r in report['results']:
        refs.setdefault((r['family'], r['size'], r['mode'], 'first'), r)
        refs[r['family'], r['size'], r['mode'], r['variant']] = r
    for r in report['results']:  # throughput over that of the first, timm and ConvNeXt rows
        for ref in ('first', 'timm', 'convnext'):
            other = refs.get((r['family'], r['size'], r['mode'], ref))
            r[f'speed_vs_{ref}'] = r['images_per_s'] / other['images_per_s'] if other else None
    report['load_average_after'] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(report, f, indent=1)
    with open(osp.join(args.out, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, ['family', 'size', 'variant', 'mode', 'batch', 'shape',
                                    'precision', *(key for _, key, spec in COLUMNS if spec)],
                                extrasaction='ignore')
        writer.writeheader()
        writer.writerows(report['results'])
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(markdown(report))
    print(markdown(report) + '[benchmark] wrote results.json, results.csv and results.md to '
          + args.out)
    return report


@one_line_errors
def main() -> None:
    run(parse_args())


if __name__ == '__main__':
    main()
