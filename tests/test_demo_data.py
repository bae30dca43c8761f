"""The synthetic demo set: deterministic, and read by mmseg's and mmdet's real dataset classes."""
from __future__ import annotations

import filecmp
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from backbones.demo import data as demo_data
from backbones.demo.data import (
    ADE_CLASSES,
    COCO_USED,
    MARKER_FILE,
    ensure_demo_data,
    make_ade20k,
    make_coco,
)

TINY = dict(n_train=4, n_val=2, size=64)


def _files(root: str) -> list[str]:
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _same_tree(a: str, b: str) -> bool:
    files = _files(a)
    return files == _files(b) and all(
        filecmp.cmp(osp.join(a, f), osp.join(b, f), shallow=False) for f in files)


@pytest.fixture(scope='module')
def ade(tmp_path_factory) -> dict:
    return make_ade20k(str(tmp_path_factory.mktemp('ade')), **TINY)


@pytest.fixture(scope='module')
def coco(tmp_path_factory) -> dict:
    return make_coco(str(tmp_path_factory.mktemp('coco')), **TINY)


@pytest.mark.parametrize('make', [make_ade20k, make_coco])
def test_deterministic_and_idempotent(tmp_path, make):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    make(a, seed=3, **TINY)
    make(b, seed=3, **TINY)
    make(c, seed=4, **TINY)
    assert _same_tree(a, b)
    assert not _same_tree(a, c)
    before = _files(a)
    make(a, seed=3, **TINY)  # again into the same place: same files, nothing left over
    assert _files(a) == before and _same_tree(a, b)


def test_refuses_to_overwrite_foreign_data(tmp_path):
    os.makedirs(tmp_path / 'train2017')
    (tmp_path / 'train2017' / 'x.jpg').write_bytes(b'')
    with pytest.raises(FileExistsError):
        make_coco(str(tmp_path), **TINY)
    assert (tmp_path / 'train2017' / 'x.jpg').exists()


def test_ade20k_dataset_reads_it(ade):
    from mmengine.registry import init_default_scope
    from mmseg.datasets import ADE20KDataset
    init_default_scope('mmseg')
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]
    seen = set()
    for split, n in [('training', TINY['n_train']), ('validation', TINY['n_val'])]:
        ds = ADE20KDataset(data_root=ade['data_root'], pipeline=pipeline,
                           data_prefix=dict(img_path=f'images/{split}',
                                            seg_map_path=f'annotations/{split}'))
        assert len(ds) == n
        for i in range(n):
            sample = ds[i]
            assert tuple(sample['inputs'].shape) == (3, 64, 64)
            seg = sample['data_samples'].gt_sem_seg.data.numpy()[0]
            raw = cv2.imread(sample['data_samples'].seg_map_path, cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8 and raw.shape == seg.shape == (64, 64)
            assert (seg == np.where(raw == 0, 255, raw.astype(np.int64) - 1)).all()
            values = set(np.unique(seg).tolist())
            assert values <= set(range(150)) | {255}
            assert 255 in values  # the thin "other" outlines, ignored after reduce_zero_label
            seen |= values
    classes = ds.metainfo['classes']
    for name, ade_id in ADE_CLASSES.items():
        assert classes[ade_id - 1] == name
    assert seen - {255} <= {i - 1 for i in ADE_CLASSES.values()}
    assert len(seen - {255}) >= 4  # two background classes and objects, across 6 images
    assert 0.005 < ade['ignore_fraction'] < 0.04


def test_coco_dataset_reads_it(coco):
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    classes = CocoDataset.METAINFO['classes']
    for split, n in [('train', TINY['n_train']), ('val', TINY['n_val'])]:
        ds = CocoDataset(data_root=coco['root'], ann_file=f'annotations/instances_{split}2017.json',
                         data_prefix=dict(img=f'{split}2017/'), pipeline=pipeline,
                         test_mode=split == 'val')
        assert len(ds) == n
        for name, cat_id in COCO_USED.items():  # the real ids map to the usual labels
            assert classes[ds.cat2label[cat_id]] == name
        assert [ds.cat2label[c] for c in (37, 38, 72)] == [32, 33, 62]
        with open(coco[f'{split}_ann']) as f:
            raw = json.load(f)
        for i in range(n):
            sample = ds[i]
            inst = sample['data_samples'].gt_instances
            img_id = sample['data_samples'].img_id
            anns = [a for a in raw['annotations'] if a['image_id'] == img_id]
            assert 1 <= len(inst) == len(anns) <= 4
            assert sorted(inst.labels.tolist()) == sorted(ds.cat2label[a['category_id']]
                                                          for a in anns)
            masks = inst.masks.to_ndarray()
            for box, mask, ann in zip(inst.bboxes.tensor.numpy(), masks, anns):
                assert 0.8 < mask.sum() / ann['area'] < 1.2
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = box
                assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1)
                assert ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)
    assert coco['instances']['train'] + coco['instances']['val'] == sum(
        len(json.load(open(coco[f'{s}_ann']))['annotations']) for s in ('train', 'val'))


def test_ensure_demo_data_regenerates_without_marker(tmp_path, monkeypatch):
    calls = []
    real = {'make_ade20k': make_ade20k, 'make_coco': make_coco}
    for name, fn in real.items():
        def small(root, _fn=fn, _name=name, **kw):
            calls.append(_name)
            return _fn(root, **TINY)
        monkeypatch.setattr(demo_data, name, small)
    # the tiny sets do not match the default-size marker, so the marker check is patched too
    monkeypatch.setattr(demo_data, '_default_marker',
                        lambda kind, make: {'kind': kind, 'version': demo_data.VERSION,
                                            'seed': 0, **TINY})
    root = str(tmp_path / 'demo')
    ade_root, coco_root = ensure_demo_data(root)
    assert ade_root == osp.join(root, 'ade', 'ADEChallengeData2016')
    assert coco_root == osp.join(root, 'coco')
    assert osp.isdir(osp.join(ade_root, 'images', 'training'))
    assert osp.isfile(osp.join(coco_root, 'annotations', 'instances_val2017.json'))
    assert calls == ['make_ade20k', 'make_coco']
    assert ensure_demo_data(root) == (ade_root, coco_root)
    assert calls == ['make_ade20k', 'make_coco']  # complete: nothing regenerated
    # a half-written set (no marker, files partly missing) is written again
    os.remove(osp.join(root, 'ade', MARKER_FILE))
    os.remove(osp.join(ade_root, 'images', 'training', 'ADE_train_00000002.jpg'))
    ensure_demo_data(root)
    assert calls == ['make_ade20k', 'make_coco', 'make_ade20k']
    assert osp.isfile(osp.join(ade_root, 'images', 'training', 'ADE_train_00000002.jpg'))
