"""Odd but valid input works: config overrides that create keys, a backbone with a scope key,
good pretrained weights, grayscale/RGBA/odd-sized images and unusual label maps; the data checks
before a run decode nothing, and the tools put the pipeline's checks after the loading steps."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import FAMILIES, ROOT, SEG_TAIL, run_here, train_args, write_config
from PIL import Image

from backbones.config import load_config


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
    def steps(pipeline) -> list[str]:  # a loading step runs inside CheckedLoad, once
        return [f"CheckedLoad({t['transform']['type']})" if t['type'] == 'CheckedLoad'
                else t['type'] for t in pipeline]

    assert steps(seg.train_dataloader.dataset.pipeline)[:4] == [
        'CheckedLoad(LoadImageFromFile)', 'CheckImage', 'CheckedLoad(LoadAnnotations)',
        'CheckSegLabels']
    assert seg.train_dataloader.dataset.pipeline[3].num_classes == 150
    val = steps(seg.val_dataloader.dataset.pipeline)
    assert val[:2] == ['CheckedLoad(LoadImageFromFile)', 'CheckImage']
    assert val.count('CheckSegLabels') == 1
    assert val.index('CheckSegLabels') == val.index('CheckedLoad(LoadAnnotations)') + 1
    assert steps(det.train_dataloader.dataset.pipeline)[:3] == [
        'CheckedLoad(LoadImageFromFile)', 'CheckImage', 'CheckedLoad(LoadAnnotations)']


def test_a_damaged_file_is_named_by_the_step_that_reads_it(tmp_path):
    """Whatever a decoder raises on an empty or truncated file, ``CheckedLoad`` names the file;
    the operating system's refusals keep their errno for the tools' mapping."""
    from backbones.checks.transforms import CheckedLoad
    from backbones.errors import DataError
    good = tmp_path / 'good.png'
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    empty, cut = tmp_path / 'empty.jpg', tmp_path / 'cut.png'
    empty.write_bytes(b'')
    cut.write_bytes(good.read_bytes()[:60])
    load = CheckedLoad(dict(type='LoadImageFromFile'))
    assert load(dict(img_path=str(good)))['img'].shape == (16, 16, 3)
    for bad in (empty, cut):
        with pytest.raises(DataError, match=f'^{bad} cannot be read .*replace it'):
            load(dict(img_path=str(bad)))
    loop = tmp_path / 'loop.png'
    loop.symlink_to(loop)
    with pytest.raises(OSError) as e:
        load(dict(img_path=str(loop)))
    assert e.value.errno is not None and not isinstance(e.value, DataError)


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

