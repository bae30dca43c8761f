"""Checks of each sample as the data pipeline reads it: a bad file is a ``DataError`` naming it.

Importing this module registers two transforms in mmengine's root ``TRANSFORMS`` (found from
mmseg's and mmdet's pipelines); ``import backbones`` does not import it. The tools insert them with
``add_data_checks``; a downstream config opts in with
``custom_imports=dict(imports=['backbones', 'backbones.checks.transforms'])`` and the two steps
in its pipelines:

- ``CheckImage`` right after ``LoadImageFromFile``: a float image holds no NaN or inf; the
  image is at least ``min_size`` pixels a side; a COCO image has the size its annotation file
  gives; a label map (read up to its header, not decoded) has the image's size and one channel,
  and a 16-bit one holds no value above 255 (mmseg reads label maps as ``uint8``: 300 would
  silently become class 44).
- ``CheckSegLabels`` right after mmseg's ``LoadAnnotations``: every value is a class of the
  dataset or the ignore index 255, and the first label maps read are not all entirely ignored.

Both raise at the first read of a bad file, in the process (or DataLoader worker) reading it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS
from PIL import Image

from ..checks.data import built_lazily, dataset_dicts, loads_annotations
from ..errors import DataError, UserError, first_line

IGNORE_INDEX = 255  # mmseg's LoadAnnotations and decode heads
_ONE_CHANNEL = {'1', 'L', 'P', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F'}
_WIDE = {'I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F'}  # more than 8 bits a pixel


@TRANSFORMS.register_module()
class CheckImage(BaseTransform):
    """After ``LoadImageFromFile``: the image's size, and the header of its label map.

    Args:
        min_size: the smallest image side accepted, in pixels. 8 rejects 1x1 placeholders and
            broken exports (and 1-pixel-wide maps, which mmseg's ``LoadAnnotations`` squeezes to
            one dimension) while accepting any real photograph; the pipelines resize what passes.
    """

    def __init__(self, min_size: int = 8):
        self.min_size = min_size

    def transform(self, results: dict) -> dict:
        path = results['img_path']
        check_finite_pixels(results['img'], path)
        h, w = results['img'].shape[:2]
        if min(h, w) < self.min_size:
            raise DataError(f'{path} is {w}x{h} pixels, smaller than the {self.min_size}x'
                            f'{self.min_size} minimum (a placeholder or a broken export?): '
                            f'replace it or remove it from the dataset')
        expected = results.get('width'), results.get('height')  # COCO: from the annotation file
        if None not in expected and expected != (w, h):
            raise DataError(f'{path} is {w}x{h} pixels but its COCO annotation entry says '
                            f'{expected[0]}x{expected[1]}{_rotated(expected, (w, h))}, so its '
                            f'boxes and masks would not fit the pixels: fix "width"/"height" of '
                            f'image id {results.get("img_id")} in the annotation file, or the '
                            f'image')
        if results.get('seg_map_path'):
            _check_label_file(results['seg_map_path'], path, (w, h))
        return results


def check_finite_pixels(image: np.ndarray, path: str) -> None:
    """Refuse a floating-point image holding NaN or inf: a float TIFF read unchanged
    (``LoadImageFromFile(color_type='unchanged')``) reaches the model as it is, and one such
    pixel makes the loss, or the prediction, NaN. Decoded 8- and 16-bit images cannot hold one."""
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        count = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise DataError(f'{path} holds non-finite values (NaN or inf) in {count} pixel values: '
                        'replace them (e.g. with 0) or remove the image from the dataset')


def _rotated(size: tuple, loaded: tuple) -> str:
    return ' (an EXIF orientation tag rotates the image when it is read?)' \
        if tuple(size) == tuple(loaded)[::-1] else ''


def _check_label_file(label: str, image: str, size: tuple[int, int]) -> None:
    """Header checks of a label map (size, channels), and the values of a 16-bit one."""
    try:
        with Image.open(label) as lab:
            mode, lab_size = lab.mode, lab.size
            wide = np.asarray(lab) if mode in _WIDE and lab_size == size else None
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the operating system refused the file: its words (backbones/cli/failures.py)
        raise DataError(f'{label} is not a readable image: replace it or remove it from the '
                        f'dataset') from None
    if lab_size != size:
        raise DataError(f'label map {label} is {lab_size[0]}x{lab_size[1]} pixels but its image '
                        f'{image} is {size[0]}x{size[1]}{_rotated(lab_size, size)}: a label map '
                        f'needs its image\'s size; fix the pair or remove it from the dataset')
    if mode not in _ONE_CHANNEL:
        raise DataError(f'label map {label} is a {mode}-mode image: it must hold one class id per '
                        f'pixel (a single-channel 8-bit PNG), not colours; convert it')
    if wide is not None and wide.max(initial=0) > 255:
        value = int(wide.max())
        count = int(np.count_nonzero(wide > 255))
        raise DataError(f'label map {label} holds value {value} ({count} pixels above 255): mmseg '
                        f'reads label maps as 8 bits and would silently turn it into '
                        f'{value % 256}; label ids must be 0..255, fix the file')


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """After mmseg's ``LoadAnnotations``: label values within the dataset's classes.

    Every value must be below ``num_classes`` or be the ignore index 255 once loaded (with
    ``reduce_zero_label`` the file's 0 is ignored and 1..num_classes are the classes). A label map
    with no labelled pixel is logged once; the first ``all_ignored_limit`` label maps this process
    reads all being so is an error (a wrong ``reduce_zero_label`` or label encoding: training
    would see loss 0), while a few such maps among labelled ones are allowed.

    Args:
        num_classes: the number of classes of the dataset.
        dataset: the dataset's name, for messages.
        all_ignored_limit: how many entirely ignored label maps, read before any labelled one,
            are an error.
    """

    def __init__(self, num_classes: int, dataset: str = 'the dataset',
                 all_ignored_limit: int = 4):
        self.num_classes = num_classes
        self.dataset = dataset
        self.all_ignored_limit = all_ignored_limit
        self._labelled_seen = False
        self._ignored_count = 0
        self._ignored_logged: set[str] = set()

    def transform(self, results: dict) -> dict:
        gt = results['gt_seg_map']
        path = results.get('seg_map_path')
        reduced = bool(results.get('reduce_zero_label'))
        if gt.max(initial=0) >= self.num_classes:
            bad = (gt >= self.num_classes) & (gt != IGNORE_INDEX)
            if bad.any():
                value = int(gt[bad].max())
                shown, classes = (value + 1, f'1..{self.num_classes} (0 is ignored: '
                                  f'reduce_zero_label)') if reduced else \
                    (value, f'0..{self.num_classes - 1}')
                raise DataError(f'label map {path} holds value {shown} '
                                f'({int(np.count_nonzero(gt == value))} pixels) but '
                                f'{self.dataset} has {self.num_classes} classes: its label maps '
                                f'hold {classes} or {IGNORE_INDEX} (ignored); fix the file or '
                                f'remove it from the dataset')
        if gt.size and gt.min() == IGNORE_INDEX:
            self._all_ignored(path, reduced)
        else:
            self._labelled_seen = True
        return results

    def _all_ignored(self, path: str, reduced: bool) -> None:
        why = (f'0 (unlabelled, ignored with reduce_zero_label=True) or {IGNORE_INDEX}' if reduced
               else f'{IGNORE_INDEX}, the ignore index')
        self._ignored_count += 1
        if not self._labelled_seen and self._ignored_count >= self.all_ignored_limit:
            raise DataError(f'the first {self._ignored_count} label maps read (the last '
                            f'{path}) have no labelled pixel: every value is {why}, so training '
                            f'would learn nothing (loss 0); check reduce_zero_label and the '
                            f'label values of the dataset')
        if path not in self._ignored_logged:
            self._ignored_logged.add(path)
            print_log(f'label map {path} has no labelled pixel (every value is {why}): it adds '
                      f'nothing to the loss or the metric', logger='current',
                      level=logging.WARNING)


@TRANSFORMS.register_module()
class CheckedLoad(BaseTransform):
    """A loading step of a pipeline (``LoadImageFromFile``, ``LoadAnnotations``, any ``Load*``)
    whose failure on a damaged file is a ``DataError`` naming the file.

    Decoders fail on a damaged file in their own words, none naming it: OpenCV's
    ``!buf.empty()`` for an empty file, PIL's "image file is truncated", a malformed polygon in
    mmdet's mask decoding. Whatever the step raises is about the file it was reading; the
    operating system's refusals (an ``OSError`` with an errno) and memory pass on to the tools'
    one mapping (``backbones/cli/failures.py``), which names the file in the system's words.

    Args:
        transform: the loading step's config, built in the current scope (mmdet's or mmseg's
            ``LoadAnnotations``).
    """

    def __init__(self, transform: dict):
        self.step = TRANSFORMS.build(transform)
        self.annotations = str(transform.get('type', '')).startswith('LoadAnnotations')

    def transform(self, results: dict) -> dict:
        try:
            return self.step(results)
        except (UserError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001  (what a decoder raises on a damaged file)
            if isinstance(e, OSError) and e.errno is not None:
                raise
            error = e
        raise DataError(f'{self._reads(results)} cannot be read ({type(error).__name__}: '
                        f'{first_line(error)}): a damaged or truncated file? replace it or '
                        f'remove it from the dataset') from None

    def _reads(self, results: dict) -> str:
        if not self.annotations:
            return str(results.get('img_path'))
        if results.get('seg_map_path'):
            return str(results['seg_map_path'])
        return (f'the annotations of {results.get("img_path")} (image id '
                f'{results.get("img_id")} of the annotation file)')


def _type(step: object) -> str:
    """A step's type name; a ``CheckedLoad``'s is that of the step it runs."""
    if not isinstance(step, Mapping):
        return ''
    if step.get('type') == 'CheckedLoad':
        return _type(step.get('transform'))
    return str(step.get('type', ''))


def _checked_loads(pipeline: list) -> list:
    """``pipeline`` with each ``Load*`` step run by ``CheckedLoad``."""
    return [dict(type='CheckedLoad', transform=t)
            if isinstance(t, Mapping) and str(t.get('type', '')).startswith('Load') else t
            for t in pipeline]


def _insert_after(pipeline: list, suffix: str, step: dict) -> list:
    """``pipeline`` with ``step`` after its first step whose type ends with ``suffix``, unless
    it has a step of that type already."""
    types = [_type(t) for t in pipeline]
    if step['type'] in types:
        return pipeline
    for i, name in enumerate(types):
        if name.endswith(suffix):
            return [*pipeline[:i + 1], step, *pipeline[i + 1:]]
    return pipeline


def add_data_checks(cfg: Config, loaders: Iterable[str]) -> None:
    """Insert ``CheckImage`` (and ``CheckSegLabels`` for segmentation datasets) into the
    pipelines of the datasets of ``loaders``."""
    for loader in loaders:
        for ds in dataset_dicts((cfg.get(loader) or {}).get('dataset')):
            pipeline = ds.get('pipeline')
            if not isinstance(pipeline, list):
                continue
            pipeline = _insert_after(pipeline, 'LoadImageFromFile', dict(type='CheckImage'))
            if loads_annotations(ds) and 'seg_map_path' in (ds.get('data_prefix') or {}):
                dataset = built_lazily(cfg, ds)
                step = dict(type='CheckSegLabels', num_classes=len(dataset.metainfo['classes']),
                            dataset=type(dataset).__name__)
                pipeline = _insert_after(pipeline, 'LoadAnnotations', step)
            ds['pipeline'] = _checked_loads(pipeline)
