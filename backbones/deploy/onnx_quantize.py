"""Static int8 quantization of an exported segmentor or detector with ONNX Runtime.

The activation ranges come from real images passed through the config's own test pipeline and
data preprocessor, so calibration sees exactly what evaluation will feed the file (a detector's
unpadded, as ``onnx_runtime.run_detector_in_onnx_runtime`` feeds it).
"""
from __future__ import annotations

import os.path as osp
import tempfile

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from ..checks.data import IMAGE_SUFFIXES, image_files
from ..errors import DataError


def calibration_images(folder: str, num: int) -> list[str]:
    """``num`` images spread evenly over the sorted image files of ``folder`` (recursive)."""
    if not osp.isdir(folder):
        raise DataError(f'--calib-data {folder}: not a directory (give the training images, e.g. '
                        'data/ade/ADEChallengeData2016/images/training)')
    files = image_files(folder, recursive=True)
    if not files:
        raise DataError(f'--calib-data {folder}: no images ({", ".join(IMAGE_SUFFIXES)})')
    if num < 1:
        raise DataError(f'--calib-num must be at least 1, got {num}')
    picks = np.linspace(0, len(files) - 1, min(num, len(files))).round().astype(int)
    return [files[i] for i in dict.fromkeys(picks)]


def calibration_inputs(cfg: Config, data_preprocessor: nn.Module, images: list[str],
                       unpadded: bool = False) -> list[np.ndarray]:
    """Each image through the config's test pipeline (without annotations) and the model's data
    preprocessor: normalised 1x3xHxW float32 arrays, as the exported file takes them;
    ``unpadded``: cropped back to the resized image (``img_shape``), as a detector file takes
    them (it pads itself)."""
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    steps = [dict(step) for step in cfg.test_dataloader.dataset.pipeline
             if 'Annotations' not in step['type']]
    pipeline = Compose(steps)
    arrays = []
    for path in images:
        try:
            data = pipeline(dict(img_path=path))
        except Exception as e:  # noqa: BLE001  (an undecodable file is bad input)
            raise DataError(f'cannot read calibration image {path}: {e}') from None
        with torch.no_grad():
            batch = data_preprocessor(dict(inputs=[data['inputs']],
                                           data_samples=[data['data_samples']]), False)
        height, width = data['data_samples'].metainfo['img_shape'][:2] if unpadded else (None,) * 2
        arrays.append(np.ascontiguousarray(batch['inputs'][..., :height, :width].float().numpy()))
    return arrays


def random_calibration_inputs(data_preprocessor: nn.Module | None, shape: tuple[int, int],
                              num: int, seed: int = 1) -> list[np.ndarray]:
    """``num`` random uint8 images of ``shape`` through ``data_preprocessor`` (or ``(x - 127.5) /
    64`` without one): calibration for timing only, since the ranges are not real images'."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, *shape), generator=g, dtype=torch.uint8)
              for _ in range(num)]
    with torch.no_grad():
        return [(data_preprocessor(dict(inputs=[i]), False)['inputs'] if data_preprocessor
                 else (i[None] - 127.5) / 64).float().cpu().numpy() for i in images]


def quantize_int8(fp32_path: str, int8_path: str, inputs: list[np.ndarray],
                  op_types: tuple[str, ...] = ('Conv',)) -> None:
    """Write ``int8_path``: the ``op_types`` ops of ``fp32_path`` with int8 weights (per output
    channel) and int8 inputs (QDQ format, min/max ranges over ``inputs``).

    By default only convolutions, which hold nearly all of the arithmetic; the norms, GELUs,
    resizes and additions between them stay float32 (less rounding, and none of them is a
    matmul). In a detector NMS, RoIAlign, TopK and the box decoding stay float32 too, and so does
    the box head's Gemm: in int8 it cost the demo Mask R-CNN 0.4 bbox and 0.3 segm AP against
    convolutions alone (docs/deploy.md).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(inputs)

        def get_next(self) -> dict | None:
            image = next(self.left, None)
            return None if image is None else {'image': image}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = osp.join(tmp, 'prepared.onnx')
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8_path, Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1, y1, x2, y2 boxes."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clip(0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def matched_detections(reference, candidate, inputs: list[np.ndarray], score_thr: float = 0.3,
                       iou_thr: float = 0.5) -> tuple[int, int]:
    """How many of ``reference``'s detections scoring >= ``score_thr`` ``candidate`` finds again
    (two ONNX Runtime sessions of detector files): a detection of the same label, IoU >=
    ``iou_thr``, scoring >= ``score_thr`` / 2. Returns (found, total) over ``inputs``."""
    found = total = 0
    for image in inputs:
        (boxes, scores, labels, _), (cboxes, cscores, clabels, _) = (
            s.run(None, {'image': image}) for s in (reference, candidate))
        keep, ckeep = scores[0] >= score_thr, cscores[0] >= score_thr / 2
        iou = _iou(boxes[0][keep], cboxes[0][ckeep])
        same = labels[0][keep][:, None] == clabels[0][ckeep][None]
        found += int(((iou >= iou_thr) & same).any(1).sum())
        total += int(keep.sum())
    return found, total
