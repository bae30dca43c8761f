"""Training and inference speed and peak memory of InceptionNeXt against ConvNeXt and timm.

    python tools/benchmark.py --models backbone,upernet,maskrcnn --sizes t --batch 2 \\
        --shape 512 512 --mode train,infer --repeats 10 --out work_dirs/benchmark/t_512

Families (``--models``): ``backbone`` (the backbone alone), ``upernet`` and ``maskrcnn``. Our
models are built from our configs, ConvNeXt (mmpretrain's, as upstream builds it) from the
mmseg/mmdet ConvNeXt configs shipped in the installed packages, all with ``init_cfg=None``.
Variants (``--variants``, default all that apply):

- ``ours``, ``ours-cl``: InceptionNeXt as configured, NCHW / channels_last (for full models
  the whole model and its input);
- ``ours-deploy``, ``ours-deploy-cl``: after ``backbone.fuse()`` (inference only);
- ``timm`` (backbone only): timm's ``inception_next_*`` with the same weights, run through
  ``forward_intermediates`` and followed by the same per-output LayerNorms as ours;
- ``convnext``: ConvNeXt from the upstream config.

Every model of a family and size runs in this process, warmed up, then one step each in
round-robin (the order rotating per repeat) so machine noise hits all alike; the tables give
medians and throughput ratios. The training step is forward + loss + backward + AdamW step (the
same optimizer for every model), on synthetic data preprocessed once: UperNet with a whole-image
test pass and no padding beyond the input; Mask R-CNN with ``N_GT`` boxes and masks per image and
``score_thr=0``, so that inference segments ``max_per_img`` detections however random the
weights. Full models also get a per-module breakdown (``Timeline``) from extra instrumented
steps. Peak memory is measured per model in a fresh subprocess: CUDA ``max_memory_allocated``,
or on the CPU the peak resident set size (VmHWM, reset through /proc/self/clear_refs), each
minus the value after the model and its input were built. Writes ``results.json`` and
``results.md`` to ``--out``.

On a CPU shared with other work, ``--threads 1`` avoids OpenMP threads waiting on each other.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import os.path as osp
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from backbones.cli.main import one_line_errors
from backbones.deploy.fuse import randomize_bn_and_layer_scale_
from backbones.errors import ConfigError
from backbones.runtime.amp import float32_mmcv_ops

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FAMILIES = ('backbone', 'upernet', 'maskrcnn')
SIZES = {'t': 'tiny', 's': 'small', 'b': 'base'}
VARIANTS = ('ours', 'ours-cl', 'ours-deploy', 'ours-deploy-cl', 'timm', 'convnext')
MODES = ('train', 'infer')
OUR_CONFIGS = {
    'upernet': 'configs/upernet/upernet_inceptionnext-{s}_8xb2-160k_ade20k-512x512.py',
    'maskrcnn': 'configs/mask_rcnn/mask-rcnn_inceptionnext-{s}_fpn_1x_coco.py',
}
# (package, config inside its .mim folder); mmdet ships Mask R-CNN + ConvNeXt for T only: S and
# B use it with the arch and the FPN input channels changed.
UPSTREAM_CONFIGS = {
    'upernet': ('mmseg', 'configs/convnext/'
                'convnext-{arch}_upernet_8xb2-amp-160k_ade20k-512x512.py'),
    'maskrcnn': ('mmdet', 'configs/convnext/'
                 'mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'),
}
CONVNEXT_DIMS = {'tiny': [96, 192, 384, 768], 'small': [96, 192, 384, 768],
                 'base': [128, 256, 512, 1024]}
COMPONENTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head')
ENTRY_POINTS = ('forward', 'loss', 'predict', 'loss_and_predict')
MEMORY_STEPS = 2
N_GT = 16  # objects (boxes + masks) per image of the synthetic detection batch
RESULT_MARK = 'BENCHMARK-MEMORY '


@dataclass
class Options:
    """What every model of a run shares."""

    batch: int
    shape: tuple[int, int]
    device: str
    amp: bool
    channels_last: bool
    compile: bool
    threads: int


@dataclass
class Case:
    """One model of a family: its step functions and what was measured."""

    family: str
    size: str
    variant: str
    model: nn.Module
    loss_fn: Callable[[], torch.Tensor]
    infer_fn: Callable[[], Any]
    channels_last: bool
    params_m: float
    rel_err: float | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: Any = None
    times: dict[str, list[float]] = field(default_factory=dict)
    breakdown: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def modes(self) -> tuple[str, ...]:
        return ('infer',) if 'deploy' in self.variant else MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Training/inference speed and memory of '
                                     'InceptionNeXt against ConvNeXt and timm')
    parser.add_argument('--models', default='backbone', help='comma list of '
                        f'{", ".join(FAMILIES)} (default: backbone)')
    parser.add_argument('--sizes', default='t', help='comma list of t, s, b (default: t)')
    parser.add_argument('--variants', default=','.join(VARIANTS),
                        help='comma list of models to compare (default: all that apply)')
    parser.add_argument('--mode', default='train,infer', help='train, infer or both')
    parser.add_argument('--batch', type=int, default=2, help='images per step (default: 2)')
    parser.add_argument('--shape', type=int, nargs='+', default=[512, 512], metavar='SIZE',
                        help='input height and width, or one size (default: 512 512)')
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed steps per model (default: 10); the median is reported')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (default: 2)')
    parser.add_argument('--breakdown-repeats', type=int, default=3,
                        help='instrumented steps per full model for the per-module times '
                        '(default: 3; 0 skips them)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: bfloat16 autocast on the CPU, float16 on CUDA')
    parser.add_argument('--channels-last', action='store_true',
                        help='run every model (baselines too) and input in channels_last')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the backbone of every model')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda if present)')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    parser.add_argument('--out', default=None, help='output folder (default: work_dirs/'
                        'benchmark/<models>_<sizes>_b<batch>_<H>x<W>[_amp][_cl][_compile])')
    parser.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _split(value: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    items = [v.strip() for v in value.split(',') if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ConfigError(f'--{what} {value!r}: expected a comma list of {", ".join(allowed)}')
    return list(dict.fromkeys(items))


def check_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list[str],
                                                   Options]:
    """(families, sizes, variants, modes, options) from the command line."""
    families = _split(args.models, FAMILIES, 'models')
    sizes = [{v: k for k, v in SIZES.items()}.get(s, s)
             for s in _split(args.sizes, (*SIZES, *SIZES.values()), 'sizes')]
    variants = _split(args.variants, VARIANTS, 'variants')
    modes = _split(args.mode, MODES, 'mode')
    if args.channels_last:  # every model is channels_last already
        variants = list(dict.fromkeys(v.removesuffix('-cl') for v in variants))
    if len(args.shape) not in (1, 2) or min(args.shape) < 32:
        raise ConfigError('--shape: give H W (or one size for a square input), each at least 32')
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.breakdown_repeats < 0:
        raise ConfigError('--batch and --repeats must be >= 1, --warmup and '
                          '--breakdown-repeats >= 0')
    if 'upernet' in families and 'train' in modes and args.batch < 2:
        raise ConfigError('--batch 1: training UperNet needs at least 2 images (the BatchNorm '
                          'after its 1x1 pyramid pooling sees one value per channel otherwise)')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'--device {device}: CUDA is not available here')
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError('--threads must be >= 1')
        torch.set_num_threads(args.threads)
    opts = Options(args.batch, (args.shape[0], args.shape[-1]), device, args.amp,
                   args.channels_last, args.compile, torch.get_num_threads())
    return families, sizes, variants, modes, opts


# --- models -------------------------------------------------------------------------------------

def _config(family: str, size: str, upstream: bool):
    from mmengine.config import Config
    if not upstream:
        return Config.fromfile(osp.join(ROOT, OUR_CONFIGS[family].format(s=size)))
    package, path = UPSTREAM_CONFIGS[family]
    root = osp.dirname(__import__(package).__file__)
    cfg = Config.fromfile(osp.join(root, '.mim', path.format(arch=SIZES[size])))
    if family == 'maskrcnn':
        cfg.model.backbone.arch = SIZES[size]
        cfg.model.neck.in_channels = CONVNEXT_DIMS[SIZES[size]]
    return cfg


def _registry(family: str):
    import mmpretrain.models  # noqa: F401  (registers mmpretrain.ConvNeXt)
    from mmengine.registry import init_default_scope
    if family == 'maskrcnn':
        init_default_scope('mmdet')
        from mmdet.registry import MODELS
    else:
        init_default_scope('mmseg')
        from mmseg.registry import MODELS
    return MODELS


def _build(family: str, size: str, upstream: bool, opts: Options) -> nn.Module:
    """A backbone (family 'backbone') or a full model of a config, random weights, no download."""
    from mmengine.model import revert_sync_batchnorm
    cfg = _config('upernet' if family == 'backbone' else family, size, upstream)
    models = _registry(family)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    if family == 'backbone':
        return models.build(cfg.model.backbone).to(opts.device)
    cfg.model.pop('pretrained', None)
    if family == 'upernet':  # no padding beyond the input, one whole-image pass at test time
        cfg.model.data_preprocessor.size = opts.shape
        cfg.model.test_cfg = dict(mode='whole')
    else:  # random weights score below 0.05: keep max_per_img detections so masks are computed
        cfg.model.test_cfg.rcnn.score_thr = 0.0
    return revert_sync_batchnorm(models.build(cfg.model)).to(opts.device)


class TimmFeatures(nn.Module):
    """timm's InceptionNeXt as a multi-scale backbone, with given per-output norms."""

    def __init__(self, model: nn.Module, norms: list[nn.Module]):
        super().__init__()
        self.model = model
        self.norms = nn.ModuleList(norms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.forward_intermediates(x, intermediates_only=True)
        return tuple(norm(f) for norm, f in zip(self.norms, feats))


def _timm_like(ours: nn.Module, size: str) -> nn.Module:
    import timm
    model = timm.create_model(f'inception_next_{SIZES[size]}', pretrained=False,
                              drop_path_rate=_drop_path_rate(ours))
    model.prune_intermediate_layers(prune_head=True)  # the classifier is not run
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if missing or any(not k.startswith('norm') for k in unexpected):
        raise RuntimeError(f'timm weights do not match ours: {missing} {unexpected}')
    norms = [copy.deepcopy(getattr(ours, f'norm{i}')) for i in ours.out_indices]
    return TimmFeatures(model, norms).to(next(ours.parameters()).device)


def _drop_path_rate(backbone: nn.Module) -> float:
    rates = [m.drop_prob for m in backbone.modules() if hasattr(m, 'drop_prob')]
    return max(rates, default=0.0)


def _backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, 'backbone', model)


def _variant_model(variant: str, ours: nn.Module, size: str, family: str,
                   opts: Options) -> nn.Module:
    if variant == 'convnext':
        return _build(family, size, True, opts)
    if variant == 'timm':
        return _timm_like(ours, size)
    model = copy.deepcopy(ours)
    if 'deploy' in variant:
        model.eval()
        _backbone_of(model).fuse()
    return model


def _channels_last(t: Any) -> Any:
    return t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) else t


def build_cases(family: str, size: str, variants: list[str], opts: Options,
                check: bool = True) -> list[Case]:
    """The models of ``variants`` for one family and size, with their data and step functions.

    ``ours`` (randomized BatchNorm statistics and layer scales) is the source of the weights of
    the other InceptionNeXt variants; with ``check`` and ``ours`` among ``variants``, their
    backbone features are compared with its own.
    """
    ours = None
    if any(v != 'convnext' for v in variants):
        ours = _build(family, size, False, opts)
        randomize_bn_and_layer_scale_(_backbone_of(ours), gamma_range=(0.0, 0.1))
    raw = _raw_batch(family, opts) if family != 'backbone' else None
    image = torch.randn(opts.batch, 3, *opts.shape, generator=torch.Generator().manual_seed(0))
    cases = []
    for variant in variants:
        if variant == 'timm' and family != 'backbone':
            continue
        model = ours if variant == 'ours' else _variant_model(variant, ours, size, family, opts)
        cl = opts.channels_last or variant.endswith('-cl')
        if cl:
            model = model.to(memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        if family == 'backbone':
            x = image.to(opts.device)
            x = _channels_last(x) if cl else x
            train_in = infer_in = ((x,), {})
        else:
            train_in = _prepared(model, raw, True, cl)
            infer_in = _prepared(model, raw, False, cl)
        loss_fn, infer_fn = _step_fns(family, model, train_in, infer_in)
        cases.append(Case(family, size, variant, model, loss_fn, infer_fn, cl, params))
    if check:
        _check_outputs(cases, image.to(opts.device), family)
    if opts.compile:
        for case in cases:
            if family == 'backbone':
                case.model = torch.compile(case.model)
                case.loss_fn, case.infer_fn = _step_fns(family, case.model, *_inputs_of(case))
            else:
                case.model.backbone = torch.compile(case.model.backbone)
    return cases


def _inputs_of(case: Case) -> tuple:
    return case.loss_fn.inputs, case.infer_fn.inputs  # type: ignore[attr-defined]


def _step_fns(family: str, model: nn.Module, train_in: tuple, infer_in: tuple
              ) -> tuple[Callable[[], torch.Tensor], Callable[[], Any]]:
    if family == 'backbone':
        def loss_fn() -> torch.Tensor:
            return sum(o.float().mean() for o in model(*train_in[0]))

        def infer_fn() -> Any:
            return model(*infer_in[0])
    else:
        def loss_fn() -> torch.Tensor:
            losses = model(*train_in[0], **train_in[1], mode='loss')
            return model.parse_losses(losses)[0]

        def infer_fn() -> Any:
            return model(*infer_in[0], **infer_in[1], mode='predict')
    loss_fn.inputs, infer_fn.inputs = train_in, infer_in  # type: ignore[attr-defined]
    return loss_fn, infer_fn


def _raw_batch(family: str, opts: Options) -> dict:
    """Random uint8 images with annotations, as a dataloader would give them."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    h, w = opts.shape
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for _ in range(opts.batch)]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0))
    samples = []
    if family == 'upernet':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        for _ in images:
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w), generator=g))
            samples.append(sample)
    else:
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData
        for _ in images:
            n = N_GT
            wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
            xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
            boxes = torch.cat([xy, xy + wh], dim=1)
            masks = np.zeros((n, h, w), dtype=np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=boxes, labels=torch.randint(0, 80, (n,), generator=g),
                masks=BitmapMasks(masks, h, w))
            samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def _prepared(model: nn.Module, raw: dict, training: bool, cl: bool) -> tuple[tuple, dict]:
    data = model.data_preprocessor(copy.deepcopy(raw), training)
    inputs = _channels_last(data['inputs']) if cl else data['inputs']
    return (inputs,), dict(data_samples=data['data_samples'])


def _rel_err(ref: Any, out: Any) -> float:
    return max(((a.float() - b.float()).norm() / a.float().norm()).item()
               for a, b in zip(ref, out))


@torch.no_grad()
def _check_outputs(cases: list[Case], image: torch.Tensor, family: str) -> None:
    """Relative error of each same-weights variant's backbone features against ``ours``."""
    by_name = {c.variant: c for c in cases}
    ref_model = by_name['ours'].model if 'ours' in by_name else None
    if ref_model is None:
        return
    if family != 'backbone':
        image = by_name['ours'].infer_fn.inputs[0][0]  # type: ignore[attr-defined]
    training = ref_model.training
    ref_model.eval()
    ref = _backbone_of(ref_model)(image)
    for case in cases:
        if case.variant == 'convnext':
            continue
        model = case.model if family == 'backbone' else case.model.backbone
        was_training = model.training
        model.eval()
        case.rel_err = _rel_err(ref, model(_channels_last(image) if case.channels_last else image))
        model.train(was_training)
    ref_model.train(training)


# --- steps and timing ---------------------------------------------------------------------------

def _autocast(opts: Options) -> contextlib.AbstractContextManager:
    if not opts.amp:
        return contextlib.nullcontext()
    if opts.device.startswith('cuda'):
        return torch.autocast('cuda', dtype=torch.float16)
    stack = contextlib.ExitStack()  # mmcv's CPU nms and RoIAlign have float32 kernels only
    stack.enter_context(float32_mmcv_ops())
    stack.enter_context(torch.autocast('cpu', dtype=torch.bfloat16))
    return stack


def _sync(opts: Options) -> None:
    if opts.device.startswith('cuda'):
        torch.cuda.synchronize()


def prepare(case: Case, mode: str, opts: Options) -> None:
    """Put the model in the mode's state; the optimizer is created on the first training step."""
    case.model.train(mode == 'train')
    if mode == 'train' and case.optimizer is None:
        params = [p for p in case.model.parameters() if p.requires_grad]
        case.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
        if opts.amp and opts.device.startswith('cuda'):
            case.scaler = torch.amp.GradScaler('cuda')


def step(case: Case, mode: str, opts: Options, timeline: Timeline | None = None) -> float:
    """One training or inference step; its wall time in seconds."""
    torch.manual_seed(0)  # the same dropout / sampling draws for every model
    _sync(opts)
    start = time.perf_counter()
    if mode == 'infer':
        with torch.no_grad(), _autocast(opts):
            case.infer_fn()
        _sync(opts)
        return time.perf_counter() - start
    with _autocast(opts):
        loss = case.loss_fn()
    if timeline is not None:
        _sync(opts)
        timeline.mark('forward end')
        timeline.hook_backward()
    if case.scaler is not None:
        case.scaler.scale(loss).backward()
    else:
        loss.backward()
    if timeline is not None:
        _sync(opts)
        timeline.mark('backward end')
    if case.scaler is not None:
        case.scaler.step(case.optimizer)
        case.scaler.update()
    else:
        case.optimizer.step()
    case.optimizer.zero_grad(set_to_none=True)
    _sync(opts)
    return time.perf_counter() - start


def _round_robin(cases: list[Case], n: int) -> Iterator[Case]:
    for r in range(n):
        k = r % len(cases)
        yield from cases[k:] + cases[:k]


def time_cases(cases: list[Case], mode: str, opts: Options, warmup: int, repeats: int) -> None:
    """Warm up, then time ``repeats`` steps of each case, interleaved round-robin."""
    cases = [c for c in cases if mode in c.modes]
    for case in cases:
        prepare(case, mode, opts)
    for case in _round_robin(cases, warmup):
        step(case, mode, opts)
    for case in cases:
        case.times[mode] = []
    for case in _round_robin(cases, repeats):
        case.times[mode].append(step(case, mode, opts))


class Timeline:
    """Per-module wall times of a full model's step.

    Forward: each top-level module timed at its entry points (``forward``, ``loss``,
    ``predict``, ``loss_and_predict``; nested calls count once). Backward: every autograd node
    is owned by the first module (backbone, neck, heads in that order) whose outputs reach it,
    and timed by node hooks; ``bwd other`` is the rest (losses outside the heads, hook costs).
    """

    def __init__(self, model: nn.Module, opts: Options):
        self.opts = opts
        self.components = [n for n in COMPONENTS if isinstance(getattr(model, n, None), nn.Module)]
        self._patched: list[tuple[nn.Module, str]] = []
        self._depth = dict.fromkeys(self.components, 0)
        self.reset()
        for name in self.components:
            module = getattr(model, name)
            for entry in ENTRY_POINTS:
                if callable(getattr(type(module), entry, None)):
                    setattr(module, entry, self._wrap(name, getattr(module, entry)))
                    self._patched.append((module, entry))

    def reset(self) -> None:
        self.forward = dict.fromkeys(self.components, 0.0)
        self.backward = dict.fromkeys(self.components, 0.0)
        self.roots: dict[str, list[torch.Tensor]] = {n: [] for n in self.components}
        self.marks: dict[str, float] = {'start': time.perf_counter()}
        self._node_start = 0.0

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth[name]:
                return fn(*args, **kwargs)
            self._depth[name] = 1
            _sync(self.opts)
            start = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                _sync(self.opts)
            finally:
                self._depth[name] = 0
                self.forward[name] += time.perf_counter() - start
            if torch.is_grad_enabled():
                self.roots[name] += [t for t in _tensors(out) if t.grad_fn is not None]
            return out
        return timed

    def hook_backward(self) -> None:
        """Give each autograd node of the step's graph to its module and time it."""
        owner: dict[Any, str] = {}
        for name in self.components:
            stack = [t.grad_fn for t in self.roots[name]]
            while stack:
                node = stack.pop()
                if node is None or node in owner:
                    continue
                owner[node] = name
                stack += [fn for fn, _ in node.next_functions]
        for node, name in owner.items():
            node.register_prehook(self._pre_hook)
            node.register_hook(self._post_hook(name))
        self.roots = {n: [] for n in self.components}

    def _pre_hook(self, grad_outputs: Any) -> None:
        _sync(self.opts)
        self._node_start = time.perf_counter()

    def _post_hook(self, name: str) -> Callable:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            _sync(self.opts)
            self.backward[name] += time.perf_counter() - self._node_start
        return hook

    def remove(self) -> None:
        for module, entry in self._patched:
            delattr(module, entry)

    def result(self, mode: str, total: float) -> dict[str, float]:
        """Milliseconds per part of the last step."""
        ms = {f'fwd {n}': 1e3 * t for n, t in self.forward.items()}
        end_fwd = self.marks.get('forward end', self.marks['start'] + total)
        ms['fwd other'] = 1e3 * (end_fwd - self.marks['start']) - sum(ms.values())
        if mode == 'train':
            bwd = {f'bwd {n}': 1e3 * t for n, t in self.backward.items()}
            ms.update(bwd)
            ms['bwd other'] = 1e3 * (self.marks['backward end'] - end_fwd) - sum(bwd.values())
            ms['optimizer'] = 1e3 * (self.marks['start'] + total - self.marks['backward end'])
        ms['total'] = 1e3 * total
        return ms


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def breakdown_cases(cases: list[Case], mode: str, opts: Options, repeats: int) -> None:
    """Instrumented steps (after the timed ones), interleaved, for the per-module table."""
    cases = [c for c in cases if mode in c.modes]
    for case in cases:
        prepare(case, mode, opts)
        case.breakdown[mode] = []
    timelines = {id(c): Timeline(c.model, opts) for c in cases}
    try:
        for case in _round_robin(cases, repeats):
            timeline = timelines[id(case)]
            timeline.reset()
            total = step(case, mode, opts, timeline)
            case.breakdown[mode].append(timeline.result(mode, total))
    finally:
        for timeline in timelines.values():
            timeline.remove()


# --- memory -------------------------------------------------------------------------------------

def _rss_kib(field_name: str) -> int | None:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field_name + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def measure_memory(case: Case, mode: str, opts: Options) -> dict:
    """Peak memory of ``MEMORY_STEPS`` steps above the memory after the model was built."""
    prepare(case, mode, opts)
    if opts.compile:  # compiling allocates much host memory: leave it out
        step(case, mode, opts)
    gc.collect()
    if opts.device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(MEMORY_STEPS):
            step(case, mode, opts)
        peak = torch.cuda.max_memory_allocated() - base
        method = 'CUDA max_memory_allocated minus allocated before the steps'
    else:
        base_kib = _rss_kib('VmRSS')
        if base_kib is not None and _reset_peak_rss():
            for _ in range(MEMORY_STEPS):
                step(case, mode, opts)
            peak = (_rss_kib('VmHWM') - base_kib) * 1024
            method = 'peak resident set size (VmHWM) minus RSS before the steps'
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for _ in range(MEMORY_STEPS):
                step(case, mode, opts)
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
            method = 'growth of the lifetime peak RSS (ru_maxrss): a lower bound'
    return dict(peak_mib=peak / 2**20, method=method)


def memory_child(spec: str) -> None:
    """Build one model and print its peak memory as JSON (run in a fresh subprocess)."""
    s = json.loads(spec)
    opts = Options(**{**s['opts'], 'shape': tuple(s['opts']['shape'])})
    torch.set_num_threads(opts.threads)
    # Only this model: nothing runs before the baseline (freed activations would stay resident).
    case = build_cases(s['family'], s['size'], [s['variant']], opts, check=False)[0]
    print(RESULT_MARK + json.dumps(measure_memory(case, s['mode'], opts)), flush=True)


def memory_in_subprocess(row: dict, opts: Options) -> dict:
    """``measure_memory`` of the row's model and mode in a fresh Python process."""
    spec = json.dumps(dict(family=row['family'], size=row['size'], variant=row['variant'],
                           mode=row['mode'], opts={**opts.__dict__, 'shape': list(opts.shape)}))
    proc = subprocess.run([sys.executable, osp.abspath(__file__), '--memory-child', spec],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    return dict(peak_mib=None, method=f'failed: {tail}')


# --- report -------------------------------------------------------------------------------------

def machine_info(opts: Options) -> dict:
    """Where and with what the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        names = [ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')]
        cpu = names[0] if names else cpu
    versions = {}
    for name in ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain', 'timm'):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    cuda = opts.device.startswith('cuda')
    return dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=opts.threads,
                gpu=torch.cuda.get_device_name() if cuda else None, device=opts.device,
                platform=platform.platform(), python=platform.python_version(),
                versions=versions,
                load_average=list(os.getloadavg()) if hasattr(os, 'getloadavg') else None)


def _iqr_pct(values: list[float]) -> float | None:
    if len(values) < 4:
        return None
    q = statistics.quantiles(values, n=4)
    return 100 * (q[2] - q[0]) / statistics.median(values)


def rows_of(cases: list[Case], opts: Options) -> list[dict]:
    """One result row per case and timed mode."""
    rows = []
    for case in cases:
        for mode, times in case.times.items():
            median = statistics.median(times)
            rows.append(dict(
                family=case.family, size=case.size, variant=case.variant, mode=mode,
                batch=opts.batch, shape=list(opts.shape), channels_last=case.channels_last,
                median_ms=1e3 * median, min_ms=1e3 * min(times), iqr_pct=_iqr_pct(times),
                images_per_s=opts.batch / median, times_ms=[1e3 * t for t in times],
                params_m=case.params_m, peak_mem_mib=None, rel_err_vs_ours=case.rel_err,
                breakdown_ms=_median_breakdown(case.breakdown.get(mode))))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Throughput and memory of each row relative to timm's and ConvNeXt's of its group."""
    by_key = {(r['family'], r['size'], r['mode'], r['variant']): r for r in rows}
    for r in rows:
        for ref in ('timm', 'convnext'):
            other = by_key.get((r['family'], r['size'], r['mode'], ref))
            r[f'speed_vs_{ref}'] = (r['images_per_s'] / other['images_per_s']
                                    if other else None)
            r[f'mem_vs_{ref}'] = (r['peak_mem_mib'] / other['peak_mem_mib']
                                  if other and r['peak_mem_mib'] and other['peak_mem_mib']
                                  else None)


def _median_breakdown(steps: list[dict[str, float]] | None) -> dict[str, float] | None:
    if not steps:
        return None
    return {k: statistics.median([s[k] for s in steps]) for k in steps[0]}


def _fmt(value: float | None, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def markdown(report: dict) -> str:
    m, s = report['machine'], report['settings']
    gpu = m['gpu'] or 'none'
    versions = ', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)
    precision = ('mixed (bf16 autocast)' if s['device'] == 'cpu' else 'mixed (fp16 autocast)') \
        if s['amp'] else 'fp32'
    lines = [
        '# InceptionNeXt speed benchmark', '',
        f'- machine: {m["cpu"]}, {m["logical_cpus"]} logical CPUs, {m["torch_threads"]} torch '
        f'threads; GPU: {gpu}; device: {m["device"]}',
        f'- software: Python {m["python"]}, {versions}; {m["platform"]}',
        f'- command: `{report["command"]}`',
        f'- input: {s["batch"]}x3x{s["shape"][0]}x{s["shape"][1]}, {precision}'
        f'{", channels_last everywhere" if s["channels_last"] else ""}'
        f'{", torch.compile(backbone)" if s["compile"] else ""}; {s["warmup"]} warm-up and '
        f'{s["repeats"]} timed steps per model, interleaved round-robin',
        f'- load average (1, 5, 15 min) before: {_loadavg(m["load_average"])}, after: '
        f'{_loadavg(report["load_average_after"])}', '',
        'ms: median wall time per step; IQR: interquartile range in % of the median (noise); '
        'x timm / x ConvNeXt: throughput ratio (> 1: faster than it); mem: peak memory in MiB '
        f'({report["memory_method"] or "not measured"}), for {MEMORY_STEPS} steps; rel. err: '
        'relative L2 error of the backbone features against `ours` (same weights).', '']
    rows = report['results']
    groups = dict.fromkeys((r['family'], r['size']) for r in rows)
    for family, size in groups:
        lines += [f'## {family}, {SIZES[size]}', '',
                  '| model | mode | ms | IQR % | images/s | x timm | x ConvNeXt | mem MiB | '
                  'params M | rel. err |',
                  '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
        for r in rows:
            if (r['family'], r['size']) != (family, size):
                continue
            lines.append(
                f'| {r["variant"]} | {r["mode"]} | {r["median_ms"]:.1f} | '
                f'{_fmt(r["iqr_pct"], ".0f")} | '
                f'{r["images_per_s"]:.2f} | {_fmt(r["speed_vs_timm"], ".2f")} | '
                f'{_fmt(r["speed_vs_convnext"], ".2f")} | {_fmt(r["peak_mem_mib"], ".0f")} | '
                f'{r["params_m"]:.1f} | {_fmt(r["rel_err_vs_ours"], ".1e")} |')
        lines.append('')
    with_breakdown = [r for r in rows if r['breakdown_ms']]
    if with_breakdown:
        lines += ['## Where the time goes', '',
                  'Median ms per part of a step over the instrumented steps, taken after the '
                  'timed ones. `fwd X`: module X timed at its entry points (forward, loss, '
                  'predict); `fwd other`: the rest of the forward (data structures, '
                  'post-processing); `bwd X`: the autograd nodes first reached from the outputs '
                  'of X (backbone, then neck, then heads), timed by node hooks; `bwd other`: '
                  'the rest of the backward (hook costs included); `optimizer`: AdamW step.',
                  '']
        for family, size in groups:
            for mode in MODES:
                sel = [r for r in with_breakdown
                       if (r['family'], r['size'], r['mode']) == (family, size, mode)]
                if not sel:
                    continue
                parts = list(dict.fromkeys(k for r in sel for k in r['breakdown_ms']))
                lines += [f'### {family}, {SIZES[size]}, {mode}', '',
                          '| model | ' + ' | '.join(parts) + ' |',
                          '|---|' + '---:|' * len(parts)]
                for r in sel:
                    lines.append(f'| {r["variant"]} | ' + ' | '.join(
                        _fmt(r['breakdown_ms'].get(p), '.1f') for p in parts) + ' |')
                lines.append('')
    return '\n'.join(lines)


def _loadavg(values: list[float] | None) -> str:
    return ', '.join(f'{v:.2f}' for v in values) if values else 'n/a'


def default_out(families: list[str], sizes: list[str], opts: Options) -> str:
    name = (f'{"-".join(families)}_{"".join(sizes)}_b{opts.batch}_{opts.shape[0]}x'
            f'{opts.shape[1]}{"_amp" if opts.amp else ""}{"_cl" if opts.channels_last else ""}'
            f'{"_compile" if opts.compile else ""}_{opts.device.split(":")[0]}')
    return osp.join('work_dirs', 'benchmark', name)


def run(args: argparse.Namespace) -> dict:
    """Measure everything the arguments ask for; write and return the report."""
    families, sizes, variants, modes, opts = check_args(args)
    out = args.out or default_out(families, sizes, opts)
    script = osp.relpath(sys.argv[0], ROOT) if osp.isabs(sys.argv[0]) else sys.argv[0]
    report = dict(command=shlex.join(['python', script, *sys.argv[1:]]),
                  machine=machine_info(opts),
                  settings=dict(models=families, sizes=sizes, variants=variants, modes=modes,
                                batch=opts.batch, shape=list(opts.shape), device=opts.device,
                                amp=opts.amp, channels_last=opts.channels_last,
                                compile=opts.compile, repeats=args.repeats,
                                warmup=args.warmup, breakdown_repeats=args.breakdown_repeats,
                                memory=not args.no_memory),
                  memory_method=None, results=[])
    for family in families:
        for size in sizes:
            print(f'[benchmark] {family} {SIZES[size]}: building', flush=True)
            cases = build_cases(family, size, variants, opts)
            for mode in modes:
                names = ', '.join(c.variant for c in cases if mode in c.modes)
                print(f'[benchmark] {family} {SIZES[size]} {mode}: {names}', flush=True)
                time_cases(cases, mode, opts, args.warmup, args.repeats)
                if family != 'backbone' and args.breakdown_repeats and not opts.compile:
                    breakdown_cases(cases, mode, opts, args.breakdown_repeats)
            rows = rows_of(cases, opts)
            del cases  # free the models before the memory subprocesses
            gc.collect()
            for row in rows if not args.no_memory else []:
                print(f'[benchmark] memory: {family} {SIZES[size]} {row["variant"]} '
                      f'{row["mode"]}', flush=True)
                mem = memory_in_subprocess(row, opts)
                row['peak_mem_mib'] = mem['peak_mib']
                if mem['peak_mib'] is None:
                    print(f'[benchmark]   {mem["method"]}', flush=True)
                else:
                    report['memory_method'] = mem['method']
            report['results'] += rows
    add_ratios(report['results'])
    report['load_average_after'] = list(os.getloadavg()) if hasattr(os, 'getloadavg') else None
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    print(f'[benchmark] wrote {osp.join(out, "results.json")} and results.md')
    return report


@one_line_errors
def main() -> None:
    args = parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    run(args)


if __name__ == '__main__':
    main()
