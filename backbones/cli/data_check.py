"""Check, before a run starts, that the datasets a config names exist and are not empty."""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from mmengine.config import Config
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

HOW_TO_GET = {
    'ADE20KDataset': 'download ADEChallengeData2016.zip from the MIT Scene Parsing site and unzip '
                     'it into data/ade/, or run `make demo-data` for the small demo set',
    'CocoDataset': 'download COCO 2017 (train2017, val2017, annotations) into data/coco/, or run '
                   '`make demo-data` for the small demo set',
}


LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def _datasets(node) -> Iterator[Mapping]:
    """Every dataset dict with a ``data_root`` or ``ann_file``, through wrappers."""
    if isinstance(node, Mapping):
        if 'data_root' in node or 'ann_file' in node:
            yield node
        for key in ('dataset', 'datasets'):
            yield from _datasets(node.get(key))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _datasets(item)


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
        for ds in _datasets(cfg[loader].get('dataset')):
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
        _check_evaluator_files(cfg, loader.replace('_dataloader', '_evaluator'))


def _check_evaluator_files(cfg: Config, name: str) -> None:
    """The ``ann_file`` of COCO-style metrics, which do not follow the loader's data_root."""
    evaluator = cfg.get(name)
    for i, metric in enumerate(evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]):
        ann = metric.get('ann_file') if isinstance(metric, Mapping) else None
        if ann and '://' not in ann and not osp.isfile(ann):
            key = name if metric is evaluator else f'{name}.{i}'
            raise DataError(f'annotation file {ann} ({key}.ann_file) not found: point it at your '
                            f'copy with --cfg-options {key}.ann_file=PATH')


def image_files(folder: str, recursive: bool = False) -> list[str]:
    """The sorted paths of the image files (by suffix, any case) in ``folder``."""
    walk = os.walk(folder) if recursive else [(folder, None, os.listdir(folder))]
    return sorted(osp.join(root, name) for root, _, names in walk for name in names
                  if name.lower().endswith(IMAGE_SUFFIXES))


def _first_unreadable_file(cfg: Config) -> str | None:
    """The first file in the configured image and label folders whose header PIL cannot read."""
    for loader in LOADERS:
        for ds in _datasets((cfg.get(loader) or {}).get('dataset')):
            for folder in _prefix_folders(ds):
                for path in image_files(folder, recursive=True):
                    try:
                        Image.open(path).close()
                    except (OSError, ValueError):
                        return path
    return None


@contextmanager
def readable_data_errors(cfg: Config):
    """Turn an unreadable image or an annotation file that does not parse into a ``DataError``."""
    try:
        yield
    except json.JSONDecodeError as e:
        anns = sorted({osp.join(ds.get('data_root') or '', ds['ann_file'])
                       for loader in LOADERS
                       for ds in _datasets((cfg.get(loader) or {}).get('dataset'))
                       if ds.get('ann_file')})
        raise DataError(f'an annotation file does not parse as JSON ({e.msg} at line {e.lineno}, '
                        f'column {e.colno}); the config reads {", ".join(anns)}: re-download or '
                        f'regenerate it') from None
    except UnidentifiedImageError:  # a label map PIL cannot decode; the error names no file
        bad = _first_unreadable_file(cfg)
        if bad is None:
            raise
        raise DataError(f'{bad} is not a readable image: replace it or remove it from the '
                        f'dataset') from None
    except AssertionError as e:  # also re-raised from DataLoader workers, traceback in the text
        found = [line for line in str(e).splitlines() if 'failed to load image' in line]
        if not found:
            raise
        message = found[-1].split('AssertionError:')[-1].strip()
        raise DataError(f'{message}: the file is unreadable or not an image; replace it or '
                        f'remove it from the dataset') from None
