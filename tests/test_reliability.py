"""Bad input fails with one clear line, exit status 2 and nothing written; faults lose nothing."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    ROOT,
    SEG_TAIL,
    assert_one_line_error,
    run_here,
    train_args,
    write_config,
)
from PIL import Image

from backbones.cli.config import load_config


@pytest.fixture()
def seg_cfg(tmp_path, tiny_data) -> str:
    return write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                        iters=2)


@pytest.mark.parametrize('override,fragments', [
    ('modle.backbone.arch=atto', ["no key 'modle'"]),
    ('model.backbone.drop_path_rate=abc', ['expected a number']),
    ("model.backbone.arch='huge'", ["unknown arch 'huge'"]),
    ('model.backbone.out_indices=[0,5]', ['out_indices']),
    ('model.backbone.frozen_stages=7', ['frozen_stages']),
    ('model.backbone.archh=1', ["unexpected keyword argument 'archh'"]),
    ('model.backbonee.arch=atto', ["no key 'model.backbonee'"]),
    ('model.backbone.init_cfg.checkpoint=x.pth',  # besides model.backbone.init_cfg=None
     ["sets both 'model.backbone.init_cfg' and 'model.backbone.init_cfg.checkpoint'"]),
    ('train_cfg.max_iters.x=1', ["'train_cfg.max_iters' is 2", 'not a dict']),
    ('model.decode_head.in_channels=[96,192,384,768]',
     ['InceptionNeXt atto gives [40, 80, 160, 320]', 'in_channels=[40,80,160,320]']),
])
def test_bad_config_overrides(seg_cfg, tmp_path, capsys, override, fragments):
    work_dir = tmp_path / 'work'
    code, _, err = run_here('train.py', *train_args(seg_cfg, work_dir, override))
    assert_one_line_error(code, err, *fragments)
    assert not work_dir.exists()  # found before the Runner makes its folders


def test_overrides_create_keys_below_typed_dicts_and_none_settings():
    demo = str(ROOT / 'configs' / 'demo' / 'upernet_inceptionnext-t_demo_ade20k.py')
    assert load_config(demo).model.backbone.init_cfg is None
    assert load_config(demo).optim_wrapper.clip_grad is None
    cfg = load_config(demo, {'optim_wrapper.clip_grad.max_norm': 1.0,
                             'model.backbone.init_cfg.type': 'Pretrained',
                             'model.backbone.init_cfg.checkpoint': 'x.pth'})
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0)
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='x.pth')


def test_backbone_with_a_scope_key_loads():
    cfg = load_config(str(ROOT / 'configs' / 'upernet_inceptionnext_t_ade20k.py'),
                      {'model.backbone._scope_': 'mmseg'})
    assert cfg.model.backbone._scope_ == 'mmseg'


def test_num_workers_0_turns_persistent_workers_off():
    cfg = load_config(str(ROOT / 'configs' / 'upernet_inceptionnext_t_ade20k.py'),
                      {'train_dataloader.num_workers': 0})
    assert cfg.train_dataloader.persistent_workers is False  # torch refuses it without workers
    assert cfg.val_dataloader.persistent_workers is True


def test_missing_config(capsys):
    code, _, err = run_here('train.py', 'configs/nope.py')
    assert_one_line_error(code, err, 'config file not found: configs/nope.py')


def test_config_with_unimportable_custom_imports(tmp_path, capsys):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['no_such_module'])\n")
    code, _, err = run_here('train.py', str(cfg))
    assert_one_line_error(code, err, f'custom_imports of config {cfg}',
                          "No module named 'no_such_module'", 'PYTHONPATH')


@pytest.mark.parametrize('case,fragments', [
    ('missing', ['checkpoint not found']),
    ('truncated', ['cannot read checkpoint', 'truncated']),
    ('text', ['cannot read checkpoint']),
    ('other_arch', ['does not fit the InceptionNeXt backbone', 'shape mismatch']),
    ('no_match', ['no key of']),
    ('url', ['cannot read checkpoint', 'download it by hand']),
])
def test_bad_pretrained_checkpoints(seg_cfg, tmp_path, capsys, atto_ckpt, case, fragments):
    path = str(tmp_path / 'ckpt.pth')
    if case == 'truncated':
        data = Path(atto_ckpt).read_bytes()
        Path(path).write_bytes(data[:len(data) // 3])
    elif case == 'text':
        Path(path).write_text('not a checkpoint')
    elif case == 'other_arch':
        torch.save({'stem.0.weight': torch.zeros(96, 3, 4, 4)}, path)
    elif case == 'no_match':
        torch.save({'conv1.weight': torch.zeros(8, 3, 3, 3)}, path)
    elif case == 'url':
        path = 'http://127.0.0.1:9/inceptionnext_atto.pth'
    work_dir = tmp_path / 'work'
    override = f"model.backbone.init_cfg.checkpoint='{path}'"
    code, _, err = run_here('train.py', *train_args(seg_cfg, work_dir, override, pretrained=True))
    assert_one_line_error(code, err, path, *fragments)
    assert not list(work_dir.glob('*.pth'))


@pytest.mark.parametrize('case,fragments', [
    ('truncated', ['cannot read checkpoint', 'truncated']),
    ('text', ['cannot read checkpoint']),
    ('other_arch', ['does not fit the model of the config', 'shape mismatch']),
    ('no_match', ['no key of', 'matches the model of the config']),
])
@pytest.mark.parametrize('tool', ['test.py', 'train.py --resume'])
def test_bad_model_checkpoints(seg_cfg, tmp_path, capsys, tool, case, fragments):
    """tools/test.py CHECKPOINT and tools/train.py --resume CHECKPOINT never run on a misfit."""
    path = tmp_path / 'iter_2.pth'
    if case == 'text':
        path.write_text('not a checkpoint')
    else:
        state = {'other_arch': {'backbone.stem.0.weight': torch.zeros(96, 3, 4, 4)},
                 'no_match': {'conv1.weight': torch.zeros(8, 3, 3, 3)},
                 'truncated': {'backbone.stem.0.weight': torch.zeros(40, 3, 4, 4)}}[case]
        torch.save({'state_dict': state, 'meta': {}}, path)
        if case == 'truncated':
            path.write_bytes(path.read_bytes()[:300])
    work_dir = tmp_path / 'work'
    args = train_args(seg_cfg, work_dir)
    if tool == 'test.py':
        code, _, err = run_here('test.py', args[0], str(path), *args[1:])
    else:
        code, _, err = run_here('train.py', *args, '--resume', str(path))
    assert_one_line_error(code, err, str(path), *fragments)
    assert not list(work_dir.glob('*.pth'))


def test_good_pretrained_checkpoint_loads(seg_cfg, tmp_path, capsys, atto_ckpt):
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    f"model.backbone.init_cfg.checkpoint='{atto_ckpt}'",
                                                    pretrained=True))
    assert code == 0, err[-2000:]


@pytest.mark.parametrize('case', ['missing', 'empty'])
def test_missing_or_empty_dataset(tmp_path, capsys, case):
    root = tmp_path / 'ADEChallengeData2016'
    if case == 'empty':
        root.mkdir()
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=str(root), iters=2)
    code, _, err = run_here('train.py', *train_args(cfg, tmp_path / 'work'))
    assert_one_line_error(code, err, str(root), 'make demo-data',
                          'is empty' if case == 'empty' else 'not found')


def test_missing_evaluator_annotation_file(tmp_path, tiny_data, capsys):
    base, tail, overrides = FAMILIES['mask_rcnn']
    cfg = write_config(tmp_path, base, tail, root=tiny_data['det'])
    missing = str(tmp_path / 'elsewhere' / 'instances_val2017.json')
    code, _, err = run_here('train.py', cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                            *ATTO.split(), *overrides.split(), f'val_evaluator.ann_file={missing}')
    assert_one_line_error(code, err, missing, '--cfg-options val_evaluator.ann_file=PATH')
    assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('folder,pattern,index,fragments', [
    ('images', '*.jpg', 0, ['failed to load image', '{name}']),
    ('annotations', '*.png', 1, ['{path} is not a readable image', 'replace it']),
])
def test_unreadable_image_or_label_map(tmp_path, tiny_data, capsys, folder, pattern, index,
                                       fragments):
    root = tmp_path / 'ade'
    shutil.copytree(tiny_data['seg'], root)
    bad = sorted((root / folder / 'training').glob(pattern))[index]
    bad.write_bytes(b'\x00garbage')
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=str(root), iters=4)
    code, _, err = run_here('train.py', *train_args(cfg, tmp_path / 'work'))
    assert_one_line_error(code, err, *(f.format(name=bad.name, path=bad) for f in fragments))


def test_annotation_file_that_does_not_parse(tmp_path, tiny_data, capsys):
    root = tmp_path / 'coco'
    shutil.copytree(tiny_data['det'], root)
    ann = root / 'annotations' / 'instances_train2017.json'
    ann.write_text(ann.read_text()[:200])
    base, tail, overrides = FAMILIES['mask_rcnn']
    cfg = write_config(tmp_path, base, tail, root=str(root))
    code, _, err = run_here('train.py', cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                            *ATTO.split(), *overrides.split())
    assert_one_line_error(code, err, 'does not parse', 'instances_train2017.json')


def test_grayscale_rgba_and_odd_sizes_train(tmp_path, tiny_data, capsys):
    root = tmp_path / 'ade'
    shutil.copytree(tiny_data['seg'], root)
    images = sorted((root / 'images' / 'training').glob('*.jpg'))
    Image.open(images[0]).convert('L').resize((61, 45)).save(images[0], format='JPEG')
    rgba = Image.open(images[1]).convert('RGBA')
    rgba.putalpha(128)
    rgba.resize((77, 50)).save(images[1], format='PNG')  # PNG bytes under a .jpg name
    for img, size in ((images[0], (61, 45)), (images[1], (77, 50))):
        ann = root / 'annotations' / 'training' / f'{img.stem}.png'
        Image.open(ann).resize(size, Image.NEAREST).save(ann)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=str(root), iters=2)
    code, _, err = run_here('train.py', *train_args(cfg, tmp_path / 'work'))
    assert code == 0, err[-3000:]


def test_non_finite_loss_stops_training(seg_cfg, tmp_path, capsys):
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    'train_cfg.max_iters=6',
                                                    'optim_wrapper.optimizer.lr=1e30'))
    assert_one_line_error(code, err, 'the loss became', 'lower the lr', 'may already hold')
    advice = re.search(r'\((optim_wrapper\.clip_grad[^)]*)\)', err).group(1)
    key, value = advice.split('=')  # the advice works as a --cfg-options override
    assert load_config(seg_cfg, {key: float(value)}).optim_wrapper.clip_grad.max_norm == 1.0


def test_a_save_that_fails_midway_keeps_the_last_checkpoint(tmp_path):
    """SafeRunHook's atomic saving: a save that dies midway (a full disk) leaves no partial
    file, the last checkpoint intact, and the runner as it was after the run."""
    from backbones.runtime.hooks import atomic_checkpoints

    class Runner:
        hooks: list = []
        fail = False

        def save_checkpoint(self, out_dir: str, filename: str) -> None:
            with open(os.path.join(out_dir, filename), 'wb') as f:
                torch.save({'w': torch.zeros(3) if self.fail else torch.ones(3)}, f)
                if self.fail:
                    raise OSError(28, 'No space left on device')

    runner = Runner()
    with atomic_checkpoints(runner):
        runner.save_checkpoint(str(tmp_path), 'iter_1.pth')
        runner.fail = True
        with pytest.raises(OSError, match='No space left'):
            runner.save_checkpoint(str(tmp_path), 'iter_1.pth')
    assert 'save_checkpoint' not in vars(runner)  # the wrapper is gone after the run
    assert [p.name for p in tmp_path.iterdir()] == ['iter_1.pth']  # no partial file left
    assert torch.equal(torch.load(tmp_path / 'iter_1.pth', weights_only=True)['w'], torch.ones(3))


@pytest.mark.slow
def test_sigkill_leaves_loadable_checkpoint_and_resume_continues(tmp_path, tiny_data):
    """Kill -9 twice at random moments (one right after a resume), then resume once more."""
    from backbones.runtime.adapt import latest_complete_checkpoint
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work_dir = tmp_path / 'work'
    args = [sys.executable, 'tools/train.py', *train_args(
        cfg, work_dir, 'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=1')]
    rng = np.random.default_rng(0)
    saved = 0
    for attempt in range(2):
        proc = subprocess.Popen(args + ['--resume'] * attempt, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while _latest_iter(work_dir) <= saved and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.5)))  # somewhere in the next iterations and saves
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        finals = list(work_dir.glob('*.pth'))
        assert finals, 'no checkpoint survived'
        for path in finals:  # every file under a final name is complete
            torch.load(path, map_location='cpu', weights_only=False)
        last = latest_complete_checkpoint(str(work_dir))
        saved = torch.load(last, map_location='cpu', weights_only=False)['meta']['iter']
        assert saved >= 1
    result = subprocess.run(args + [f'train_cfg.max_iters={saved + 1}', '--resume'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {saved}' in result.stdout + result.stderr
    assert (work_dir / f'iter_{saved + 1}.pth').is_file()


def _latest_iter(work_dir: Path) -> int:
    return max((int(p.stem.split('_')[1]) for p in work_dir.glob('iter_*.pth')), default=0)
