"""Check, before a run starts, that the datasets a config names exist, are not empty, that the
files they list are there (a listing and the COCO annotation file: no image is decoded), and
that the model's heads have as many classes as the datasets."""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from mmengine.config import Config

from ..errors import ConfigError, DataError, first_line

HOW_TO_GET = {
    'ADE20KDataset': 'download ADEChallengeData2016.zip from the MIT Scene Parsing site and unzip '
                     'it into data/ade/, or run `make demo-data` for the small demo set',
    'CocoDataset': 'download COCO 2017 (train2017, val2017, annotations) into data/coco/, or run '
                   '`make demo-data` for the small demo set',
}


LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def dataset_dicts(node) -> Iterator[Mapping]:
    """Every dataset dict with a ``data_root`` or ``ann_file``, through wrappers."""
    if isinstance(node, Mapping):
        if 'data_root' in node or 'ann_file' in node:
            yield node
        for key in ('dataset', 'datasets'):
            yield from dataset_dicts(node.get(key))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from dataset_dicts(item)


def _is_wrapper(ds: Mapping) -> bool:
    """A dataset dict whose datasets are checked one by one (RepeatDataset, ConcatDataset...),
    or one without a class to build."""
    return 'dataset' in ds or 'datasets' in ds or 'type' not in ds


def _prefix_folders(ds: Mapping) -> Iterator[str]:
    """The image/label folders of a dataset dict: ``data_root`` joined with each ``data_prefix``."""
    for sub in (ds.get('data_prefix') or {}).values():
        if isinstance(sub, str):
            yield osp.join(ds.get('data_root') or '', sub)


def _non_empty_dir(path: str) -> bool:
    return osp.isdir(path) and any(True for _ in os.scandir(path))


def check_data_roots(cfg: Config, loaders: Iterable[str]) -> None:
    """Raise ``DataError`` naming the missing path and how to get the data."""
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for ds in dataset_dicts(cfg[loader].get('dataset')):
            root = ds.get('data_root') or ''
            hint = HOW_TO_GET.get(str(ds.get('type')), 'check data_root in the config')
            where = f'{loader}.dataset.data_root'
            if root and not _non_empty_dir(root):
                state = 'is empty' if osp.isdir(root) else 'not found'
                raise DataError(f'dataset root {root} ({where}) {state}: {hint}; or point the '
                                f'config at your copy with --cfg-options {where}=PATH')
            ann = ds.get('ann_file')
            if ann and not osp.isfile(osp.join(root, ann)):
                raise DataError(f'annotation file {osp.join(root, ann)} ({loader}) not found: '
                                f'{hint}')
            for path in _prefix_folders(ds):
                if not _non_empty_dir(path):
                    raise DataError(f'{path} ({loader}) is missing or empty: {hint}')
            _check_listed_files(cfg, ds, loader)
        _check_evaluator_files(cfg, loader.replace('_dataloader', '_evaluator'))


def built_lazily(cfg: Config, ds: Mapping):
    """The dataset of config dict ``ds``, built without its pipeline and without reading its
    annotations (``lazy_init``): its class, joined paths and ``metainfo``."""
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    return DATASETS.build({**ds, 'pipeline': [], 'lazy_init': True})


# The heads whose num_classes counts the dataset's classes: mmseg's decode head (OCRNet: a list)
# and the box and mask heads of two-stage detectors (Cascade: a list per stage). Others are left
# alone: an RPN has 1, STDC's auxiliary detail head 2, HTC's semantic head counts COCO-stuff,
# Grounding DINO's bbox_head.num_classes is a text length.
_CLASS_HEADS = ('decode_head', 'roi_head.bbox_head', 'roi_head.mask_head')


def _class_counts(model: Mapping) -> Iterator[tuple[str, int]]:
    """(config key, value) of ``num_classes`` of each head of ``_CLASS_HEADS`` in ``model``."""
    for path in _CLASS_HEADS:
        node: object = model
        for part in path.split('.'):
            node = node.get(part) if isinstance(node, Mapping) else None
        heads = node if isinstance(node, (list, tuple)) else [node]
        for i, head in enumerate(heads):
            count = head.get('num_classes') if isinstance(head, Mapping) else None
            if isinstance(count, int):
                index = f'.{i}' if isinstance(node, (list, tuple)) else ''
                yield f'model.{path}{index}.num_classes', count


def check_num_classes(cfg: Config, loaders: Iterable[str]) -> None:
    """Raise ``ConfigError`` if a head's ``num_classes`` differs from the classes of a dataset
    it trains or is tested on: fewer fail in the loss mid-run, more predict classes that the
    metric never counts (a silently wrong result). Panoptic datasets count their
    ``thing_classes`` for detection heads; mmseg's 1-channel binary head may say 1 for 2."""
    model = cfg.get('model')
    heads = list(_class_counts(model)) if isinstance(model, Mapping) else []
    for loader in loaders if heads else ():
        for ds in dataset_dicts((cfg.get(loader) or {}).get('dataset')):
            if _is_wrapper(ds):
                continue
            meta = built_lazily(cfg, ds).metainfo
            wrong = []  # (key, its count, the dataset's)
            for key, count in heads:
                classes = meta.get('thing_classes') if 'roi_head' in key else None
                n = len(classes or meta.get('classes') or ())
                if n and count != n and not (count == 1 and n == 2 and 'roi_head' not in key):
                    wrong.append((key, count, n))
            if wrong:
                key, count, n = wrong[0]
                fixes = ' '.join(f'{k}={m}' for k, _, m in wrong)
                raise ConfigError(
                    f'{key} is {count} but {loader}.dataset ({ds["type"]}) has {n} classes: set '
                    f'--cfg-options {fixes}, or give the dataset metainfo=dict(classes=[...]) '
                    f'with {count} names')


def _is_a(dataset, name: str) -> bool:
    return any(c.__name__ == name for c in type(dataset).__mro__)


def loads_annotations(ds: Mapping) -> bool:
    """Whether the pipeline of dataset dict ``ds`` reads the labels (a ``LoadAnnotations`` step,
    also inside a wrapper such as ``TestTimeAug``)."""
    def found(node) -> bool:
        if isinstance(node, Mapping):
            return (str(node.get('type', '')).endswith('LoadAnnotations')
                    or any(found(v) for v in node.values()))
        return isinstance(node, (list, tuple)) and any(found(v) for v in node)
    return found(ds.get('pipeline'))


def _listing(folder: str, cache: dict[str, set[str]]) -> set[str]:
    if folder not in cache:
        cache[folder] = set(os.listdir(folder)) if osp.isdir(folder) else set()
    return cache[folder]


def _missing(paths: list[str]) -> list[str]:
    """The paths of ``paths`` that are not in their folder's listing (one listing per folder)."""
    cache: dict[str, set[str]] = {}
    return [p for p in paths if osp.basename(p) not in _listing(osp.dirname(p), cache)]


def _check_listed_files(cfg: Config, ds: Mapping, loader: str) -> None:
    """Every image of a segmentation dataset has its label map; a COCO annotation file's images
    exist and it has a usable annotation of the dataset's classes."""
    if _is_wrapper(ds):
        return
    dataset = built_lazily(cfg, ds)
    if _is_a(dataset, 'BaseSegDataset') and loads_annotations(ds):
        items = dataset.load_data_list()  # a listing of the image folder (or the split file)
        missing = set(_missing([d['seg_map_path'] for d in items]))
        if missing:
            first = next(d for d in items if d['seg_map_path'] in missing)
            raise DataError(f'{len(missing)} of the {len(items)} images of {loader} have no '
                            f'label map, e.g. {first["img_path"]} needs {first["seg_map_path"]}:'
                            f' add the label maps or remove those images')
    elif _is_a(dataset, 'CocoDataset') and dataset.ann_file:
        _check_coco_file(dataset, loader, loads_annotations(ds))


def _check_coco_file(dataset, loader: str, needs_annotations: bool) -> None:
    ann_file = dataset.ann_file
    with open(ann_file, 'rb') as f:
        try:
            coco = json.loads(f.read())
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
            where = (f'{e.msg} at line {e.lineno}, column {e.colno}'
                     if isinstance(e, json.JSONDecodeError) else first_line(e))
            raise DataError(f'{ann_file} ({loader}) does not parse as JSON ({where}): '
                            're-download or regenerate it') from None
    folder = dataset.data_prefix.get('img', '')
    try:
        images = {img['id']: img for img in coco.get('images', [])}
        missing = _missing([osp.join(folder, img['file_name']) for img in images.values()])
    except (AttributeError, KeyError, TypeError):
        raise DataError(f'{ann_file} ({loader}) is not a COCO annotation file (an "images" list '
                        f'of entries with "id" and "file_name"): re-download or regenerate '
                        f'it') from None
    if not images:
        raise DataError(f'{ann_file} ({loader}) lists no image: re-download or regenerate it')
    if missing:
        raise DataError(f'{len(missing)} of the {len(images)} images listed in {ann_file} are '
                        f'missing, e.g. {missing[0]}: download them, or point data_prefix.img of '
                        f'{loader}.dataset at the folder that holds them')
    if not needs_annotations:
        return
    classes = dataset.metainfo.get('classes') or ()
    ids = {c['id'] for c in coco.get('categories', []) if c.get('name') in classes}
    anns = coco.get('annotations') or []
    if not any(_usable(ann, images, ids) for ann in anns):
        in_class = sum(ann.get('category_id') in ids for ann in anns)
        raise DataError(f'{ann_file} ({loader}) has no usable annotation: {len(anns)} '
                        f'annotations, {in_class} of them of the {len(classes)} classes of '
                        f'{type(dataset).__name__}, none a non-crowd box inside its image; '
                        f'training and evaluation need some (check the file, or the classes in '
                        f'{loader}.dataset.metainfo)')


def _usable(ann: Mapping, images: Mapping, cat_ids: set) -> bool:
    """mmdet's ``CocoDataset.parse_data_info`` keeps ``ann`` as a box it trains on."""
    img = images.get(ann.get('image_id'))
    try:
        x, y, w, h = ann['bbox']
        inside = (min(x + w, img['width']) > max(x, 0) and min(y + h, img['height']) > max(y, 0))
        return (ann.get('category_id') in cat_ids and not ann.get('iscrowd') and inside
                and not ann.get('ignore') and ann.get('area', 0) > 0 and w >= 1 and h >= 1)
    except (KeyError, TypeError, ValueError):
        return False


def _check_evaluator_files(cfg: Config, name: str) -> None:
    """The ``ann_file`` of COCO-style metrics, which do not follow the loader's data_root."""
    evaluator = cfg.get(name)
    for i, metric in enumerate(evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]):
        ann = metric.get('ann_file') if isinstance(metric, Mapping) else None
        if ann and '://' not in ann and not osp.isfile(ann):
            key = name if metric is evaluator else f'{name}.{i}'
            raise DataError(f'annotation file {ann} ({key}.ann_file) not found: point it at your '
                            f'copy with --cfg-options {key}.ann_file=PATH')


def data_inputs(cfg: Config, loaders: Iterable[str]) -> list[str]:
    """The files and folders the datasets of ``loaders`` read (image and label folders, data
    roots, annotation files, evaluators' annotation files): what no output may replace."""
    paths = []
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for ds in dataset_dicts(cfg[loader].get('dataset')):
            root = ds.get('data_root') or ''
            folders = list(_prefix_folders(ds))
            paths += folders or ([root] if root else [])
            if ds.get('ann_file'):
                paths.append(osp.join(root, ds['ann_file']))
        evaluator = cfg.get(loader.replace('_dataloader', '_evaluator'))
        for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
            if isinstance(metric, Mapping) and isinstance(metric.get('ann_file'), str):
                paths.append(metric['ann_file'])
    return [p for p in paths if p and '://' not in p]


def image_names(cfg: Config, loader: str) -> list[str]:
    """The file names of the images of ``loader``'s datasets (a listing of their image folders,
    recursive as mmseg lists them): the names the tools derive their outputs' names from."""
    names = []
    if cfg.get(loader):
        for ds in dataset_dicts(cfg[loader].get('dataset')):
            prefix = (ds.get('data_prefix') or {})
            sub = prefix.get('img_path', prefix.get('img'))
            folder = osp.join(ds.get('data_root') or '', sub) if isinstance(sub, str) else None
            if folder and osp.isdir(folder):
                names += [osp.relpath(p, folder) for p in image_files(folder, recursive=True)]
    return names


def image_files(folder: str, recursive: bool = False) -> list[str]:
    """The sorted paths of the image files (by suffix, any case) in ``folder``."""
    walk = os.walk(folder) if recursive else [(folder, None, os.listdir(folder))]
    return sorted(osp.join(root, name) for root, _, names in walk for name in names
                  if name.lower().endswith(IMAGE_SUFFIXES))


@contextmanager
def readable_data_errors(cfg: Config):
    """Turn an annotation file that does not parse (an evaluator's, read by mmdet as the run
    starts) into a ``DataError``. A damaged image or label map is one line from the pipeline's
    ``CheckedLoad``; a DataLoader worker's error is mapped by ``backbones/cli/failures.py``."""
    try:
        yield
    except json.JSONDecodeError as e:
        anns = sorted({osp.join(ds.get('data_root') or '', ds['ann_file'])
                       for loader in LOADERS
                       for ds in dataset_dicts((cfg.get(loader) or {}).get('dataset'))
                       if ds.get('ann_file')})
        raise DataError(f'an annotation file does not parse as JSON ({e.msg} at line {e.lineno}, '
                        f'column {e.colno}); the config reads {", ".join(anns)}: re-download or '
                        f'regenerate it') from None
