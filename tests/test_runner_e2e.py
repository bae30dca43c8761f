"""Short train + val runs of every model family through tools/train.py and the real Runner, in
this process (``run_tool_here``; tests/test_quiet.py runs a tool in a process of its own).

Each run inherits a real config from configs/ and shrinks only what a test must: the atto backbone,
a narrow head, 64-pixel images from the demo generator, a few iterations.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import ATTO, FAMILIES, SEG_TAIL, last_metrics, run_tool_here, write_config

from backbones.safe_load import SAFE_GLOBALS, load_torch_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('family', list(FAMILIES))
def test_train_val_test_and_resume(tmp_path, tiny_data, family):
    """Training gives finite losses, a metric and checkpoints that hold only allowlisted globals;
    tools/test.py and --resume read them through the safe loader."""
    base, tail, overrides = FAMILIES[family]
    task = 'seg' if tail is SEG_TAIL else 'det'
    cfg = write_config(tmp_path, base, tail, root=tiny_data[task], iters=3)
    work_dir = tmp_path / 'work'
    args = ['--cfg-options', *ATTO.split(), *overrides.split()]
    result = run_tool_here('tools/train.py', cfg, '--work-dir', str(work_dir), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    train_logs, val_logs = last_metrics(work_dir)
    losses = [x['loss'] for x in train_logs if 'loss' in x]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    key = 'mIoU' if task == 'seg' else 'coco/bbox_mAP'
    assert val_logs and key in val_logs[-1]
    ckpt = sorted(work_dir.glob('*.pth'))[-1]
    get_unsafe = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if get_unsafe is not None:  # torch >= 2.5 lists them; older torch: the load below checks
        assert set(get_unsafe(str(ckpt))) <= set(SAFE_GLOBALS)
    assert 'message_hub' in load_torch_file(str(ckpt))
    tested = run_tool_here('tools/test.py', cfg, str(ckpt), '--work-dir', str(tmp_path / 't'),
                           *args)
    assert tested.returncode == 0, tested.stderr[-3000:]
    more = ['train_cfg.max_iters=4'] if task == 'seg' else ['train_cfg.max_epochs=2']
    resumed = run_tool_here('tools/train.py', cfg, '--work-dir', str(work_dir), '--resume', *args,
                            *more)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch' in resumed.stdout + resumed.stderr
    assert os.path.isfile(work_dir / ('iter_4.pth' if task == 'seg' else 'epoch_2.pth'))


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_data):
    """An mmengine checkpoint saved by training loads again on torch >= 2.6 and resumes."""
    base, tail, overrides = FAMILIES['upernet']
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=2)
    with open(cfg, 'a') as f:  # a warm-up over all 4 iterations: lost state would show
        f.write("param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, "
                "begin=0, end=4)]\n")
    work_dir = tmp_path / 'work'
    args = ['tools/train.py', cfg, '--work-dir', str(work_dir), '--cfg-options', *ATTO.split(),
            *overrides.split()]
    first = run_tool_here(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (work_dir / 'iter_2.pth').is_file()
    second = run_tool_here(*args, 'train_cfg.max_iters=4', '--resume')
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in second.stdout + second.stderr
    state = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 4
    steps = {int(s['step']) for s in state['optimizer']['state'].values()}
    assert steps == {4}  # AdamW continued from its saved state: 2 + 2 steps
    straight = run_tool_here(*args, 'train_cfg.max_iters=4', '--work-dir',
                             str(tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr[-3000:]
    ref = torch.load(tmp_path / 'straight' / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert state['param_schedulers'] == ref['param_schedulers']  # the warm-up was not restarted
    lrs = [g['lr'] for g in state['optimizer']['param_groups']]
    assert lrs == [g['lr'] for g in ref['optimizer']['param_groups']]
    assert lrs != [g['lr'] for g in torch.load(work_dir / 'iter_2.pth', map_location='cpu',
                                               weights_only=False)['optimizer']['param_groups']]


def test_test_tool_tta_and_deploy(tmp_path, tiny_data):
    """tools/test.py: multi-scale + flip TTA and the fused backbone give a metric."""
    base, tail, overrides = FAMILIES['upernet']
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=1)
    work_dir = tmp_path / 'work'
    args = ['--cfg-options', *ATTO.split(), *overrides.split()]
    assert run_tool_here('tools/train.py', cfg, '--work-dir', str(work_dir), *args).returncode == 0
    for flags in (['--tta'], ['--deploy']):
        result = run_tool_here('tools/test.py', cfg, str(work_dir / 'iter_1.pth'), '--work-dir',
                               str(tmp_path / flags[0][2:]), *flags, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'mIoU' in result.stdout + result.stderr
    assert 'folded the backbone' in result.stdout + result.stderr


def test_auto_scale_lr(tmp_path, tiny_data):
    """--auto-scale-lr rescales the config's lr from its base batch (16) to the actual one (2)."""
    base, tail, overrides = FAMILIES['upernet']
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=1)
    result = run_tool_here('tools/train.py', cfg, '--work-dir', str(tmp_path / 'work'),
                           '--auto-scale-lr', '--cfg-options', *ATTO.split(), *overrides.split())
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'batch size of 16 and the current batch size is 2' in result.stdout + result.stderr
    state = torch.load(tmp_path / 'work' / 'iter_1.pth', map_location='cpu', weights_only=False)
    groups = state['optimizer']['param_groups']
    assert len(groups) > 2
    for group in groups:  # each decayed lr, scaled by 2 / 16
        assert group['lr'] == pytest.approx(1e-4 * group['lr_scale'] * 2 / 16)


@pytest.mark.parametrize('family', ['upernet', 'mask_rcnn'])
def test_amp_train_and_test_on_the_cpu(tmp_path, tiny_data, family):
    """--amp without CUDA: bf16 autocast, with mmcv's float32-only nms/RoIAlign in float32."""
    if torch.cuda.is_available():
        pytest.skip('checks the CPU bf16 path')
    base, tail, overrides = FAMILIES[family]
    task = 'seg' if tail is SEG_TAIL else 'det'
    cfg = write_config(tmp_path, base, tail, root=tiny_data[task], iters=2)
    work_dir = tmp_path / 'work'
    args = ['--cfg-options', *ATTO.split(), *overrides.split()]
    result = run_tool_here('tools/train.py', cfg, '--work-dir', str(work_dir), '--amp', *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'bfloat16 autocast on the CPU' in result.stdout + result.stderr
    train_logs, val_logs = last_metrics(work_dir)
    assert all(torch.isfinite(torch.tensor(x['loss'])) for x in train_logs if 'loss' in x)
    checkpoint = sorted(work_dir.glob('*.pth'))[-1]
    result = run_tool_here('tools/test.py', cfg, str(checkpoint), '--work-dir',
                           str(tmp_path / 'test'), '--amp', *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(next((tmp_path / 'test').glob('*/*.json')).read_text())
    assert ('mIoU' if task == 'seg' else 'coco/bbox_mAP') in metrics
