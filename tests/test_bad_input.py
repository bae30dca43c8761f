"""Bad input fails with one clear line, exit status 2 and nothing damaged: one table, growing
with every case found. Odd but valid input that must work: test_valid_input.py; faults (a failed
save, a killed run, a diverging loss): test_faults.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    SEG_TAIL,
    assert_one_line_error,
    run_here,
    run_tool,
    train_args,
    write_config,
)
from mmengine.config import DictAction
from PIL import Image

from backbones.config import build_model, load_config

# --- the table --------------------------------------------------------------------------------
# Each case: pytest.param(tool, make, fragments, id=...). ``make(ctx)`` writes what the case
# needs under ctx.tmp and returns the tool's arguments; ``fragments`` (formatted with ctx's
# attributes) must all be in the one ``error:`` line. Every case also checks exit status 2, no
# traceback, no warnings before the error line, and that no file under ctx.tmp (nor the shared
# test data) changed.

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


# --- nothing lost: outputs never replace inputs or earlier runs ----------------------------------

def _finished_run(ctx) -> Path:
    """A real 2-iteration training in ctx.tmp/run (outside ctx.work, so every file of it is
    compared before and after)."""
    ctx.run = ctx.tmp / 'run'
    code, _, err = run_here('train.py', *train_args(_seg_cfg(ctx), ctx.run))
    assert code == 0 and (ctx.run / 'iter_2.pth').is_file(), err[-2000:]
    return ctx.run


def _train_again(ctx) -> list:
    """The same config trained again into the finished run's work dir, one option changed."""
    return train_args(_seg_cfg(ctx), _finished_run(ctx), 'optim_wrapper.optimizer.lr=0.001')


def _locked_work_dir(ctx) -> list:
    """A work dir whose lock names a live process on this host (this test's parent)."""
    ctx.run, ctx.ppid = ctx.tmp / 'run', os.getppid()
    ctx.run.mkdir()
    (ctx.run / 'train.lock').write_text(f'{ctx.ppid} {socket.gethostname()}\n')
    return train_args(_seg_cfg(ctx), ctx.run)


def _images_copy(ctx) -> Path:
    ctx.images = ctx.tmp / 'images'
    ctx.images.mkdir()
    for image in sorted((Path(ctx.data['seg']) / 'images' / 'validation').glob('*.jpg'))[:2]:
        shutil.copy(image, ctx.images)
    return ctx.images


def _infer_into(ctx, out_dir) -> list:
    return [_seg_cfg(ctx), _seg_model_file(ctx), _images_copy(ctx), '--out-dir', out_dir(ctx),
            '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()]


def _earlier_paintings(ctx) -> Path:
    ctx.out = ctx.tmp / 'painted'
    ctx.out.mkdir()
    first = sorted(ctx.images.glob('*.jpg'))[0]
    Image.new('RGB', (8, 8)).save(ctx.out / f'{first.stem}.png')
    return ctx.out


def _seg_test(ctx, out) -> list:
    """tools/test.py on a copy of the tiny ADE20K set, --out given by ``out(ctx, root)``."""
    root, _, _ = _seg_files(ctx, 'validation')
    ctx.root = root
    model = _seg_model_file(ctx)  # writes the config of the shared data: first
    return [_seg_cfg(ctx, str(root)), model, '--work-dir', str(ctx.work), '--out',
            out(ctx, root), '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()]


def _label_maps_of_mine(ctx, root: Path) -> Path:
    """A folder of label maps (not the test set's) with the names test.py would write."""
    ctx.out = ctx.tmp / 'my_labels'
    shutil.copytree(root / 'annotations' / 'validation', ctx.out)
    return ctx.out


def _load_from(ctx, make_file) -> list:
    ctx.path = make_file(ctx)
    return _train(ctx, f'load_from={ctx.path}')


def _non_finite_model_file(ctx) -> str:
    path = Path(_seg_model_file(ctx))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['state_dict']['backbone.stem.0.weight'][0, 0, 0, 0] = float('nan')
    torch.save(checkpoint, path)
    return str(path)


def _below_a_file(ctx, name: str) -> str:
    ctx.file = Path(_text_file(ctx))
    return str(ctx.file / name)


NOTHING_LOST = [
    pytest.param('train.py', _train_again,
                 ['work dir {run} holds the checkpoints of a run', 'iter_2.pth', 'last_checkpoint',
                  '--resume', 'another --work-dir', '--overwrite', '{run}/previous_<time>/'],
                 id='train again into a finished run'),
    pytest.param('train.py', _locked_work_dir,
                 ['work dir {run} is in use by another training (PID {ppid} on this machine',
                  'another --work-dir'],
                 id='two trainings on one work dir'),
    pytest.param('infer.py', lambda ctx: _infer_into(ctx, lambda c: c.images),
                 ['--out-dir {images} holds {images}', 'which this command reads'],
                 id='infer --out-dir is the images folder'),
    pytest.param('infer.py', lambda ctx: _infer_into(ctx, lambda c: c.tmp),
                 ['--out-dir {tmp} holds', 'which this command reads'],
                 id='infer --out-dir is a parent of the images folder'),
    pytest.param('infer.py', lambda ctx: _infer_into(ctx, _earlier_paintings),
                 ['--out-dir {out} already holds 1 of the files this command writes',
                  '--overwrite'],
                 id='infer --out-dir holds files of the same names'),
    pytest.param('test.py',
                 lambda ctx: _seg_test(ctx, lambda c, root: root / 'annotations' / 'validation'),
                 ['--out {root}/annotations/validation holds', 'which this command reads'],
                 id='seg test --out is the label map folder'),
    pytest.param('test.py', lambda ctx: _seg_test(ctx, _label_maps_of_mine),
                 ['--out {out} already holds 2 of the files this command writes', '--overwrite'],
                 id='seg test --out holds label maps of the same names'),
    pytest.param('test.py',
                 lambda ctx: [*_seg_test(ctx, lambda c, root: c.tmp / 'preds'), '--show-dir',
                              str(ctx.root / 'images')],
                 ['--show-dir {root}/images holds', 'which this command reads'],
                 id='test --show-dir holds the images'),
    pytest.param('train.py', lambda ctx: [*_train(ctx), '--resume'],
                 ['--resume: nothing to resume in {work}', '--resume PATH'],
                 id='--resume with nothing to resume'),
    pytest.param('train.py', lambda ctx: [*_train(ctx), '--resume', '--overwrite'],
                 ['--resume continues', '--overwrite starts over'], id='--resume with --overwrite'),
    pytest.param('train.py', lambda ctx: _load_from(ctx, lambda c: str(c.tmp / 'nope.pth')),
                 ["load_from='{path}': expected an existing file"], id='load_from missing'),
    pytest.param('train.py', lambda ctx: _load_from(ctx, _non_finite_model_file),
                 ['{path} holds non-finite values (NaN or inf) in 1 tensors',
                  'backbone.stem.0.weight'],
                 id='load_from with NaN'),
    pytest.param('train.py',
                 lambda ctx: _load_from(
                     ctx, lambda c: _saved(c, {'conv1.weight': torch.zeros(8, 3, 3, 3)})),
                 ['load_from {path}: no key of it fits the model'], id='load_from no key fits'),
    pytest.param('train.py', lambda ctx: _load_from(ctx, lambda c: _saved(c, {})),
                 ['load_from {path} holds no state dict of tensors'], id='load_from empty'),
    pytest.param('deployment/export.py',
                 lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), _below_a_file(ctx, 'x.onnx')],
                 ['OUT {file}/x.onnx: {file} is a file, not a folder'],
                 id='export OUT below a file'),
    pytest.param('deployment/export.py',
                 lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx),
                              _saved(ctx, b'onnx of an earlier export', 'model.onnx')],
                 ['OUT {tmp}/model.onnx already exists', '--overwrite'],
                 id='export OUT exists'),
    pytest.param('analysis_tools/benchmark.py',
                 lambda ctx: ['--out', _below_a_file(ctx, 'bench'), '--sizes', 'a'],
                 ['--out {file}/bench: {file} is a file, not a folder'],
                 id='benchmark --out below a file'),
    pytest.param('model_converters/convert_checkpoint.py',
                 lambda ctx: [ctx.atto_ckpt, _saved(ctx, b'my backbone', 'backbone.pth')],
                 ['DST {tmp}/backbone.pth already exists', '--overwrite'],
                 id='convert DST exists'),
]

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
    *[pytest.param('train.py', lambda ctx, o=o: _train(ctx, o), f, id=f'override {o}')
      for o, f in OVERRIDES],
    pytest.param(
        'train.py',
        lambda ctx: _det_train(ctx, 'model.roi_head.bbox_head.num_classes=81',
                               'model.roi_head.mask_head.num_classes=81'),
        ['model.roi_head.bbox_head.num_classes is 81 but train_dataloader.dataset (CocoDataset)',
         '--cfg-options model.roi_head.bbox_head.num_classes=80 '
         'model.roi_head.mask_head.num_classes=80'],
        id='detector num_classes'),
    pytest.param('train.py', lambda ctx: ['configs/nope.py'],
                 ['config file not found: configs/nope.py'], id='missing config'),
    pytest.param('train.py', _unimportable,
                 ['custom_imports of config {cfg}', "No module named 'no_such_module'",
                  'PYTHONPATH'],
                 id='unimportable custom_imports'),
    # pretrained weights (init_cfg)
    pytest.param('train.py', lambda ctx: _pretrained(ctx, lambda c: str(c.tmp / 'nope.pth')),
                 ['{path}', 'checkpoint not found'], id='pretrained missing'),
    pytest.param('train.py', lambda ctx: _pretrained(ctx, lambda c: _truncated(c, c.atto_ckpt)),
                 ['{path}', 'cannot read checkpoint', 'truncated'], id='pretrained truncated'),
    pytest.param('train.py', lambda ctx: _pretrained(ctx, _text_file),
                 ['{path}', 'cannot read checkpoint'], id='pretrained text'),
    pytest.param(
        'train.py',
        lambda ctx: _pretrained(
            ctx, lambda c: _saved(c, {'stem.0.weight': torch.zeros(96, 3, 4, 4)})),
        ['{path}', 'does not fit the InceptionNeXt backbone', 'shape mismatch'],
        id='pretrained other arch'),
    pytest.param(
        'train.py',
        lambda ctx: _pretrained(
            ctx, lambda c: _saved(c, {'conv1.weight': torch.zeros(8, 3, 3, 3)})),
        ['{path}', 'no key of'],
        id='pretrained no match'),
    pytest.param(
        'train.py',
        lambda ctx: _pretrained(ctx, lambda c: 'http://127.0.0.1:9/inceptionnext_atto.pth'),
        ['{path}', 'cannot read checkpoint', 'download it by hand'],
        id='pretrained url'),
    # whole-model checkpoints: test.py CHECKPOINT and train.py --resume CHECKPOINT
    *[pytest.param(
        tool,
        lambda ctx, tool=tool, case=case: (
            [_seg_cfg(ctx), _bad_model_ckpt(ctx, case), '--work-dir', str(ctx.work),
             '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()]
            if tool == 'test.py' else [*_train(ctx), '--resume', _bad_model_ckpt(ctx, case)]),
        ['{path}', *fragments],
        id=f'{tool} {case} checkpoint')
      for tool in ('test.py', 'train.py')
      for case, fragments in [
          ('truncated', ['cannot read checkpoint', 'truncated']),
          ('text', ['cannot read checkpoint']),
          ('other_arch', ['does not fit the model of the config', 'shape mismatch']),
          ('no_match', ['no key of', 'matches the model of the config'])]],
    # data
    pytest.param('train.py', lambda ctx: _missing_dataset(ctx, empty=False),
                 ['{root}', 'make demo-data', 'not found'], id='dataset missing'),
    pytest.param('train.py', lambda ctx: _missing_dataset(ctx, empty=True),
                 ['{root}', 'make demo-data', 'is empty'], id='dataset empty'),
    pytest.param(
        'train.py',
        lambda ctx: _det_train(ctx, f'val_evaluator.ann_file={ctx.tmp}/elsewhere/instances.json'),
        ['{tmp}/elsewhere/instances.json', '--cfg-options val_evaluator.ann_file=PATH'],
        id='evaluator annotation file missing'),
    pytest.param('train.py', lambda ctx: _unreadable(ctx, 'images', '*.jpg', 0),
                 ['failed to load image', '{bad.name}'], id='image unreadable'),
    pytest.param('train.py', lambda ctx: _unreadable(ctx, 'annotations', '*.png', 1),
                 ['{bad} is not a readable image', 'replace it'], id='label map unreadable'),
    pytest.param('train.py', _coco_not_parsing, ['does not parse', 'instances_train2017.json'],
                 id='COCO annotation file does not parse'),
    pytest.param('train.py', _label_missing,
                 ['1 of the 4 images of train_dataloader have no label map', 'needs {bad}'],
                 id='image without its label map'),
    pytest.param('test.py', lambda ctx: _label_missing(ctx, 'test.py'),
                 ['of test_dataloader have no label map', 'needs {bad}'],
                 id='test.py image without its label map'),
    pytest.param('train.py', _tiny_image, ['{bad} is 1x1 pixels', '8x8 minimum'],
                 id='image 1x1'),
    pytest.param('train.py', lambda ctx: _bad_label(ctx, lambda a: a[:, :48]),
                 ['label map {bad} is 48x64 pixels', 'is 64x64', "needs its image's size"],
                 id='label map size differs from its image'),
    pytest.param('train.py', lambda ctx: _bad_label(ctx, _value_300),
                 ['label map {bad} holds value 300', 'silently turn it into 44'],
                 id='label map 16-bit with value 300'),
    pytest.param('train.py',
                 lambda ctx: _bad_label(ctx, _value_300, 'train_dataloader.num_workers=1'),
                 ['label map {bad} holds value 300'],
                 id='label map 16-bit with value 300, DataLoader worker'),
    pytest.param('train.py', lambda ctx: _bad_label(ctx, _value(200)),
                 ['label map {bad} holds value 200', 'ADE20KDataset has 150 classes', '1..150'],
                 id='label value outside the classes'),
    pytest.param('train.py', lambda ctx: _bad_label(ctx, lambda a: np.stack([a] * 3, -1)),
                 ['label map {bad} is a RGB-mode image', 'one class id per pixel'],
                 id='label map in colour'),
    pytest.param('train.py', _all_ignored,
                 ['the first 4 label maps read', 'no labelled pixel', 'reduce_zero_label'],
                 id='label maps all ignored'),
    pytest.param('train.py', lambda ctx: _coco_changed(ctx, _coco_image_missing),
                 ['1 of the 4 images listed in {ann} are missing', '{bad}'],
                 id='COCO image missing'),
    pytest.param('train.py',
                 lambda ctx: _coco_changed(ctx, lambda c, r, coco: coco.update(annotations=[])),
                 ['{ann} (train_dataloader) has no usable annotation', '0 annotations'],
                 id='COCO annotations empty'),
    pytest.param('train.py', lambda ctx: _coco_changed(ctx, _coco_crowd_only),
                 ['{ann} (train_dataloader) has no usable annotation', 'non-crowd'],
                 id='COCO annotations all crowd'),
    pytest.param('train.py', lambda ctx: _coco_changed(ctx, _coco_image_resized),
                 ['{bad} is 48x64 pixels but its COCO annotation entry says 64x64'],
                 id='COCO image size differs from its entry'),
    # constructors that take **kwargs or check values only when a run reaches them
    *[pytest.param('train.py', lambda ctx, o=override: _train(ctx, o),
                   [key, f"'{typo}'", f"did you mean '{meant}'"],
                   id=f'argument typo: {override}')
      for override, key, typo, meant in TYPOS],
    pytest.param('train.py', lambda ctx: _train(ctx, 'optim_wrapper.optimizer.lr=-1'),
                 ['optim_wrapper.optimizer.lr=-1: expected a finite number > 0'],
                 id='negative lr'),
    pytest.param('train.py', lambda ctx: _train(ctx, 'train_dataloader.batch_size=0'),
                 ['train_dataloader.batch_size=0: expected an integer >= 1'], id='batch size 0'),
    pytest.param('train.py', _empty_config, ['config {cfg} defines no model'],
                 id='empty config file'),
    # checkpoints that fit only partly, or hold the wrong kind of state
    pytest.param(
        'test.py',
        lambda ctx: [_det_cfg(ctx), _seg_model_file(ctx), '--work-dir', str(ctx.work),
                     '--cfg-options', *ATTO.split(), *FAMILIES['mask_rcnn'][2].split()],
        ['{path} does not cover the model of the config', 'neck', 'another model'],
        id='test.py with a checkpoint of another model family'),
    pytest.param(
        'infer.py',
        lambda ctx: [_det_cfg(ctx), _seg_model_file(ctx), sorted(
            (Path(ctx.data['det']) / 'val2017').glob('*.jpg'))[0], '--out-dir', str(ctx.work),
            '--cfg-options', *ATTO.split(), *FAMILIES['mask_rcnn'][2].split()],
        ['{path} does not cover the model of the config'],
        id='infer.py with a checkpoint of another model family'),
    # a diverged run's checkpoint: one check (checkpoint.check_finite) for every tool
    *[pytest.param(
        tool,
        lambda ctx, tool=tool: [
            _seg_cfg(ctx), _non_finite_model_file(ctx),
            *{'test.py': ['--work-dir', str(ctx.work)],
              'infer.py': [sorted((Path(ctx.data['seg']) / 'images' / 'validation').glob(
                  '*.jpg'))[0], '--out-dir', str(ctx.work)],
              'deployment/export.py': [str(ctx.work / 'model.onnx')]}[tool],
            '--cfg-options', *ATTO.split(), *FAMILIES['upernet'][2].split()],
        ['{path} holds non-finite values (NaN or inf) in 1 tensors, e.g. backbone.stem.0.weight'],
        id=f'{tool} with a checkpoint holding NaN')
      for tool in ('test.py', 'infer.py', 'deployment/export.py')],
    pytest.param('train.py', lambda ctx: [*_train(ctx), '--resume', _seg_model_file(ctx)],
                 ['--resume {path} holds weights only', 'load_from={path}'],
                 id='--resume with a weights-only file'),
    pytest.param('train.py', _trained_then_regrouped,
                 ['--resume {path}', 'parameter groups', 'load_from={path}'],
                 id='--resume after changing the lr-decay grouping'),
    # outputs
    pytest.param('train.py', _work_dir_is_a_file, ['work dir {work} is an existing file'],
                 id='work dir is an existing file'),
    pytest.param('model_converters/convert_checkpoint.py', _symlinked_release,
                 ['DST {path} is the input {link}'],
                 id='convert onto its own input through a symlink'),
    pytest.param('model_converters/convert_checkpoint.py',
                 lambda ctx: [_seg_model_file(ctx)] * 2, ['DST {path} is the input {path}'],
                 id='convert onto its own input'),
    pytest.param(
        'infer.py',
        lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), sorted(
            (Path(ctx.data['seg']) / 'images' / 'validation').glob('*.jpg'))[0], '--out-dir',
            _text_file(ctx)],
        ['--out-dir', 'is an existing file'],
        id='infer --out-dir is an existing file'),
    pytest.param('make_demo_data.py', lambda ctx: ['--out', _text_file(ctx)],
                 ['--out', 'is an existing file'], id='make_demo_data --out is an existing file'),
    pytest.param('deployment/export.py',
                 lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), str(ctx.tmp)],
                 ['OUT {tmp} is a folder'], id='export OUT is a folder'),
    pytest.param(
        'test.py',
        lambda ctx: [*_train(ctx)[:1], _saved(ctx, b'\x08\x07garbage', 'model.onnx'), '--backend',
                     'onnxruntime', *_train(ctx)[1:]],
        ['cannot load', '{tmp}/model.onnx'],
        id='test.py --backend onnxruntime with a file that is not ONNX'),
    pytest.param('deployment/export.py',
                 lambda ctx: [_seg_cfg(ctx), _seg_model_file(ctx), _seg_model_file(ctx)],
                 ['OUT {path} is the input'], id='export OUT is the checkpoint'),
    *NOTHING_LOST,
]


def _snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture()
def ctx(tmp_path, tiny_data, atto_ckpt) -> SimpleNamespace:
    return SimpleNamespace(tmp=tmp_path, work=tmp_path / 'work', data=tiny_data,
                           atto_ckpt=atto_ckpt)


@pytest.mark.parametrize('tool,make,fragments', CASES)
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

