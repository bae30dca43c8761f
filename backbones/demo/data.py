"""A small synthetic demo set in the real ADE20K and COCO on-disk formats.

``make_ade20k`` writes ``ADEChallengeData2016/{images,annotations}/{training,validation}`` (JPEG
images, single-channel PNG label maps holding real ADE20K class ids, 0 = "other"), read by mmseg's
``ADE20KDataset`` with ``reduce_zero_label=True``. ``make_coco`` writes ``train2017/``,
``val2017/`` and ``annotations/instances_{train,val}2017.json`` with all 80 real COCO categories
(so mmdet's ``CocoDataset`` maps the ids it uses to the usual contiguous labels), read by
``CocoDataset``. Every class has its own colour and texture (jittered per image), so a small
network trained from scratch on a CPU for a few minutes learns it.

Generation is deterministic: sample ``i`` of a split depends only on ``(seed, split, i)``, and the
same arguments give byte-identical files. A set is written into directories it owns (marked by
``.demo_data``, written first) and finished by ``.complete`` (written last, holding the
arguments), which ``ensure_demo_data`` checks.
"""
from __future__ import annotations

import inspect
import json
import os
import os.path as osp
import shutil
from collections.abc import Callable

import cv2
import numpy as np
from pycocotools import mask as mask_utils

DEMO_ROOT = 'data/demo'
VERSION = 1
OWNER_FILE = '.demo_data'
MARKER_FILE = '.complete'

# Real ADE20K ids (1-based; 0 = "other"). ``reduce_zero_label=True`` maps id to id - 1.
ADE_BACKGROUND = {'upper': {'wall': 1, 'sky': 3}, 'lower': {'floor': 4, 'grass': 10}}
ADE_OBJECTS = {'tree': 5, 'person': 13, 'car': 21}
ADE_CLASSES = {'wall': 1, 'sky': 3, 'floor': 4, 'tree': 5, 'grass': 10, 'person': 13, 'car': 21}

# The 80 COCO categories: (id, name, supercategory), as in instances_*2017.json.
_COCO_SUPER = [
    ('person', 'person'), ('vehicle', 'bicycle car motorcycle airplane bus train truck boat'),
    ('outdoor', 'traffic_light fire_hydrant stop_sign parking_meter bench'),
    ('animal', 'bird cat dog horse sheep cow elephant bear zebra giraffe'),
    ('accessory', 'backpack umbrella handbag tie suitcase'),
    ('sports', 'frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard '
               'surfboard tennis_racket'),
    ('kitchen', 'bottle wine_glass cup fork knife spoon bowl'),
    ('food', 'banana apple sandwich orange broccoli carrot hot_dog pizza donut cake'),
    ('furniture', 'chair couch potted_plant bed dining_table toilet'),
    ('electronic', 'tv laptop mouse remote keyboard cell_phone'),
    ('appliance', 'microwave oven toaster sink refrigerator'),
    ('indoor', 'book clock vase scissors teddy_bear hair_drier toothbrush'),
]
_COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORIES: list[dict] = [
    {'id': cid, 'name': name.replace('_', ' '), 'supercategory': sup}
    for cid, (sup, name) in zip(
        (i for i in range(1, 91) if i not in _COCO_UNUSED_IDS),
        ((sup, name) for sup, names in _COCO_SUPER for name in names.split()))
]
COCO_USED = {'sports ball': 37, 'kite': 38, 'tv': 72}

Texture = Callable[[np.random.Generator, int, int, float], np.ndarray]


# ----------------------------------------------------------------------------- textures
def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float],
            amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _flat(h: int, w: int, rgb: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy()


def _noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth noise in about [-1, 1] with features of ``scale`` pixels."""
    scale = max(1, round(scale))
    gh, gw = h // scale + 2, w // scale + 2
    grid = rng.random((gh, gw), dtype=np.float32) * 2 - 1
    if scale == 1:
        return grid[:h, :w]
    up = cv2.resize(grid, (gw * scale, gh * scale), interpolation=cv2.INTER_CUBIC)
    oy, ox = rng.integers(0, scale, 2)
    return up[oy:oy + h, ox:ox + w]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _tex_sky(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Blue, brightening downwards, almost smooth."""
    yy, _ = _grid(h, w)
    img = _flat(h, w, _jitter(rng, (100, 160, 230), 15))
    img += (yy / h * rng.uniform(30, 60))[..., None] * np.float32([1.0, 0.8, 0.3])
    return img + 6 * _noise(rng, h, w, 32 * s)[..., None]


def _tex_wall(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Beige with vertical stripes (wallpaper)."""
    _, xx = _grid(h, w)
    period = rng.uniform(6, 12) * s
    stripes = np.where(((xx + rng.uniform(0, period)) % period) < period / 2, 1.0, -1.0)
    img = _flat(h, w, _jitter(rng, (205, 188, 160), 20))
    img += (rng.uniform(15, 28) * stripes)[..., None]
    return img + 5 * _noise(rng, h, w, 2 * s)[..., None]


def _tex_floor(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Tan and dark brown checkerboard tiles."""
    yy, xx = _grid(h, w)
    cell = rng.uniform(8, 16) * s
    checker = ((xx + rng.uniform(0, cell)) // cell + (yy + rng.uniform(0, cell)) // cell) % 2
    light, dark = _jitter(rng, (175, 135, 95), 15), _jitter(rng, (105, 72, 45), 12)
    img = np.where(checker[..., None] > 0, light, dark).astype(np.float32)
    return img + 5 * _noise(rng, h, w, 3 * s)[..., None]


def _tex_grass(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Mid green with fine, strong noise."""
    img = _flat(h, w, _jitter(rng, (80, 155, 55), 18))
    return img * (1 + rng.uniform(0.3, 0.45) * _noise(rng, h, w, rng.uniform(1, 2) * s)[..., None])


def _tex_canopy(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Dark green with coarse blotches."""
    img = _flat(h, w, _jitter(rng, (35, 92, 40), 12))
    return img * (1 + 0.5 * _noise(rng, h, w, rng.uniform(4, 8) * s)[..., None])


def _tex_shirt(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Red with horizontal dark stripes."""
    yy, _ = _grid(h, w)
    period = rng.uniform(4, 8) * s
    dark = ((yy + rng.uniform(0, period)) % period) < period / 2
    img = _flat(h, w, _jitter(rng, (205, 45, 55), 25))
    return img * np.where(dark, np.float32(0.6), np.float32(1.0))[..., None]


def _tex_car(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Yellow paint with a horizontal shine."""
    yy, _ = _grid(h, w)
    img = _flat(h, w, _jitter(rng, (235, 195, 35), 20))
    return img * (0.8 + 0.25 * np.cos(yy / rng.uniform(4, 8) / s))[..., None]


def _solid(rgb: tuple[float, float, float], amount: float = 15.0) -> Texture:
    def tex(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
        return _flat(h, w, _jitter(rng, rgb, amount)) + 4 * _noise(rng, h, w, 2 * s)[..., None]
    return tex


_ADE_TEXTURES: dict[str, Texture] = {'wall': _tex_wall, 'sky': _tex_sky, 'floor': _tex_floor,
                                     'grass': _tex_grass}


# ----------------------------------------------------------------------------- ADE20K
def _ade_object(rng: np.random.Generator, name: str, size: int, horizon: float,
                s: float) -> tuple[np.ndarray, list[Texture]]:
    """Part map (0 outside, k for part k) and the texture of each part of one object."""
    parts = np.zeros((size, size), np.uint8)
    bottom = rng.uniform(horizon + 0.08 * size, size - 1)
    cx = rng.uniform(0.1, 0.9) * size

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x), round(y)

    if name == 'tree':
        r = rng.uniform(12, 26) * s
        trunk_h, trunk_w = rng.uniform(0.6, 1.2) * r, max(2.0, rng.uniform(0.15, 0.3) * r)
        cy = bottom - trunk_h - 0.6 * r
        cv2.rectangle(parts, pt(cx - trunk_w / 2, cy), pt(cx + trunk_w / 2, bottom), 2, -1)
        for _ in range(rng.integers(3, 6)):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5) * r
            cv2.circle(parts, pt(cx + d * np.cos(a), cy + d * np.sin(a)),
                       round(rng.uniform(0.55, 0.8) * r), 1, -1)
        return parts, [_tex_canopy, _solid((95, 65, 35))]
    if name == 'person':
        height = rng.uniform(34, 64) * s
        head, body_w = 0.12 * height, rng.uniform(0.22, 0.3) * height
        top, hip = bottom - height, bottom - 0.45 * height
        cv2.rectangle(parts, pt(cx - body_w * 0.4, hip), pt(cx + body_w * 0.4, bottom), 2, -1)
        cv2.ellipse(parts, pt(cx, (top + 2 * head + hip) / 2),
                    pt(body_w / 2, (hip - top - 2 * head) / 2 + 1), 0, 0, 360, 1, -1)
        cv2.circle(parts, pt(cx, top + head), max(2, round(head)), 3, -1)
        return parts, [_tex_shirt, _solid((40, 45, 95)), _solid((225, 185, 150))]
    # car: body, cabin with windows, two wheels
    length = rng.uniform(32, 60) * s
    body_h, wheel = rng.uniform(0.22, 0.3) * length, rng.uniform(0.1, 0.14) * length
    x0, y1 = cx - length / 2, bottom - wheel
    y0 = y1 - body_h
    cabin = np.array([[x0 + 0.2 * length, y0], [x0 + 0.32 * length, y0 - 0.6 * body_h],
                      [x0 + 0.7 * length, y0 - 0.6 * body_h], [x0 + 0.82 * length, y0]])
    cv2.fillPoly(parts, [np.round(cabin).astype(np.int32)], 1)
    inner = cabin + np.array([[0.05, 0], [0.03, 0.15], [-0.03, 0.15], [-0.05, 0]]) * \
        np.array([length, body_h])
    inner[:, 1] = np.minimum(inner[:, 1], y0 - 1)
    cv2.fillPoly(parts, [np.round(inner).astype(np.int32)], 2)
    cv2.rectangle(parts, pt(x0, y0), pt(x0 + length, y1), 1, -1)
    for fx in (0.22, 0.78):
        cv2.circle(parts, pt(x0 + fx * length, y1), max(2, round(wheel)), 3, -1)
    return parts, [_tex_car, _solid((165, 205, 225)), _solid((25, 25, 25), 8)]


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global brightness/contrast jitter and sensor noise, to uint8 BGR."""
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    img = img + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)[..., ::-1]


def _ade_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (BGR image, label map) pair."""
    s = size / 128
    _, xx = _grid(size, size)
    horizon = rng.uniform(0.3, 0.65) * size
    line = (horizon + rng.uniform(-0.15, 0.15) * (xx - size / 2)
            + rng.uniform(0, 3) * s * np.sin(xx / (rng.uniform(6, 20) * s) + rng.uniform(0, 6)))
    upper = rng.choice(sorted(ADE_BACKGROUND['upper']))
    lower = rng.choice(sorted(ADE_BACKGROUND['lower']))
    above = _grid(size, size)[0] < line
    img = np.where(above[..., None], _ADE_TEXTURES[upper](rng, size, size, s),
                   _ADE_TEXTURES[lower](rng, size, size, s))
    label = np.where(above, ADE_CLASSES[upper], ADE_CLASSES[lower]).astype(np.uint8)
    names = sorted(ADE_OBJECTS)
    for _ in range(rng.integers(1, 5)):
        name = names[rng.integers(len(names))]
        parts, textures = _ade_object(rng, name, size, float(horizon), s)
        for k, tex in enumerate(textures, 1):
            m = parts == k
            if m.any():
                img[m] = tex(rng, size, size, s)[m]
        mask = (parts > 0).astype(np.uint8)
        label[mask > 0] = ADE_OBJECTS[name]
        # a thin unlabelled ("other", id 0) outline, as around objects in the real maps
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outline = np.zeros_like(mask)
        cv2.drawContours(outline, contours, -1, 1, 1)
        img[outline > 0] *= 0.45
        label[outline > 0] = 0
    return _finish(rng, img), label


# ----------------------------------------------------------------------------- COCO
def _polygon(rng: np.random.Generator, name: str, s: float) -> np.ndarray:
    """The outline of one object, centred on the origin, in pixels (N x 2, float)."""
    if name == 'sports ball':
        r = rng.uniform(10, 30) * s
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([r * np.cos(a), r * rng.uniform(0.9, 1.1) * np.sin(a)], 1)
    if name == 'kite':
        r = rng.uniform(14, 34) * s
        a = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-.3, .3, 3)
        d = r * rng.uniform(0.8, 1.0, 3)
        return np.stack([d * np.cos(a), d * np.sin(a)], 1)
    w = rng.uniform(30, 60) * s
    h = w * rng.uniform(0.6, 0.8)
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2


def _coco_texture(rng: np.random.Generator, name: str, poly: np.ndarray,
                  size: int, s: float) -> np.ndarray:
    yy, xx = _grid(size, size)
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    if name == 'sports ball':  # orange with a highlight
        hx, hy = x0 + 0.35 * (x1 - x0), y0 + 0.35 * (y1 - y0)
        d = np.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) / max(x1 - x0, 1.0)
        img = _flat(size, size, _jitter(rng, (240, 125, 25), 18))
        return img * np.clip(1.3 - 0.9 * d, 0.55, 1.3)[..., None]
    if name == 'kite':  # magenta with diagonal pink stripes
        period = rng.uniform(5, 10) * s
        stripe = ((xx + yy + rng.uniform(0, period)) % period) < period / 2
        a, b = _jitter(rng, (205, 40, 185), 20), _jitter(rng, (250, 170, 230), 12)
        return np.where(stripe[..., None], a, b).astype(np.float32)
    # tv: dark frame around a blue screen with scanlines
    border = max(2.0, 0.08 * (x1 - x0))
    screen = (xx > x0 + border) & (xx < x1 - border) & (yy > y0 + border) & (yy < y1 - border)
    blue = _flat(size, size, _jitter(rng, (65, 125, 235), 20))
    blue *= np.where(yy % 2 < 1, np.float32(0.82), np.float32(1.0))[..., None]
    return np.where(screen[..., None], blue, _jitter(rng, (38, 38, 42), 8)).astype(np.float32)


def _coco_background(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Two muted colours blended by smooth noise, a gradient and fine grain."""
    yy, xx = _grid(size, size)
    c1 = rng.uniform(90, 170) + rng.uniform(-20, 20, 3)
    c2 = rng.uniform(90, 170) + rng.uniform(-20, 20, 3)
    t = np.clip(0.5 + 0.8 * _noise(rng, size, size, rng.uniform(12, 32) * s), 0, 1)[..., None]
    img = (c1 * t + c2 * (1 - t)).astype(np.float32)
    gx, gy = rng.uniform(-20, 20, 2)
    img += ((xx / size - 0.5) * gx + (yy / size - 0.5) * gy)[..., None]
    return img + 8 * _noise(rng, size, size, rng.uniform(1, 3) * s)[..., None]


def _coco_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One BGR image and its objects (category_id, polygon, bbox, area), not overlapping."""
    s = size / 128
    img = _coco_background(rng, size, s)
    names = sorted(COCO_USED)
    boxes: list[np.ndarray] = []
    objects = []
    for _ in range(rng.integers(1, 5)):
        name = names[rng.integers(len(names))]
        shape = _polygon(rng, name, s)
        lo, hi = shape.min(0), shape.max(0)
        for _ in range(50):  # rejection-sample a place that keeps 2 px from the other boxes
            off = rng.uniform(1 - lo, size - 1 - hi)
            box = np.concatenate([lo + off, hi + off])
            if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2
                   or box[3] < b[1] - 2 for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        poly = np.round(shape + off, 2)
        # rasterised as mmdet's LoadAnnotations does it, so image and mask agree exactly
        rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], size, size)
        m = mask_utils.decode(mask_utils.merge(rle)) > 0
        img[m] = _coco_texture(rng, name, poly, size, s)[m]
        x, y = poly[:, 0], poly[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        (bx0, by0), (bx1, by1) = poly.min(0), poly.max(0)
        objects.append({'category_id': COCO_USED[name],
                        'segmentation': [[round(float(v), 2) for v in poly.reshape(-1)]],
                        'area': round(area, 2),
                        'bbox': [round(float(v), 2) for v in (bx0, by0, bx1 - bx0, by1 - by0)]})
    return _finish(rng, img), objects


# ----------------------------------------------------------------------------- writing
def _imwrite(path: str, img: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(path, img, params or []):
        raise OSError(f'could not write {path}')


def _claim(root: str, subdirs: list[str]) -> None:
    """Take ``subdirs`` of ``root`` over for a fresh set; refuse ones this module did not write."""
    owner = osp.join(root, OWNER_FILE)
    paths = [osp.join(root, d) for d in subdirs]
    if not osp.isfile(owner) and any(osp.isdir(p) and os.listdir(p) for p in paths):
        raise FileExistsError(f'{root} holds data that the demo generator did not write '
                              f'(no {OWNER_FILE}); refusing to overwrite it')
    os.makedirs(root, exist_ok=True)
    if osp.exists(osp.join(root, MARKER_FILE)):
        os.remove(osp.join(root, MARKER_FILE))
    with open(owner, 'w') as f:
        f.write('written by backbones.demo.data; safe to delete\n')
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def _complete(root: str, summary: dict) -> None:
    with open(osp.join(root, MARKER_FILE), 'w') as f:
        json.dump(_marker(summary), f, sort_keys=True)


def _marker(summary: dict) -> dict:
    keys = ('kind', 'version', 'n_train', 'n_val', 'size', 'seed')
    return {k: summary[k] for k in keys}


def make_ade20k(root: str, n_train: int = 160, n_val: int = 40, size: int = 128,
                seed: int = 0) -> dict:
    """Write ``root/ADEChallengeData2016`` (the ``data_root`` of ``ADE20KDataset``).

    Returns a summary: ``data_root``, the split sizes, ``classes`` (name -> ADE20K id) and
    ``ignore_fraction``, the share of label-0 pixels (ignored after ``reduce_zero_label``).
    """
    _claim(root, ['ADEChallengeData2016'])
    data_root = osp.join(root, 'ADEChallengeData2016')
    n_ignore = 0
    for code, (split, prefix, n) in enumerate([('training', 'train', n_train),
                                               ('validation', 'val', n_val)]):
        img_dir = osp.join(data_root, 'images', split)
        ann_dir = osp.join(data_root, 'annotations', split)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for i in range(1, n + 1):
            img, label = _ade_sample(np.random.default_rng([seed, code, i]), size)
            n_ignore += int((label == 0).sum())
            stem = f'ADE_{prefix}_{i:08d}'
            _imwrite(osp.join(img_dir, stem + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            _imwrite(osp.join(ann_dir, stem + '.png'), label)
    summary = {'kind': 'ade20k', 'version': VERSION, 'root': root, 'data_root': data_root,
               'n_train': n_train, 'n_val': n_val, 'size': size, 'seed': seed,
               'classes': dict(ADE_CLASSES),
               'ignore_fraction': n_ignore / max(1, (n_train + n_val) * size * size)}
    _complete(root, summary)
    return summary


def make_coco(root: str, n_train: int = 200, n_val: int = 50, size: int = 128,
              seed: int = 0) -> dict:
    """Write ``root/{train2017,val2017}`` and ``root/annotations/instances_*2017.json``.

    Returns a summary: the annotation files, the split sizes, ``instances`` per split and
    ``categories`` (name -> COCO id) of the classes drawn.
    """
    _claim(root, ['train2017', 'val2017', 'annotations'])
    os.makedirs(osp.join(root, 'annotations'))
    summary = {'kind': 'coco', 'version': VERSION, 'root': root, 'n_train': n_train,
               'n_val': n_val, 'size': size, 'seed': seed, 'categories': dict(COCO_USED),
               'instances': {}}
    for code, (split, n, first_id) in enumerate([('train', n_train, 1),
                                                 ('val', n_val, 1_000_001)]):
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir)
        images, annotations = [], []
        for i in range(n):
            img, objects = _coco_sample(np.random.default_rng([seed, code, i + 1]), size)
            img_id = first_id + i
            file_name = f'{img_id:012d}.jpg'
            _imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({'id': img_id, 'file_name': file_name, 'height': size, 'width': size,
                           'license': 0})
            for obj in objects:
                annotations.append({'id': first_id + len(annotations), 'image_id': img_id,
                                    'iscrowd': 0, **obj})
        ann = {'info': {'description': 'InceptionNeXt-Dense synthetic demo set',
                        'version': str(VERSION), 'year': 2017},
               'licenses': [{'id': 0, 'name': 'CC0', 'url': ''}],
               'images': images, 'annotations': annotations, 'categories': COCO_CATEGORIES}
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        with open(ann_file, 'w') as f:
            json.dump(ann, f, separators=(',', ':'))
        summary[f'{split}_ann'] = ann_file
        summary['instances'][split] = len(annotations)
    _complete(root, summary)
    return summary


def _is_complete(root: str, expected: dict) -> bool:
    try:
        with open(osp.join(root, MARKER_FILE)) as f:
            return json.load(f) == expected
    except (OSError, ValueError):
        return False


def _default_marker(kind: str, make: Callable[..., dict]) -> dict:
    defaults = {k: p.default for k, p in inspect.signature(make).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return _marker({'kind': kind, 'version': VERSION, **defaults})


def ensure_demo_data(root: str = DEMO_ROOT) -> tuple[str, str]:
    """Generate the default sets into ``root/ade`` and ``root/coco`` unless already complete.

    Returns ``(ade_data_root, coco_root)``: the ``.../ade/ADEChallengeData2016`` directory (the
    ``data_root`` of ``ADE20KDataset``) and the COCO root holding ``train2017/``, ``val2017/`` and
    ``annotations/`` (the ``data_root`` of ``CocoDataset``).
    """
    ade, coco = osp.join(root, 'ade'), osp.join(root, 'coco')
    if not _is_complete(ade, _default_marker('ade20k', make_ade20k)):
        make_ade20k(ade)
    if not _is_complete(coco, _default_marker('coco', make_coco)):
        make_coco(coco)
    return osp.join(ade, 'ADEChallengeData2016'), coco
