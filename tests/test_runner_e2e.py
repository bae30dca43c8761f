"""Short train + val runs of every model family through tools/train.py and the real Runner.

Each run inherits a real config from configs/ and shrinks only what a test must: the atto backbone,
a narrow head, 64-pixel images from the demo generator, a few iterations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones.demo_data import make_ade20k, make_coco

pytestmark = pytest.mark.slow
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


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp('data')
    make_ade20k(str(root / 'ade'), n_train=4, n_val=2, size=64)
    make_coco(str(root / 'coco'), n_train=4, n_val=2, size=64)
    return dict(seg=str(root / 'ade' / 'ADEChallengeData2016'), det=str(root / 'coco'))


def write_config(tmp_path: Path, base: str, tail: str, **fmt) -> str:
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = ['{ROOT / base}']\n" + tail.format(**fmt))
    return str(path)


def run_tool(*args: str, env: dict | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def last_metrics(work_dir: Path) -> dict:
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert logs, f'no scalars.json under {work_dir}'
    lines = [json.loads(x) for x in logs[-1].read_text().splitlines()]
    return lines, [x for x in lines if 'loss' not in x]


@pytest.mark.parametrize('family', list(FAMILIES))
def test_train_and_val(tmp_path, data, family):
    base, tail, overrides = FAMILIES[family]
    task = 'seg' if tail is SEG_TAIL else 'det'
    cfg = write_config(tmp_path, base, tail, root=data[task], iters=3)
    work_dir = tmp_path / 'work'
    result = run_tool('tools/train.py', cfg, '--work-dir', str(work_dir),
                      '--cfg-options', *ATTO.split(), *overrides.split())
    assert result.returncode == 0, result.stderr[-3000:]
    train_logs, val_logs = last_metrics(work_dir)
    losses = [x['loss'] for x in train_logs if 'loss' in x]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    key = 'mIoU' if task == 'seg' else 'coco/bbox_mAP'
    assert val_logs and key in val_logs[-1]
    assert list(work_dir.glob('*.pth')), 'no checkpoint saved'


def test_resume_continues_from_last_checkpoint(tmp_path, data):
    """An mmengine checkpoint saved by training loads again on torch >= 2.6 and resumes."""
    base, tail, overrides = FAMILIES['upernet']
    cfg = write_config(tmp_path, base, tail, root=data['seg'], iters=2)
    work_dir = tmp_path / 'work'
    args = ['tools/train.py', cfg, '--work-dir', str(work_dir), '--cfg-options', *ATTO.split(),
            *overrides.split()]
    first = run_tool(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (work_dir / 'iter_2.pth').is_file()
    second = run_tool(*args, 'train_cfg.max_iters=4', '--resume')
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in second.stdout + second.stderr
    state = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 4
    steps = {int(s['step']) for s in state['optimizer']['state'].values()}
    assert steps == {4}  # AdamW continued from its saved state: 2 + 2 steps
