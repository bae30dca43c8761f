"""Shared pieces of the end-to-end tests: tiny configs inheriting the real ones, tool runs."""
from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import runpy
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
ATTO = "model.backbone.arch='atto' model.backbone.init_cfg=None"

SEG_TAIL = '''
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size), test_cfg=dict(mode='whole'))
_pipe = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
         dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{root}', pipeline=_pipe))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root='{root}', pipeline=_pipe))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
'''

DET_TAIL = '''
_pipe = [dict(type='LoadImageFromFile'),
         dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
         dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='PackDetInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{root}/', pipeline=_pipe))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root='{root}/', pipeline=_pipe))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}/annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1))
'''

FAMILIES = {
    'upernet': ('configs/upernet_inceptionnext_t_ade20k.py', SEG_TAIL,
                "model.decode_head.in_channels=[40,80,160,320] model.decode_head.channels=32 "
                "model.auxiliary_head.in_channels=160 model.auxiliary_head.channels=16"),
    'sem_fpn': ('configs/sem_fpn/fpn_inceptionnext-t_8xb4-40k_ade20k-512x512.py', SEG_TAIL,
                "model.neck.in_channels=[40,80,160,320] model.neck.out_channels=32 "
                "model.decode_head.in_channels=[32,32,32,32] model.decode_head.channels=16"),
    'mask_rcnn': ('configs/mask_rcnn/mask-rcnn_inceptionnext-t_fpn_1x_coco.py', DET_TAIL,
                  "model.neck.in_channels=[40,80,160,320] model.test_cfg.rcnn.score_thr=0.0"),
    'cascade': ('configs/cascade_mask_rcnn/'
                'cascade-mask-rcnn_inceptionnext-t_fpn_ms-crop-3x_coco.py', DET_TAIL,
                "model.neck.in_channels=[40,80,160,320] model.test_cfg.rcnn.score_thr=0.0"),
}


def write_config(tmp_path: Path, base: str, tail: str, **fmt) -> str:
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = ['{ROOT / base}']\n" + tail.format(**fmt))
    return str(path)


def write_readme_config(folder: Path, library: str) -> Path:
    """The README's own-project snippet for ``library`` ('mmdet', 'mmseg'), as written there,
    saved as ``folder/<library>_project.py`` with the ``_base_`` its first line names."""
    text = (ROOT / 'README.md').read_text()
    blocks = dict((lib, block) for block, lib in re.findall(
        r'```python\n(# (mmdet|mmseg): _base_ = .*?)```', text, re.S))
    snippet = blocks[library]
    path = folder / f'{library}_project.py'
    path.write_text(snippet.splitlines()[0].split(': ', 1)[1] + '\n' + snippet)
    return path


def run_tool(*args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS...`` in a new process at the repository root (``'tools/x.py', ...`` or
    ``'-m', 'module', ...``)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def last_metrics(work_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training log lines, validation log lines) of the newest run in ``work_dir``."""
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert logs, f'no scalars.json under {work_dir}'
    lines = [json.loads(x) for x in logs[-1].read_text().splitlines()]
    return lines, [x for x in lines if 'loss' not in x]


UPERNET_OVERRIDES = FAMILIES['upernet'][2].split()


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def forget_mmengine_instances() -> None:
    """Forget the loggers, message hubs and visualizers of earlier in-process runs.

    mmengine hands out an existing instance of the same name (mmseg's visualizer is always named
    'visualizer', a logger is named by its start second), and with it the earlier run's folders.
    """
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer

    def subclasses(cls: type) -> list[type]:
        return [cls] + [c for sub in cls.__subclasses__() for c in subclasses(sub)]

    for logger in MMLogger._instance_dict.values():
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()
    for base in (MMLogger, MessageHub, Visualizer):
        for cls in subclasses(base):
            cls._instance_dict.clear()


def run_script(path: Path, run_name: str) -> dict:
    """``runpy.run_path`` with the script's folder first on ``sys.path``, as ``python PATH``
    runs it (the analysis tools import their sibling modules)."""
    sys.path.insert(0, str(path.parent))
    try:
        return runpy.run_path(str(path), run_name=run_name)
    finally:
        sys.path.remove(str(path.parent))


def run_here(tool: str, *args) -> tuple[int, str, str]:
    """Run ``tools/<tool>`` (e.g. ``'train.py'``, ``'deployment/export.py'``) as ``__main__`` in
    this process (``run_script``), at the repository root (imports are shared, so it is quick);
    returns the exit status, stdout and stderr. mmengine's named instances of earlier runs are
    forgotten first, as a new process would not have them; the random generators and mmengine's
    default scope, which a run sets, are restored after it."""
    from mmengine.registry import DefaultScope
    forget_mmengine_instances()
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    scopes = dict(DefaultScope._instance_dict)
    sys.argv = [f'tools/{tool}', *map(str, args)]
    os.chdir(ROOT)
    try:  # warnings printed as a user's terminal shows them, not collected by pytest
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter('always')  # every time: a new process shows each once
            for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                           ResourceWarning):  # hidden by Python's default filters
                warnings.filterwarnings('ignore', category=hidden)
            warnings.showwarning = _print_warning
            run_script(ROOT / 'tools' / tool, run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(scopes)
    return code, out.getvalue(), err.getvalue()


def run_tool_here(tool: str, *args) -> subprocess.CompletedProcess:
    """``run_tool('tools/x.py', ...)`` run by ``run_here``: the same result without a new
    process's imports (seconds a call). Not for what needs a process of its own: signals,
    thread settings, warnings as a new process shows them, distributed runs."""
    code, out, err = run_here(str(Path(tool).relative_to('tools')), *args)
    return subprocess.CompletedProcess([tool, *map(str, args)], code, out, err)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit status 2, no traceback, and exactly one ``error:`` line holding ``fragments``."""
    lines = [x for x in err.splitlines() if x.startswith('error:')]
    assert code == 2, err[-2000:]
    assert 'Traceback' not in err and len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_args(cfg: str, work_dir: Path, *extra: str, pretrained: bool = False) -> list[str]:
    atto = ATTO.split() if not pretrained else ["model.backbone.arch='atto'"]
    return [cfg, '--work-dir', str(work_dir), '--cfg-options', *atto, *UPERNET_OVERRIDES, *extra]


class _RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def booby_trapped_checkpoint(path: Path, marker: Path) -> None:
    """An mmengine-shaped checkpoint whose unpickling creates ``marker``."""
    torch.save({'meta': {}, 'state_dict': {}, 'payload': _RunsCode(marker)}, path)


def create_timm_inception_next(arch: str):
    """timm's ``inception_next_<arch>`` with random weights (atto built from timm's own classes
    where timm < 1.0 does not register it)."""
    import functools

    import timm
    if arch == 'atto' and not timm.is_model('inception_next_atto'):
        from timm.models.inception_next import InceptionDWConv2d, MetaNeXt
        return MetaNeXt(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320),
                        token_mixers=functools.partial(InceptionDWConv2d, band_kernel_size=9,
                                                       branch_ratio=0.25))
    return timm.create_model(f'inception_next_{arch}', pretrained=False)


def timm_stage_outputs(model, x):
    """The four stage outputs of a timm InceptionNeXt (any timm version)."""
    outs = []
    x = model.stem(x)
    for stage in model.stages:
        x = stage(x)
        outs.append(x)
    return outs


@torch.no_grad()
def randomize_bn_and_layer_scale_(model: nn.Module, seed: int = 0,
                                  gamma_range: tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Give BatchNorm statistics/affines and layer scales non-trivial random values (in place).

    Their initial values (identity BN, gamma 1e-6) hide folding and parity bugs; checks of
    ``fuse()`` and of weight compatibility run on a model randomized this way.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    low, high = gamma_range
    for name, p in model.named_parameters():
        if name.endswith('gamma'):
            p.copy_(low + torch.rand(p.shape, generator=g) * (high - low))
    return model
