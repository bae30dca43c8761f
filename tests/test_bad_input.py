"""Bad input fails with one clear line, exit status 2 and nothing damaged (one table, growing
with every case found); faults (a failed save, a killed run, a diverging loss) lose nothing."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    ROOT,
    SEG_TAIL,
    assert_one_line_error,
    forget_mmengine_instances,
    last_metrics,
    run_here,
    run_tool,
    train_args,
    write_config,
)
from mmengine.config import DictAction
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from PIL import Image

from backbones.config import build_model, load_config
from backbones.runtime.hooks.atomic_checkpoints import latest_complete_checkpoint

# --- the table --------------------------------------------------------------------------------
# Each case: (id, tool, make, fragments). ``make(ctx)`` writes what the case needs under ctx.tmp
# and returns the tool's arguments; ``fragments`` (formatted with ctx's attributes) must all be in
# the one ``error:`` line. Every case also checks exit status 2, no traceback, no warnings before
# the error line, and that no file under ctx.tmp (nor the shared test data) changed.

def _config_dir(ctx, name: str) -> Path:
    (ctx.tmp / name).mkdir(exist_ok=True)
    return ctx.tmp / name


def _seg_cfg(ctx, root: str | None = None, iters: int = 2) -> str:
    return write_config(_config_dir(ctx, 'cfg_seg'), FAMILIES['upernet'][0], SEG_TAIL,
                        root=root or ctx.data['seg'], iters=iters)


def _det_cfg(ctx, root: str | None = None) -> str:
    base, tail, _ = FAMILIES['mask_rcnn']
    return write_config(_config_dir(ctx, 'cfg_det'), base, tail, root=root or ctx.data['det'])


def _train(ctx, *overrides: str, cfg: str | None = None, pretrained: bool = False) -> list:
    return train_args(cfg or _seg_cfg(ctx), ctx.work, *overrides, pretrained=pretrained)


def _det_train(ctx, *overrides: str, root: str | None = None) -> list:
    return [_det_cfg(ctx, root), '--work-dir', str(ctx.work), '--cfg-options', *ATTO.split(),
            *FAMILIES['mask_rcnn'][2].split(), *overrides]


def _copy_data(ctx, kind: str) -> Path:
    root = ctx.tmp / kind
    shutil.copytree(ctx.data[kind], root)
    return root


def _pretrained(ctx, make_file) -> list:
    path = make_file(ctx)
    ctx.path = path
    return _train(ctx, f"model.backbone.init_cfg.checkpoint='{path}'", pretrained=True)


def _truncated(ctx, source: str) -> str:
    data = Path(source).read_bytes()
    (ctx.tmp / 'truncated.pth').write_bytes(data[:len(data) // 3])
    return str(ctx.tmp / 'truncated.pth')


def _text_file(ctx) -> str:
    (ctx.tmp / 'text.pth').write_text('not a checkpoint')
    return str(ctx.tmp / 'text.pth')


def _saved(ctx, obj, name: str = 'ckpt.pth') -> str:
    if isinstance(obj, bytes):
        (ctx.tmp / name).write_bytes(obj)
    else:
        torch.save(obj, ctx.tmp / name)
    return str(ctx.tmp / name)


def _model_ckpt(ctx, state: dict) -> str:
    ctx.path = _saved(ctx, {'state_dict': state, 'meta': {}}, 'iter_2.pth')
    return ctx.path


def _bad_model_ckpt(ctx, case: str) -> str:
    if case == 'text':
        ctx.path = _text_file(ctx)
        return ctx.path
    state = {'other_arch': {'backbone.stem.0.weight': torch.zeros(96, 3, 4, 4)},
             'no_match': {'conv1.weight': torch.zeros(8, 3, 3, 3)},
             'truncated': {'backbone.stem.0.weight': torch.zeros(40, 3, 4, 4)}}[case]
    path = _model_ckpt(ctx, state)
    if case == 'truncated':
        Path(path).write_bytes(Path(path).read_bytes()[:300])
    return path


def _unreadable(ctx, folder: str, pattern: str, index: int) -> list:
    root = _copy_data(ctx, 'seg')
    ctx.bad = sorted((root / folder / 'training').glob(pattern))[index]
    ctx.bad.write_bytes(b'\x00garbage')
    return _train(ctx, cfg=_seg_cfg(ctx, str(root), iters=4))


def _coco_not_parsing(ctx) -> list:
    root = _copy_data(ctx, 'det')
    ann = root / 'annotations' / 'instances_train2017.json'
    ann.write_text(ann.read_text()[:200])
    return _det_train(ctx, root=str(root))


def _seg_files(ctx, split: str = 'training') -> tuple[Path, list[Path], list[Path]]:
    """A copy of the tiny ADE20K set: its root, the images and the label maps of ``split``."""
    root = _copy_data(ctx, 'seg')
    return (root, sorted((root / 'images' / split).glob('*.jpg')),
            sorted((root / 'annotations' / split).glob('*.png')))


def _bad_label(ctx, change, *overrides: str) -> list:
    """Train on a copy whose first training label map is ``change(pixels)``."""
    root, _, labels = _seg_files(ctx)
    ctx.bad = labels[0]
    Image.fromarray(change(np.asarray(Image.open(ctx.bad)))).save(ctx.bad)
    return _train(ctx, *overrides, cfg=_seg_cfg(ctx, str(root)))


def _value_300(pixels: np.ndarray) -> np.ndarray:
    wide = pixels.astype(np.uint16)  # a 16-bit PNG ('I;16'): mmseg's uint8 cast wraps 300 to 44
    wide[:8] = 300
    return wide


def _value(value: int):
    def change(pixels: np.ndarray) -> np.ndarray:
        out = pixels.copy()
        out[:4] = value
        return out
    return change


def _all_ignored(ctx) -> list:
    root, _, labels = _seg_files(ctx)
    for path in labels:  # 0 is "other", ignored with reduce_zero_label=True
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    return _train(ctx, cfg=_seg_cfg(ctx, str(root)))


def _label_missing(ctx, tool: str = 'train.py') -> list:
    root, _, labels = _seg_files(ctx, 'training' if tool == 'train.py' else 'validation')
    ctx.bad = labels[0]
    ctx.bad.unlink()
    if tool == 'train.py':
        return _train(ctx, cfg=_seg_cfg(ctx, str(root)))
    # the data is checked before the checkpoint is read: any file will do
    return [_seg_cfg(ctx, str(root)), ctx.atto_ckpt, '--work-dir', str(ctx.work),
            '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()]


def _tiny_image(ctx) -> list:
    root, images, _ = _seg_files(ctx)
    ctx.bad = images[0]
    Image.open(ctx.bad).resize((1, 1)).save(ctx.bad, format='JPEG')
    return _train(ctx, cfg=_seg_cfg(ctx, str(root)))


def _coco_changed(ctx, change) -> list:
    """Train on a copy of the tiny COCO set after ``change(root, annotations)``."""
    root = _copy_data(ctx, 'det')
    ctx.ann = root / 'annotations' / 'instances_train2017.json'
    coco = json.loads(ctx.ann.read_text())
    change(ctx, root, coco)
    ctx.ann.write_text(json.dumps(coco))
    return _det_train(ctx, root=str(root))


def _coco_image_missing(ctx, root: Path, coco: dict) -> None:
    ctx.bad = root / 'train2017' / coco['images'][1]['file_name']
    ctx.bad.unlink()


def _coco_crowd_only(ctx, root: Path, coco: dict) -> None:
    for ann in coco['annotations']:
        ann['iscrowd'] = 1


def _coco_image_resized(ctx, root: Path, coco: dict) -> None:
    ctx.bad = root / 'train2017' / coco['images'][0]['file_name']
    Image.open(ctx.bad).resize((48, 64)).save(ctx.bad, format='JPEG')


def _missing_dataset(ctx, empty: bool) -> list:
    ctx.root = ctx.tmp / 'ADEChallengeData2016'
    if empty:
        ctx.root.mkdir()
    return _train(ctx, cfg=_seg_cfg(ctx, str(ctx.root)))


def _unimportable(ctx) -> list:
    ctx.cfg = ctx.tmp / 'bad_imports.py'
    ctx.cfg.write_text("custom_imports = dict(imports=['no_such_module'], "
                       'allow_failed_imports=False)\n')
    return [str(ctx.cfg)]


def _empty_config(ctx) -> list:
    ctx.cfg = ctx.tmp / 'empty.py'
    ctx.cfg.write_text('')
    return [str(ctx.cfg)]


def _work_dir_is_a_file(ctx) -> list:
    ctx.work.write_text('my notes')
    return _train(ctx)


def _seg_model_file(ctx, **content) -> str:
    """A complete UperNet-atto model file (random weights), as training would hold it."""
    cfg = load_config(_seg_cfg(ctx), {k: DictAction._parse_iterable(v) for k, v in (
        o.split('=', 1) for o in [*ATTO.split(), *FAMILIES['upernet'][2].split()])})
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    ctx.path = _saved(ctx, {'state_dict': state, 'meta': {}, **content}, 'upernet.pth')
    return ctx.path


def _symlinked_release(ctx) -> list:
    trained = Path(_seg_model_file(ctx))
    ctx.link = ctx.tmp / 'latest.pth'
    ctx.link.symlink_to(trained)
    return [str(ctx.link), str(trained)]


def _trained_then_regrouped(ctx) -> list:
    """A real 2-iteration run, resumed with another lr-decay grouping."""
    first = ctx.tmp / 'first'
    done = run_tool('tools/train.py', *train_args(_seg_cfg(ctx), first))
    assert done.returncode == 0, done.stderr[-2000:]
    ctx.path = str(first / 'iter_2.pth')
    return [*_train(ctx, 'train_cfg.max_iters=3',
                    "optim_wrapper.paramwise_cfg.decay_type='layer_wise'"), '--resume', ctx.path]


OVERRIDES = [  # (--cfg-options override, fragments of the error)
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
    # fewer classes fail in the loss mid-run, more are never counted by the metric
    ('model.decode_head.num_classes=3',
     ['model.decode_head.num_classes is 3 but train_dataloader.dataset', 'has 150 classes',
      '--cfg-options model.decode_head.num_classes=150']),
]

TYPOS = [  # (override, config key, misspelt argument, suggestion) that a **kwargs path accepted
    ('default_hooks.checkpoint.max_keep_ckpt=1', 'default_hooks.checkpoint', 'max_keep_ckpt',
     'max_keep_ckpts'),  # trained until the first save, then died without a checkpoint
    ("train_dataloader.dataset.img_sufix='.jpg'", 'train_dataloader.dataset', 'img_sufix',
     'img_suffix'),
    ("val_evaluator.iou_metric=['mIoU']", 'val_evaluator', 'iou_metric',
     'iou_metrics'),  # mmseg's IoUMetric ignores unknown arguments
    ('param_scheduler.0.factr=1.0', 'param_scheduler.0', 'factr', 'factor'),
]

CASES = [
    *[(f'override {o}', 'train.py', lambda ctx, o=o: _train(ctx, o), f) for o, f in OVERRIDES],
    ('detector num_classes', 'train.py',
     lambda ctx: _det_train(ctx, 'model.roi_head.bbox_head.num_classes=81',
                            'model.roi_head.mask_head.num_classes=81'),
     ['model.roi_head.bbox_head.num_classes is 81 but train_dataloader.dataset (CocoDataset)',
      '--cfg-options model.roi_head.bbox_head.num_classes=80 '
      'model.roi_head.mask_head.num_classes=80']),
    ('missing config', 'train.py', lambda ctx: ['configs/nope.py'],
     ['config file not found: configs/nope.py']),
    ('unimportable custom_imports', 'train.py', _unimportable,
     ['custom_imports of config {cfg}', "No module named 'no_such_module'", 'PYTHONPATH']),
    # pretrained weights (init_cfg)
    ('pretrained missing', 'train.py',
     lambda ctx: _pretrained(ctx, lambda c: str(c.tmp / 'nope.pth')),
     ['{path}', 'checkpoint not found']),
    ('pretrained truncated', 'train.py',
     lambda ctx: _pretrained(ctx, lambda c: _truncated(c, c.atto_ckpt)),
     ['{path}', 'cannot read checkpoint', 'truncated']),
    ('pretrained text', 'train.py', lambda ctx: _pretrained(ctx, _text_file),
     ['{path}', 'cannot read checkpoint']),
    ('pretrained other arch', 'train.py',
     lambda ctx: _pretrained(ctx, lambda c: _saved(c, {'stem.0.weight': torch.zeros(96, 3, 4, 4)})),
     ['{path}', 'does not fit the InceptionNeXt backbone', 'shape mismatch']),
    ('pretrained no match', 'train.py',
     lambda ctx: _pretrained(ctx, lambda c: _saved(c, {'conv1.weight': torch.zeros(8, 3, 3, 3)})),
     ['{path}', 'no key of']),
    ('pretrained url', 'train.py',
     lambda ctx: _pretrained(ctx, lambda c: 'http://127.0.0.1:9/inceptionnext_atto.pth'),
     ['{path}', 'cannot read checkpoint', 'download it by hand']),
    # whole-model checkpoints: test.py CHECKPOINT and train.py --resume CHECKPOINT
    *[(f'{tool} {case} checkpoint', tool,
       lambda ctx, tool=tool, case=case: (
           [_seg_cfg(ctx), _bad_model_ckpt(ctx, case), '--work-dir', str(ctx.work),
            '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()]
           if tool == 'test.py' else [*_train(ctx), '--resume', _bad_model_ckpt(ctx, case)]),
       ['{path}', *fragments])
      for tool in ('test.py', 'train.py')
      for case, fragments in [
          ('truncated', ['cannot read checkpoint', 'truncated']),
          ('text', ['cannot read checkpoint']),
          ('other_arch', ['does not fit the model of the config', 'shape mismatch']),
          ('no_match', ['no key of', 'matches the model of the config'])]],
    # data
    ('dataset missing', 'train.py', lambda ctx: _missing_dataset(ctx, empty=False),
     ['{root}', 'make demo-data', 'not found']),
    ('dataset empty', 'train.py', lambda ctx: _missing_dataset(ctx, empty=True),
     ['{root}', 'make demo-data', 'is empty']),
    ('evaluator annotation file missing', 'train.py',
     lambda ctx: _det_train(ctx, f'val_evaluator.ann_file={ctx.tmp}/elsewhere/instances.json'),
     ['{tmp}/elsewhere/instances.json', '--cfg-options val_evaluator.ann_file=PATH']),
    ('image unreadable', 'train.py', lambda ctx: _unreadable(ctx, 'images', '*.jpg', 0),
     ['failed to load image', '{bad.name}']),
    ('label map unreadable', 'train.py', lambda ctx: _unreadable(ctx, 'annotations', '*.png', 1),
     ['{bad} is not a readable image', 'replace it']),
    ('COCO annotation file does not parse', 'train.py', _coco_not_parsing,
     ['does not parse', 'instances_train2017.json']),
    ('image without its label map', 'train.py', _label_missing,
     ['1 of the 4 images of train_dataloader have no label map', 'needs {bad}']),
    ('test.py image without its label map', 'test.py', lambda ctx: _label_missing(ctx, 'test.py'),
     ['of test_dataloader have no label map', 'needs {bad}']),
    ('image 1x1', 'train.py', _tiny_image, ['{bad} is 1x1 pixels', '8x8 minimum']),
    ('label map size differs from its image', 'train.py',
     lambda ctx: _bad_label(ctx, lambda a: a[:, :48]),
     ['label map {bad} is 48x64 pixels', 'is 64x64', "needs its image's size"]),
    ('label map 16-bit with value 300', 'train.py', lambda ctx: _bad_label(ctx, _value_300),
     ['label map {bad} holds value 300', 'silently turn it into 44']),
    ('label map 16-bit with value 300, DataLoader worker', 'train.py',
     lambda ctx: _bad_label(ctx, _value_300, 'train_dataloader.num_workers=1'),
     ['label map {bad} holds value 300']),
    ('label value outside the classes', 'train.py', lambda ctx: _bad_label(ctx, _value(200)),
     ['label map {bad} holds value 200', 'ADE20KDataset has 150 classes', '1..150']),
    ('label map in colour', 'train.py',
     lambda ctx: _bad_label(ctx, lambda a: np.stack([a] * 3, -1)),
     ['label map {bad} is a RGB-mode image', 'one class id per pixel']),
    ('label maps all ignored', 'train.py', _all_ignored,
     ['the first 4 label maps read', 'no labelled pixel', 'reduce_zero_label']),
    ('COCO image missing', 'train.py', lambda ctx: _coco_changed(ctx, _coco_image_missing),
     ['1 of the 4 images listed in {ann} are missing', '{bad}']),
    ('COCO annotations empty', 'train.py',
     lambda ctx: _coco_changed(ctx, lambda c, r, coco: coco.update(annotations=[])),
     ['{ann} (train_dataloader) has no usable annotation', '0 annotations']),
    ('COCO annotations all crowd', 'train.py', lambda ctx: _coco_changed(ctx, _coco_crowd_only),
     ['{ann} (train_dataloader) has no usable annotation', 'non-crowd']),
    ('COCO image size differs from its entry', 'train.py',
     lambda ctx: _coco_changed(ctx, _coco_image_resized),
     ['{bad} is 48x64 pixels but its COCO annotation entry says 64x64']),
    # constructors that take **kwargs or check values only when a run reaches them
    *[(f'argument typo: {override}', 'train.py', lambda ctx, o=override: _train(ctx, o),
       [key, f"'{typo}'", f"did you mean '{meant}'"])
      for override, key, typo, meant in TYPOS],
    ('negative lr', 'train.py', lambda ctx: _train(ctx, 'optim_wrapper.optimizer.lr=-1'),
     ['optim_wrapper.optimizer', 'Invalid learning rate: -1']),
    ('batch size 0', 'train.py', lambda ctx: _train(ctx, 'train_dataloader.batch_size=0'),
     ['train_dataloader.batch_size is 0', '>= 1']),
    ('empty config file', 'train.py', _empty_config, ['config {cfg} defines no model']),
    # checkpoints that fit only partly, or hold the wrong kind of state
    ('test.py with a checkpoint of another model family', 'test.py',
     lambda ctx: [_det_cfg(ctx), _seg_model_file(ctx), '--work-dir', str(ctx.work),
                  '--cfg-options', *ATTO.split(), *FAMILIES['mask_rcnn'][2].split()],
     ['{path} does not cover the model of the config', 'neck', 'another model']),
    ('infer.py with a checkpoint of another model family', 'infer.py',
     lambda ctx: [_det_cfg(ctx), _seg_model_file(ctx), sorted(
         (Path(ctx.data['det']) / 'val2017').glob('*.jpg'))[0], '--out-dir', str(ctx.work),
         '--cfg-options', *ATTO.split(), *FAMILIES['mask_rcnn'][2].split()],
     ['{path} does not cover the model of the config']),
    ('--resume with a weights-only file', 'train.py',
     lambda ctx: [*_train(ctx), '--resume', _seg_model_file(ctx)],
     ['--resume {path} holds weights only', 'load_from={path}']),
    ('--resume after changing the lr-decay grouping', 'train.py', _trained_then_regrouped,
     ['--resume {path}', 'parameter groups', 'load_from={path}']),
    # outputs
    ('work dir is an existing file', 'train.py', _work_dir_is_a_file,
     ['work dir {work} is an existing file']),
    ('convert onto its own input through a symlink', 'model_converters/convert_checkpoint.py',
     _symlinked_release,
     ['DST {path} is the input {link}']),
    ('convert onto its own input', 'model_converters/convert_checkpoint.py',
     lambda ctx: [_seg_model_file(ctx)] * 2, ['DST {path} is the input {path}']),
    ('infer --out-dir is an existing file', 'infer.py',
     lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), sorted(
         (Path(ctx.data['seg']) / 'images' / 'validation').glob('*.jpg'))[0], '--out-dir',
         _text_file(ctx)], ['--out-dir', 'is an existing file']),
    ('make_demo_data --out is an existing file', 'make_demo_data.py',
     lambda ctx: ['--out', _text_file(ctx)], ['--out', 'is an existing file']),
    ('export OUT is a folder', 'deployment/export.py',
     lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), str(ctx.tmp)],
     ['OUT {tmp} is a folder']),
    ('test.py --backend onnxruntime with a file that is not ONNX', 'test.py',
     lambda ctx: [*_train(ctx)[:1], _saved(ctx, b'\x08\x07garbage', 'model.onnx'), '--backend',
                  'onnxruntime', *_train(ctx)[1:]],
     ['cannot load', '{tmp}/model.onnx']),
    ('export OUT is the checkpoint', 'deployment/export.py',
     lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), _seg_model_file(ctx)],
     ['OUT {path} is the input']),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture()
def ctx(tmp_path, tiny_data, atto_ckpt) -> SimpleNamespace:
    return SimpleNamespace(tmp=tmp_path, work=tmp_path / 'work', data=tiny_data,
                           atto_ckpt=atto_ckpt)


@pytest.mark.parametrize('tool,make,fragments', [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(ctx, tool, make, fragments):
    """One ``error:`` line naming the problem, exit status 2, no traceback or warning before it,
    and nothing changed: the case's files, the shared test data, no checkpoint written."""
    args = make(ctx)
    before = _snapshot(ctx.tmp, *map(Path, ctx.data.values()))
    code, _, err = run_here(tool, *args)
    assert_one_line_error(code, err, *(f.format(**vars(ctx)) for f in fragments))
    before_error = err.split('error:')[0]
    assert 'Warning' not in before_error, before_error[-2000:]
    after = _snapshot(ctx.tmp, *map(Path, ctx.data.values()))
    inside_work = f'{ctx.work}{os.sep}'
    assert {k: v for k, v in after.items() if not k.startswith(inside_work)} == {
        k: v for k, v in before.items() if not k.startswith(inside_work)}
    assert not list(ctx.work.rglob('*.pth'))


# --- what must work ---------------------------------------------------------------------------
@pytest.fixture()
def seg_cfg(tmp_path, tiny_data) -> str:
    return write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                        iters=2)


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


def test_good_pretrained_checkpoint_loads(seg_cfg, tmp_path, capsys, atto_ckpt):
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    f"model.backbone.init_cfg.checkpoint='{atto_ckpt}'",
                                                    pretrained=True))
    assert code == 0, err[-2000:]


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


def test_odd_but_valid_label_maps_train(tmp_path, tiny_data, capsys):
    """A 16-bit label map with 8-bit values, a palette one and one with no labelled pixel (among
    labelled ones) pass the data checks; the last is logged, not an error."""
    root = tmp_path / 'ade'
    shutil.copytree(tiny_data['seg'], root)
    labels = sorted((root / 'annotations' / 'training').glob('*.png'))
    pixels = np.asarray(Image.open(labels[0]))
    Image.fromarray(pixels.astype(np.uint16)).save(labels[0])
    assert Image.open(labels[0]).mode == 'I;16'
    palette = Image.open(labels[1]).convert('P')
    palette.save(labels[1])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(labels[2])
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=str(root), iters=2)
    code, out, err = run_here('train.py', *train_args(cfg, tmp_path / 'work'))
    assert code == 0, err[-3000:]
    assert f'label map {labels[2]} has no labelled pixel' in out + err


def test_checks_before_the_run_decode_nothing(tmp_path, tiny_data):
    """The checks before the run list folders and read the COCO file; they open no image (every
    image and label map here is garbage, which only the pipeline's reads find)."""
    from backbones.checks.data import check_data_roots
    roots = {}
    for kind in ('seg', 'det'):
        roots[kind] = tmp_path / kind
        shutil.copytree(tiny_data[kind], roots[kind])
        for path in roots[kind].rglob('*'):
            if path.suffix in ('.jpg', '.png'):
                path.write_bytes(b'\x00garbage')
    for family, kind in (('upernet', 'seg'), ('mask_rcnn', 'det')):
        base, tail = FAMILIES[family][:2]
        (tmp_path / family).mkdir()
        cfg = load_config(write_config(tmp_path / family, base, tail, root=str(roots[kind]),
                                       iters=2))
        check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))


def test_tools_insert_the_checks_after_the_loading_steps():
    from backbones.checks.transforms import add_data_checks
    seg = load_config(str(ROOT / 'configs' / 'upernet_inceptionnext_t_ade20k.py'))
    det = load_config(str(ROOT / FAMILIES['mask_rcnn'][0]))
    for _ in range(2):  # a second call changes nothing
        add_data_checks(seg, ('train_dataloader', 'val_dataloader'))
        add_data_checks(det, ('train_dataloader',))
    assert [t['type'] for t in seg.train_dataloader.dataset.pipeline][:4] == [
        'LoadImageFromFile', 'CheckImage', 'LoadAnnotations', 'CheckSegLabels']
    assert seg.train_dataloader.dataset.pipeline[3].num_classes == 150
    val = [t['type'] for t in seg.val_dataloader.dataset.pipeline]
    assert val[:2] == ['LoadImageFromFile', 'CheckImage'] and val.count('CheckSegLabels') == 1
    assert val.index('CheckSegLabels') == val.index('LoadAnnotations') + 1
    assert [t['type'] for t in det.train_dataloader.dataset.pipeline][:3] == [
        'LoadImageFromFile', 'CheckImage', 'LoadAnnotations']


def test_all_ignored_label_maps_after_a_labelled_one_are_allowed():
    """``CheckSegLabels`` refuses a run whose first label maps are all ignored, not a dataset
    where some maps among labelled ones are."""
    from backbones.checks.transforms import CheckSegLabels
    from backbones.errors import DataError

    def sample(value: int, i: int) -> dict:
        return dict(gt_seg_map=np.full((8, 8), value, np.uint8), seg_map_path=f'{i}.png',
                    reduce_zero_label=True)

    check = CheckSegLabels(num_classes=150, all_ignored_limit=3)
    check(sample(4, 0))
    for i in range(1, 10):
        check(sample(255, i))
    check = CheckSegLabels(num_classes=150, all_ignored_limit=3)
    check(sample(255, 0))
    check(sample(255, 1))
    with pytest.raises(DataError, match='the first 3 label maps read'):
        check(sample(255, 2))
    with pytest.raises(DataError, match='holds value 151'):  # 150 once reduced: out of range
        CheckSegLabels(num_classes=150)(sample(150, 0))
    CheckSegLabels(num_classes=150)(sample(149, 0))  # the last class


def test_non_finite_loss_stops_training(seg_cfg, tmp_path, capsys):
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    'train_cfg.max_iters=6',
                                                    'optim_wrapper.optimizer.lr=1e30'))
    assert_one_line_error(code, err, 'the loss became', 'lower the lr', 'may already hold')
    advice = re.search(r'\((optim_wrapper\.clip_grad[^)]*)\)', err).group(1)
    key, value = advice.split('=')  # the advice works as a --cfg-options override
    assert load_config(seg_cfg, {key: float(value)}).optim_wrapper.clip_grad.max_norm == 1.0


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path: str, room: int):
        self.file, self.room = open(path, 'wb'), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


@pytest.mark.parametrize('writer', ['file write', 'torch.save'])
def test_a_save_that_fails_midway_keeps_the_last_checkpoint(tmp_path, writer):
    """SafeRunHook's atomic saving: a save that dies midway on a full disk (an OSError from the
    file, or the RuntimeError "enforce fail ... unexpected pos" torch.save raises around it)
    says so in one line, leaves no partial file, the last checkpoint intact, and the runner as
    it was after the run."""
    from backbones.errors import DiskFullError
    from backbones.runtime.hooks.atomic_checkpoints import atomic_checkpoints

    class Runner:
        hooks: list = []
        model = torch.nn.Linear(1024, 1024)  # 4 MiB of weights
        fail = False

        def save_checkpoint(self, out_dir: str, filename: str) -> None:
            state = {'w': torch.zeros(3) if self.fail else torch.ones(3),
                     'model': self.model.state_dict()}
            path = os.path.join(out_dir, filename)
            if not self.fail:
                torch.save(state, path)
            elif writer == 'torch.save':
                with _FullDisk(path, room=1 << 20) as f:
                    torch.save(state, f)
            else:
                with _FullDisk(path, room=1 << 20) as f:
                    f.write(b'x' * (1 << 20))
                    f.write(b'x')

    runner = Runner()
    with atomic_checkpoints(runner):
        runner.save_checkpoint(str(tmp_path), 'iter_1.pth')
        runner.fail = True
        with pytest.raises(DiskFullError) as error:
            runner.save_checkpoint(str(tmp_path), 'iter_2.pth')
    message = str(error.value)
    assert re.fullmatch(r'no space left on .+ \(mounted on /.*\) for .+/iter_2\.pth '
                        r'\(needed ~5 MB\): free some space, then continue with --resume '
                        r'\(the last complete checkpoint, .+/iter_1\.pth, is intact\)', message)
    assert 'save_checkpoint' not in vars(runner)  # the wrapper is gone after the run
    assert [p.name for p in tmp_path.iterdir()] == ['iter_1.pth']  # no partial file left
    assert torch.equal(torch.load(tmp_path / 'iter_1.pth', weights_only=True)['w'], torch.ones(3))


@pytest.mark.parametrize('free_mb', [0, 10_000])
def test_torch_writing_a_path_fails_as_a_full_disk_only_where_the_disk_is_full(tmp_path,
                                                                                monkeypatch,
                                                                                free_mb):
    """torch.save to a path writes in C++, whose error ("unexpected pos") names no errno; a
    failed write (here: past RLIMIT_FSIZE) counts as a full disk only where the file system is
    nearly full."""
    import resource
    from collections import namedtuple

    from backbones.errors import DiskFullError
    from backbones.runtime import files
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(files.shutil, 'disk_usage',
                        lambda path: usage(1 << 40, 1 << 40, free_mb << 20))
    assert signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN  # Python's default: EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        expected = DiskFullError if free_mb == 0 else RuntimeError
        with pytest.raises(expected, match='no space left on' if free_mb == 0 else
                           'unexpected pos|failed writing'):
            files.write_atomic(str(tmp_path / 'big.pth'),
                               lambda tmp: torch.save({'w': torch.zeros(1 << 20)}, tmp))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


@HOOKS.register_module()
class SignalAtHook(Hook):
    """Sends ``signum`` to this process during iteration ``at`` (1-based) or, with
    ``during_save``, while the checkpoint of iteration ``at`` is being saved."""

    priority = 'LOWEST'

    def __init__(self, signum: int, at: int, during_save: bool = False):
        self.signum, self.at, self.during_save = signum, at, during_save

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.during_save and runner.iter + 1 == self.at:
            self._send()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.during_save and checkpoint['meta']['iter'] == self.at:
            self._send()

    def _send(self) -> None:
        handler = signal.getsignal(self.signum)
        assert handler not in (signal.SIG_DFL, signal.default_int_handler), 'no stop handler'
        os.kill(os.getpid(), self.signum)


def _assert_stopped(code: int, err: str, signum: int, done: int, work: Path) -> None:
    """Exit 128 + signum, one ``stopped by`` line, ``iter_<done>.pth`` complete, no temporary
    file, and Python's own handlers back."""
    name = signal.Signals(signum).name
    lines = [x for x in err.splitlines() if x.startswith('stopped by')]
    assert code == 128 + signum, err[-3000:]
    assert 'Traceback' not in err and 'error:' not in err and len(lines) == 1, err[-3000:]
    assert lines[0] == (f'stopped by {name} after iteration {done}; saved {work}/iter_{done}.pth: '
                        'continue with --resume')
    assert not list(work.rglob('*.tmp'))
    state = torch.load(work / f'iter_{done}.pth', map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == done and {'optimizer', 'param_schedulers'} <= state.keys()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _assert_resumes(cfg: str, work: Path, done: int) -> None:
    """``--resume`` continues from ``iter_<done>.pth`` and trains the next iteration only."""
    forget_mmengine_instances()  # the visualizer of the first run would take this run's logs
    code, _, err = run_here('train.py', *train_args(cfg, work, f'train_cfg.max_iters={done + 1}',
                                                    'train_cfg.val_begin=100'), '--resume')
    assert code == 0, err[-3000:]
    train_logs, _ = last_metrics(work)
    assert [x['iter'] for x in train_logs if 'loss' in x] == [done + 1]
    assert torch.load(work / f'iter_{done + 1}.pth', map_location='cpu',
                      weights_only=False)['meta']['iter'] == done + 1


@pytest.mark.parametrize('signum,at,during_save', [(signal.SIGINT, 2, False),
                                                   (signal.SIGTERM, 2, True)],
                         ids=['SIGINT during an iteration', 'SIGTERM during a save'])
def test_a_signal_stops_at_the_next_boundary_and_resume_continues(tmp_path, tiny_data, signum,
                                                                  at, during_save):
    """SIGINT/SIGTERM (sent to this process: the tools run in it) stop training after the
    iteration in progress (saving it: the periodic interval is 6) or right after the save in
    progress (before the validation due after it), exit 130/143 with one line, and --resume
    continues from there."""
    tail = SEG_TAIL + (f'custom_hooks = [dict(type={SignalAtHook.__name__!r}, signum={int(signum)},'
                       f' at={at}, during_save={during_save})]\n')
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], tail, root=tiny_data['seg'], iters=6)
    work = tmp_path / 'work'
    code, out, err = run_here('train.py', *train_args(  # a validation due after iteration `at`
        cfg, work, f'default_hooks.checkpoint.interval={1 if during_save else 6}',
        f'train_cfg.val_interval={at}'))
    _assert_stopped(code, err, signum, at, work)
    assert 'Iter(val)' not in out + err
    assert not (work / f'iter_{at + 1}.pth').exists()
    _assert_resumes(cfg, work, at)


@pytest.mark.slow
@pytest.mark.parametrize('at,during_save,line', [
    (1, False, 'stopped by SIGTERM at iteration 1, without saving (epoch-based training saves '
               'whole epochs only): no checkpoint was saved yet'),
    (2, True, 'stopped by SIGTERM after epoch 1 (iteration 2); saved {work}/epoch_1.pth: '
              'continue with --resume')], ids=['mid-epoch', 'during the epoch save'])
def test_a_signal_stops_an_epoch_based_run(tmp_path, tiny_data, at, during_save, line):
    """Mask R-CNN's epoch-based loop (2 iterations an epoch): a stop mid-epoch saves nothing
    (mmengine would restart the epoch from its first batch) and says so; one during the epoch's
    save stops right after it."""
    base, tail, overrides = FAMILIES['mask_rcnn']
    tail += (f'custom_hooks = [dict(type={SignalAtHook.__name__!r}, signum={int(signal.SIGTERM)},'
             f' at={at}, during_save={during_save})]\n')
    cfg = write_config(tmp_path, base, tail, root=tiny_data['det'])
    work = tmp_path / 'work'
    code, _, err = run_here('train.py', cfg, '--work-dir', work, '--cfg-options', *ATTO.split(),
                            *overrides.split(), 'train_cfg.max_epochs=2')
    lines = [x for x in err.splitlines() if x.startswith('stopped by')]
    assert code == 143 and lines == [line.format(work=work)], err[-3000:]
    assert sorted(p.name for p in work.glob('*.pth')) == (['epoch_1.pth'] if during_save else [])
    assert not list(work.rglob('*.tmp'))


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_data, monkeypatch,
                                                               capsys):
    """A checkpoint write that hits ENOSPC midway (as mmengine's file backend writes it): one
    line naming the file system and the space a checkpoint needs, exit 2, no partial file,
    the last checkpoint intact, and --resume continues from it."""
    put = LocalBackend.put

    def put_on_a_full_disk(self, obj: bytes, filepath) -> None:
        if 'iter_2.pth' not in str(filepath):
            return put(self, obj, filepath)
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalBackend, 'put', put_on_a_full_disk)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'], iters=3)
    work = tmp_path / 'work'
    code, _, err = run_here('train.py', *train_args(cfg, work,
                                                    'default_hooks.checkpoint.interval=1',
                                                    'default_hooks.checkpoint.max_keep_ckpts=1'))
    assert_one_line_error(code, err, 'no space left on ', f'for {work}/iter_2.pth (needed ~',
                          f'the last complete checkpoint, {work}/iter_1.pth, is intact')
    needed = int(re.search(r'needed ~(\d+) MB', err).group(1))
    size = (work / 'iter_1.pth').stat().st_size / 2**20
    assert size / 2 < needed < size * 2, (needed, size)
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert not list(work.rglob('*.tmp'))
    monkeypatch.undo()
    _assert_resumes(cfg, work, 1)


def test_a_full_disk_while_logging_is_one_line(tmp_path, tiny_data, monkeypatch):
    """Logging swallows a failed write (a traceback on stderr, then training on without a
    log): SafeRunHook turns ENOSPC in the log file into the full-disk line at the end of the
    iteration, with the last checkpoint intact."""
    emit = logging.FileHandler.emit
    work = tmp_path / 'work'

    def emit_on_a_full_disk(self, record) -> None:  # from iteration 2 on, or a test's progress
        if not (work / 'iter_1.pth').is_file() or (
                (work / 'iter_2.pth').is_file() and 'Iter(test)' not in record.getMessage()):
            return emit(self, record)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            self.handleError(record)

    monkeypatch.setattr(logging.FileHandler, 'emit', emit_on_a_full_disk)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'], iters=3)
    code, _, err = run_here('train.py', *train_args(cfg, work, 'default_hooks.checkpoint.interval=1'
                                                    ))
    # iteration 2's log lines fail; iteration 2's save follows them; iteration 3 stops first
    assert_one_line_error(code, err, 'no space left on ', '.log: free some space',
                          f'the last complete checkpoint, {work}/iter_2.pth, is intact')
    assert 'Logging error' not in err
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth', 'iter_2.pth']
    code, _, err = run_here('test.py', cfg, work / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                            *train_args(cfg, work)[3:])
    assert_one_line_error(code, err, 'no space left on ', '.log: free some space: the run '
                          'finished, but its log is incomplete')
    assert 'Logging error' not in err


def _popen_train(cfg: str, work: Path, *extra: str, **popen) -> subprocess.Popen:
    """tools/train.py in a new process, with Python's own SIGINT handling (a shell may have
    started this one with SIGINT ignored, which its children inherit)."""
    return subprocess.Popen(
        [sys.executable, 'tools/train.py', *train_args(cfg, work, *extra)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _read_until(proc: subprocess.Popen, pattern: str) -> str:
    """``proc``'s output up to the first line matching ``pattern`` (all of it if none does)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            break
    return ''.join(lines)


@pytest.mark.slow
def test_sigterm_from_outside_stops_the_tool_cleanly(tmp_path, tiny_data):
    """``kill -TERM`` from another process while tools/train.py trains (checkpoint interval
    1000): exit status 143, one line, the iteration it stopped after saved complete, no
    temporary file (SIGINT takes the same path: see the in-process test above)."""
    signum = signal.SIGTERM
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work = tmp_path / 'work'
    proc = _popen_train(cfg, work)
    log = _read_until(proc, r'Iter\(train\) \[\s*2/1000\]')
    proc.send_signal(signum)
    log += proc.communicate(timeout=300)[0]
    stopped = re.search(r'^stopped by \w+ after iteration (\d+)', log, re.MULTILINE)
    assert stopped, log[-3000:]
    done = int(stopped.group(1))
    assert done >= 2
    _assert_stopped(proc.returncode, log, signum, done, work)
    assert [p.name for p in work.glob('*.pth')] == [f'iter_{done}.pth']


@pytest.mark.slow
def test_sigterm_to_every_process_with_data_loader_workers(tmp_path, tiny_data):
    """SIGTERM to the whole process group, data loader workers included (what SLURM does when it
    ends a job): still one line and exit 143, no temporary file; when the workers end before the
    next iteration boundary the run stops without saving and names the last complete
    checkpoint."""
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work = tmp_path / 'work'
    proc = _popen_train(cfg, work, 'default_hooks.checkpoint.interval=1',
                        'train_dataloader.num_workers=2',
                        'train_dataloader.persistent_workers=True', start_new_session=True)
    log = _read_until(proc, r'Iter\(train\) \[\s*2/1000\]')
    os.killpg(proc.pid, signal.SIGTERM)
    log += proc.communicate(timeout=300)[0]
    lines = [x for x in log.splitlines() if x.startswith('stopped by')]
    assert proc.returncode == 143 and len(lines) == 1 and 'Traceback' not in log, log[-3000:]
    assert re.fullmatch(r'stopped by SIGTERM (after iteration \d+; saved .+|at iteration \d+, '
                        r'without saving \(the data loader workers got the signal too and ended '
                        r'first\): continue with --resume from the last complete checkpoint, '
                        r'.+\.pth)', lines[0]), lines[0]
    assert not list(work.rglob('*.tmp'))
    torch.load(latest_complete_checkpoint(str(work)), map_location='cpu', weights_only=False)


SECOND_CTRL_C = r'''
import os, signal, sys, time
from backbones.runtime.signals import StopRequest

def host_handler(signum, frame):
    print('host handler', flush=True)

signal.signal(signal.SIGHUP, host_handler)
stop = StopRequest(on_force=lambda: open(sys.argv[1], 'w').close())
with stop.installed():
    assert signal.getsignal(signal.SIGHUP) is host_handler
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM never forces
    os.kill(os.getpid(), signal.SIGINT)  # within a second of the first: a copy, ignored
    time.sleep(0.2)
    print(f'recorded {stop.signum}', flush=True)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
    time.sleep(10)
print('still running', flush=True)
'''


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """A second Ctrl-C a second after the first kills the process by SIGINT (removing the
    temporary file of a save in progress); repeated SIGTERMs and a copy of the first signal
    change nothing."""
    marker = tmp_path / 'temporary_files_removed'
    result = subprocess.run([sys.executable, '-c', SECOND_CTRL_C, str(marker)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f'recorded {int(signal.SIGTERM)}']
    assert marker.exists()
    assert 'SIGTERM: stopping after the current iteration or checkpoint save' in result.stderr
    assert 'stopped by a second SIGINT at once' in result.stderr


@pytest.mark.slow
def test_sigkill_leaves_loadable_checkpoint_and_resume_continues(tmp_path, tiny_data):
    """Kill -9 twice at random moments (one right after a resume), then resume once more."""
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
