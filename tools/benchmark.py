"""Training and inference speed of InceptionNeXt against timm and ConvNeXt, timm-benchmark style.

    python tools/benchmark.py --models backbone --sizes t --batch 2 --shape 512 \\
        --variants ours,ours-cl-inside,timm,convnext --repeats 9 --threads 2

``--models`` backbone, upernet, maskrcnn: our configs, and ConvNeXt (mmpretrain's) from the mmseg/
mmdet configs in the installed packages; random weights. ``--sizes`` t, s, b, a (atto backbones in
the T configs, for quick checks). ``--variants``: ``ours``, ``ours-deploy`` (after
``backbone.fuse()``, inference only; ``ours-deploy-onednn`` / ``-no-onednn`` force its oneDNN MLP
kernels on / off), ``timm`` (``inception_next_*`` with our weights and output norms; backbone only)
or ``convnext``, each optionally followed by ``-cl-inside`` (the backbone runs channels-last inside:
``channels_last_inside``, as the tools do on CPUs) or ``-cl`` (model and input channels_last); and
``ours-ort``, ``convnext-ort`` (inference in ONNX Runtime on the CPU: the backbone, or UperNet's
whole network inside mmseg's ``predict``, exported as tools/export.py does and checked against
PyTorch; not Mask R-CNN, whose RPN and RoI heads are not exported), each optionally ``-int8``
(static quantization calibrated on random images). Each inference row gets its GFLOP/s (2 x its
multiply-adds per second, mmengine's counter); the machine's fp32 ceiling is an N x N matrix
product (``--gemm``). A training step (forward + loss, backward, AdamW) takes three timestamps,
synchronized on CUDA: the forward / backward / optimizer split. Steps of all variants alternate
round-robin, so that noise hits all alike; reported is the median step. ``--memory``: peak memory
of 2 steps above the memory before them, one variant after another: CUDA ``max_memory_allocated``,
on CPUs the peak RSS (VmHWM) after handing freed memory back to the OS (glibc ``malloc_trim``);
a fresh process per row would be cleaner. Writes results.json, results.csv and results.md.
"""
from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import gc
import json
import os
import os.path as osp
import re
import shlex
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from backbones.cli.config import build_model, load_config, parse_shape
from backbones.cli.flops import inference_gflops
from backbones.cli.machine import machine_info
from backbones.cli.main import one_line_errors
from backbones.errors import ConfigError
from backbones.runtime.amp import float32_mmcv_ops
from backbones.runtime.layout import channels_last_inside

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIZES = {'a': 'atto', 't': 'tiny', 's': 'small', 'b': 'base'}
UPERNET = ('configs/upernet/upernet_inceptionnext-{}_8xb2-160k_ade20k-512x512.py', 'mmseg',
           'configs/convnext/convnext-{}_upernet_8xb2-amp-160k_ade20k-512x512.py')
CONFIGS = {  # family: ours, package, upstream config in its .mim folder (T's if no such size)
    'backbone': UPERNET, 'upernet': UPERNET,
    'maskrcnn': ('configs/mask_rcnn/mask-rcnn_inceptionnext-{}_fpn_1x_coco.py', 'mmdet',
                 'configs/convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')}
VARIANT = re.compile(r'(ours-deploy(?:-onednn|-no-onednn)?|ours|timm|convnext)(-cl-inside|-cl)?'
                     r'|(ours|convnext)(-ort(?:-int8)?)')
N_GT = 16  # objects (boxes + masks) per image of the synthetic detection batch
CALIB = 4  # random images that calibrate the int8 variants
COLUMNS = (('ms', 'median_ms', '.1f'), ('min', 'min_ms', '.1f'), ('fwd', 'fwd_ms', '.1f'),
           ('bwd', 'bwd_ms', '.1f'), ('opt', 'opt_ms', '.1f'), ('IQR %', 'iqr_pct', '.0f'),
           ('images/s', 'images_per_s', '.2f'), ('GMACs', 'gmacs', '.3g'),
           ('GFLOP/s', 'gflop_per_s', '.1f'), ('x first', 'speed_vs_first', '.2f'),
           ('x timm', 'speed_vs_timm', '.2f'), ('x ConvNeXt', 'speed_vs_convnext', '.2f'),
           ('mem MiB', 'peak_mem_mib', '.0f'), ('params M', 'params_m', '.1f'))


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
    p.add_argument('--memory', action='store_true', help='peak memory too')
    p.add_argument('--gemm', type=int, default=4096, help='N of the N x N x N fp32 matrix product '
                   "timed as the machine's ceiling (default: %(default)s; 0: none)")
    p.add_argument('--out', default='work_dirs/benchmark', help='folder (default: %(default)s)')
    return p.parse_args(argv)


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


def build(family: str, size: str, upstream: bool, args: argparse.Namespace) -> nn.Module:
    """Our model or the upstream ConvNeXt one of a family and size, random weights."""
    arch, (ours, package, path) = SIZES[size], CONFIGS[family]
    if upstream:
        import mmpretrain.models  # registers mmpretrain.ConvNeXt
        folder = osp.join(osp.dirname(__import__(package).__file__), '.mim')
        exists = osp.isfile(osp.join(folder, path.format(arch)))
        cfg = load_config(osp.join(folder, path.format(arch if exists else 'tiny')))
        dims = mmpretrain.models.ConvNeXt.arch_settings[arch]['channels']
    else:
        from backbones import ARCH_SETTINGS
        cfg = load_config(osp.join(ROOT, ours.format('t' if size == 'a' else size)))
        dims = ARCH_SETTINGS[arch]['dims']
    cfg.model.backbone.arch, dims = arch, list(dims)
    if 'neck' in cfg.model:
        cfg.model.neck.in_channels = dims
    else:
        cfg.model.decode_head.in_channels, cfg.model.auxiliary_head.in_channels = dims, dims[2]
    if family == 'backbone':
        cfg.model = cfg.model.backbone
    elif family == 'upernet':  # no padding beyond the input, one whole-image pass at test time
        cfg.model.data_preprocessor.size, cfg.model.test_cfg = args.shape, dict(mode='whole')
    else:  # random weights score below 0.05: keep max_per_img detections so masks are computed
        cfg.model.test_cfg.rcnn.score_thr = 0.0
    torch.manual_seed(0)
    return build_model(cfg).to(args.device)


class TimmFeatures(nn.Module):
    """timm's InceptionNeXt with the weights of ``ours`` and its per-output norms."""

    def __init__(self, ours: nn.Module, arch: str):
        super().__init__()
        import timm
        rate = max((m.drop_prob for m in ours.modules() if hasattr(m, 'drop_prob')), default=0.0)
        self.model = timm.create_model(f'inception_next_{arch}', drop_path_rate=rate)
        self.model.prune_intermediate_layers(prune_head=True)  # the classifier is not run
        missing, unexpected = self.model.load_state_dict(ours.state_dict(), strict=False)
        if missing or any(not k.startswith('norm') for k in unexpected):
            raise RuntimeError(f'timm weights do not match ours: {missing} {unexpected}')
        self.norms = nn.ModuleList(copy.deepcopy(getattr(ours, f'norm{i}'))
                                   for i in ours.out_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.forward_intermediates(x, intermediates_only=True)
        return tuple(norm(f) for norm, f in zip(self.norms, feats))


def synthetic_batch(family: str, args: argparse.Namespace) -> dict:
    """Random uint8 images with annotations, as a dataloader gives them."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    from mmseg.structures import SegDataSample
    g, (h, w), samples = torch.Generator().manual_seed(0), args.shape, []
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0))
    for _ in range(args.batch):
        if family == 'upernet':
            samples.append(SegDataSample(metainfo=meta, gt_sem_seg=PixelData(
                data=torch.randint(0, 150, (1, h, w), generator=g))))
            continue
        wh = torch.rand(N_GT, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
        xy = torch.rand(N_GT, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes, masks = torch.cat([xy, xy + wh], 1), np.zeros((N_GT, h, w), np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        samples.append(DetDataSample(metainfo=meta, gt_instances=InstanceData(
            bboxes=boxes, masks=BitmapMasks(masks, h, w),
            labels=torch.randint(0, 80, (N_GT,), generator=g))))
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in samples]
    return dict(inputs=images, data_samples=samples)


class Runner:
    """One variant: its model, inputs and optimizer; ``step`` times one step in parts."""

    def __init__(self, name: str, model: nn.Module, family: str, size: str, channels_last: bool,
                 args: argparse.Namespace, raw: dict | None):
        self.name, self.model, self.family, self.size, self.args = name, model, family, size, args
        self.cuda = args.device == 'cuda'
        layout = torch.channels_last if channels_last else torch.contiguous_format
        onnx, self.gmacs = '-ort' in name, None
        self.modes = [m for m in args.mode if m == 'infer' or not (onnx or 'deploy' in name)]
        self.params_m = sum(p.numel() for p in model.parameters()) / 1e6
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
        if args.compile and not onnx and family == 'backbone':
            self.model = torch.compile(model)
        elif args.compile and not onnx:
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
        stamps.append(self._now())
        if mode == 'train':
            self.scaler.scale(out).backward()
            stamps.append(self._now())
            self.scaler.step(self.optimizer)  # optimizer.step() unless CUDA AMP
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            stamps.append(self._now())
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def measure_memory(self, mode: str, steps: int = 2) -> None:
        """Peak MiB of ``steps`` steps above the memory before them (see the docstring)."""
        if self.args.compile:  # compiling allocates much host memory: leave it out
            self.step(mode)
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:  # hand memory freed by earlier steps back to the OS (glibc), then VmHWM := VmRSS
            ctypes.CDLL(None).malloc_trim(0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            base = _proc_status_bytes('VmRSS')
        for _ in range(steps):
            self.step(mode)
        peak = torch.cuda.max_memory_allocated() if self.cuda else _proc_status_bytes('VmHWM')
        self.peak_mib[mode] = (peak - base) / 2**20

    def result(self, mode: str) -> dict:
        """The median step of a mode (the upper one of an even count), with its parts."""
        steps, a = sorted(self.times[mode], key=sum), self.args
        mid, totals = steps[len(steps) // 2], [sum(s) for s in steps]
        q = statistics.quantiles(totals, n=4) if len(totals) >= 4 else None
        rate = 2 * self.gmacs * a.batch / sum(mid) if self.gmacs and mode == 'infer' else None
        return dict(family=self.family, size=self.size, variant=self.name, mode=mode,
                    batch=a.batch, shape=list(a.shape), precision=self.precision,
                    median_ms=1e3 * sum(mid), min_ms=1e3 * totals[0], **dict(zip(
                        ('fwd_ms', 'bwd_ms', 'opt_ms'), [1e3 * t for t in mid] + [None] * 2)),
                    images_per_s=a.batch / sum(mid), gflop_per_s=rate,
                    gmacs=self.gmacs if rate else None,
                    iqr_pct=100 * (q[2] - q[0]) / sum(mid) if q else None, params_m=self.params_m,
                    peak_mem_mib=self.peak_mib.get(mode), times_ms=[1e3 * t for t in totals])


def _proc_status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ':'))


def onnx_model(model: nn.Module, family: str, int8: bool, args: argparse.Namespace,
               path: str) -> nn.Module:
    """``model`` exported to ``path`` (once; checked against PyTorch at 1 x H x W), or its int8
    quantization, in ONNX Runtime behind the interface the eager runner calls: the backbone's
    maps, or the segmentor with its network in the file (mmseg's ``predict`` around it)."""
    from backbones.deploy.onnx_export import export_checked, file_metadata
    from backbones.deploy.onnx_quantize import quantize_int8, random_calibration_inputs
    from backbones.deploy.onnx_runtime import OnnxModule, run_segmentor_in_onnx_runtime
    kind = 'backbone' if family == 'backbone' else 'segmentor'
    if not osp.isfile(path):
        meta = dict(kind=kind) if kind == 'backbone' else file_metadata(model, kind, path)
        error = export_checked(model, kind, path, [(1, *args.shape)], meta)[0]
        print(f'[benchmark] {osp.basename(path)}: relative error {error:.1e} vs PyTorch')
    if int8:
        fp32, path = path, path[:-len('onnx')] + 'int8.onnx'
        quantize_int8(fp32, path, random_calibration_inputs(
            getattr(model, 'data_preprocessor', None), args.shape, CALIB))
    if family == 'backbone':
        return OnnxModule(path, args.threads)
    model = copy.deepcopy(model)
    run_segmentor_in_onnx_runtime(model, path, args.threads)
    return model


def build_runners(family: str, size: str, args: argparse.Namespace, folder: str) -> list[Runner]:
    """A runner per variant; those of our model share the weights of one ``ours``, ConvNeXt's
    of one ``convnext``; -ort variants run their exports (in ``folder``)."""
    models, gmacs, runners = {}, {}, []
    raw = synthetic_batch(family, args) if family != 'backbone' else None
    task = {'backbone': 'backbone', 'upernet': 'seg', 'maskrcnn': 'det'}[family]
    for name in args.variants:
        m = VARIANT.fullmatch(name)
        base, suffix = m[1] or m[3], m[2] or m[4] or ''
        if base == 'timm' and family != 'backbone' or '-ort' in suffix and family == 'maskrcnn':
            print(f'[benchmark] {family}: no {name} (' + ('timm: backbone only)' if base == 'timm'
                  else 'its RPN and RoI heads are not exported)'))
            continue
        src = 'convnext' if base == 'convnext' else 'ours'
        if src not in models:
            models[src] = build(family, size, src == 'convnext', args)
            gmacs[src] = inference_gflops(models[src], task, args.shape)
        if '-ort' in suffix:
            model = onnx_model(models[src], family, suffix == '-ort-int8', args,
                               osp.join(folder, f'{src}-{family}-{size}.onnx'))
        else:
            model = (TimmFeatures(models[src], SIZES[size]).to(args.device) if base == 'timm'
                     else copy.deepcopy(models[src]))
            backbone = getattr(model, 'backbone', model)
            if base.startswith('ours-deploy'):
                backbone.eval().fuse({'-onednn': True, '-no-onednn': False}.get(base[11:]))
            if suffix == '-cl-inside':
                channels_last_inside(backbone)
        cl = (args.channels_last or suffix == '-cl') and '-ort' not in suffix
        model = model.to(memory_format=torch.channels_last) if cl else model
        runners.append(Runner(name, model, family, size, cl, args, raw))
        runners[-1].gmacs = gmacs[src]
        if '-ort' in suffix:  # the eager model's (the file's weights are not parameters)
            runners[-1].params_m = sum(p.numel() for p in models[src].parameters()) / 1e6
    return runners


def run_mode(runners: list[Runner], mode: str, args: argparse.Namespace) -> None:
    """Memory first (``--memory``), then the warm-up and the timed steps of every runner of the
    mode, round-robin, the order rotating per round."""
    runners = [r for r in runners if mode in r.modes]
    for r in runners:
        r.model.train(mode == 'train')
        if args.memory:
            r.measure_memory(mode)
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
             f'{CALIB} random images.', '',
             '| model | size | variant | mode | input | ' + ' | '.join(c[0] for c in COLUMNS)
             + ' |', '|---' * 5 + '|---:' * len(COLUMNS) + '|']
    for r in report['results']:
        cells = [r['family'], SIZES[r['size']], r['variant'], r['mode'],
                 f'{r["batch"]}x{r["shape"][0]}x{r["shape"][1]} {r["precision"]}']
        cells += ['-' if r[key] is None else format(r[key], spec) for _, key, spec in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> dict:
    """Build, measure and write everything the flags ask for; returns the report."""
    args = check_args(args)
    report = dict(command=shlex.join(['python', 'tools/benchmark.py', *sys.argv[1:]]),
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
    out = args.out
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(report, f, indent=1)
    with open(osp.join(out, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, ['family', 'size', 'variant', 'mode', 'batch', 'shape',
                                    'precision', *(c[1] for c in COLUMNS)], extrasaction='ignore')
        writer.writeheader()
        writer.writerows(report['results'])
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(markdown(report))
    print(markdown(report) + f'[benchmark] wrote results.json, results.csv and results.md to {out}')
    return report


@one_line_errors
def main() -> None:
    run(parse_args())


if __name__ == '__main__':
    main()
