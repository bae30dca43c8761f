"""Export of segmentors, whole detectors, detector features and the backbone to ONNX with
dynamic sizes.

Every exported file takes one input, ``image``: float32 NCHW of any height and width (any batch
except for a whole detector: one image), already normalised as the config's data preprocessor
does it (channel order and mean/std are written into the file's metadata).
``tools/deployment/export.py`` checks each file against PyTorch in ONNX Runtime before it is kept.
"""
from __future__ import annotations

import copy
import json
import logging
import os.path as osp
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..inception_next import InceptionNeXt
from .fuse import fuse_inception_next
from .onnx_detector import (
    ONNX_TRANSLATIONS,
    OUTPUTS,
    OnnxDetector,
    bgr_to_rgb,
    check_image,
    compare_detections,
    detector_metadata,
    normalised,
    pytorch_detections,
)

# What a file holds; stored as metadata so that the runtime side knows what it is given.
KINDS = ('segmentor', 'detector', 'features', 'backbone')
META_PREFIX = 'inceptionnext_dense.'
DYNAMIC_AXES = {0: 'batch', 2: 'height', 3: 'width'}
# A whole detector's export example: height and width differ and every FPN level is larger than
# 1x1, so the exporter ties no size to another nor to 1
DETECTOR_EXAMPLE = (192, 256)


class ExportMismatchError(UserError, RuntimeError):
    """ONNX Runtime's outputs of an exported file differ from PyTorch's."""


def _bin_weights(size: torch.SymInt | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging matrix of adaptive pooling: bin i spans
    ``[floor(i * size / bins), ceil((i + 1) * size / bins))``, as PyTorch defines it."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode='floor')
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode='floor')
    pos = torch.arange(size, device=like.device)
    inside = ((pos[None] >= start[:, None]) & (pos[None] < end[:, None])).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


class ShapeFreeAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written as two matrix products whose matrices are computed from
    the input's size at run time.

    Exported as is, adaptive pooling bakes the example's bin boundaries into the graph: at another
    size the file computes wrong numbers or fails (UperNet's pyramid pooling). Equal to PyTorch's
    op up to float rounding for every input size.
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        self.output_size = (output_size if isinstance(output_size, (tuple, list))
                            else (output_size, output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins_h, bins_w = (s if s is not None else x.shape[d]
                          for s, d in zip(self.output_size, (-2, -1)))
        rows = _bin_weights(x.shape[-2], bins_h, x)
        cols = _bin_weights(x.shape[-1], bins_w, x)
        return rows @ x @ cols.transpose(0, 1)


class ShapeFreeUpsample(nn.Module):
    """mmseg's ``Upsample`` (scale-factor mode) with the output size kept symbolic.

    mmseg computes the size with ``int()``, which the exporter evaluates once, at the example's
    size: Semantic FPN's heads then resize to that fixed size at every input size.
    """

    def __init__(self, upsample: nn.Module):
        super().__init__()
        factor = upsample.scale_factor
        self.size = upsample.size
        self.scale_factor = int(factor) if float(factor or 0).is_integer() else factor
        self.mode, self.align_corners = upsample.mode, upsample.align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or [torch.sym_int(t * self.scale_factor) for t in x.shape[-2:]]
        return nn.functional.interpolate(x, size=size, mode=self.mode,
                                         align_corners=self.align_corners)


def _is_mmseg_upsample(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__name__ == 'Upsample' and cls.__module__.startswith('mmseg.')
            and not isinstance(module.scale_factor, tuple))


def make_shapes_dynamic(model: nn.Module) -> int:
    """Swap the modules that would freeze the example's sizes into an export for shape-free
    equivalents (in place): adaptive average pooling and mmseg's ``Upsample``. Returns how many
    were replaced."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d) or _is_mmseg_upsample(m)]
    for name, module in found:
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ShapeFreeUpsample(module) if _is_mmseg_upsample(module)
                else ShapeFreeAdaptiveAvgPool2d(module.output_size))
    return len(found)


class SegmentorLogits(nn.Module):
    """A segmentor's class scores at the input's size (mmseg's ``encode_decode`` in whole mode,
    before the resize to the original image and the arg-max)."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(image))
        return nn.functional.interpolate(logits, size=image.shape[2:], mode='bilinear',
                                         align_corners=self.segmentor.decode_head.align_corners)


class DetectorFeatures(nn.Module):
    """A detector's backbone + neck (FPN) maps: what its RPN and RoI heads read."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(image))


class BackboneFeatures(nn.Module):
    """The backbone's multi-scale maps."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(image))


def export_part(model: nn.Module, kind: str) -> nn.Module:
    """The module to export for ``kind``, made export-ready in place: backbone fused, NCHW inside
    (the layout is the runtime's business), size-freezing modules replaced."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    model.eval()
    backbone = model if kind == 'backbone' else model.backbone
    if isinstance(backbone, InceptionNeXt):
        # oneDNN's fused kernels are eager-only: export the modules
        fuse_inception_next(backbone, onednn=False)
    make_shapes_dynamic(model)
    part = {'segmentor': SegmentorLogits, 'detector': OnnxDetector, 'features': DetectorFeatures,
            'backbone': BackboneFeatures}[kind](model)
    return part.eval()


def pytorch_part(model: nn.Module, kind: str) -> nn.Module:
    """The unmodified ``model`` (the backbone itself for ``'backbone'``) seen through the
    interface of its exported ``kind``: what the file is checked against (a whole detector is
    checked against its own ``predict``: ``check_detector_against_pytorch``)."""
    wrap = {'segmentor': SegmentorLogits, 'detector': OnnxDetector, 'features': DetectorFeatures,
            'backbone': BackboneFeatures}[kind]
    return wrap(model).eval()


def file_metadata(model: nn.Module, kind: str, config: str, checkpoint: dict | None = None
                  ) -> dict:
    """What a user of the file needs: the input normalisation of ``model``'s data preprocessor
    (a whole model, also for ``'backbone'``), and what the outputs are."""
    pre = model.data_preprocessor
    meta = dict(kind=kind, config=osp.basename(config),
                mean=pre.mean.flatten().tolist(), std=pre.std.flatten().tolist(),
                bgr_to_rgb=bgr_to_rgb(pre),
                input='float32 NCHW: (image - mean) / std, channels in RGB order if bgr_to_rgb '
                      '(of a BGR image as loaded by mmcv), else as loaded')
    if kind == 'segmentor':
        meta['output'] = 'seg_logits: class scores at the input size; argmax over dim 1'
        meta['num_classes'] = int(model.decode_head.out_channels)
    elif kind == 'detector':
        meta.update(detector_metadata(model))
    else:
        meta['output'] = 'feat0, feat1, ...: NCHW feature maps, strides ascending'
    if kind == 'features':
        meta['pad_size_divisor'] = int(getattr(pre, 'pad_size_divisor', 1))
    dataset_meta = (checkpoint or {}).get('meta', {}).get('dataset_meta')
    if isinstance(dataset_meta, dict):  # class names and palette, for tools/infer.py
        meta['dataset_meta'] = {k.lower(): v for k, v in dataset_meta.items()}
    return meta


def output_names(part: nn.Module, sample: torch.Tensor) -> list[str]:
    """``seg_logits`` for a segmentor, ``boxes, scores, labels, masks`` for a whole detector,
    else ``feat0``, ``feat1``, ... (one per returned map)."""
    if isinstance(part, SegmentorLogits):
        return ['seg_logits']
    if isinstance(part, OnnxDetector):
        return list(OUTPUTS)
    with torch.no_grad():
        return [f'feat{i}' for i in range(len(part(sample)))]


@contextmanager
def _logger_level(logger: logging.Logger, level: int):
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def export_onnx(part: nn.Module, sample: torch.Tensor, path: str, metadata: dict) -> None:
    """Export ``part`` with dynamic batch (one image for a whole detector), height and width
    and write ``metadata`` into the file (keys prefixed ``inceptionnext_dense.``, values JSON)."""
    import onnx
    names = output_names(part, sample)
    axes = {a: n for a, n in DYNAMIC_AXES.items() if a or not isinstance(part, OnnxDetector)}
    # onnx_ir logs "Attribute type is ambiguous because it is an empty sequence" for the empty
    # attribute lists of the detector's graph (it picks INTS, the right type): not the user's
    ir_logger = logging.getLogger('onnx_ir')
    with torch.no_grad(), _logger_level(ir_logger, logging.ERROR):
        program = torch.onnx.export(
            part, (sample,), dynamo=True, input_names=['image'], output_names=names,
            dynamic_shapes=(axes,), optimize=True, verbose=False,
            custom_translation_table=ONNX_TRANSLATIONS if isinstance(part, OnnxDetector) else None)
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, json.dumps(value, default=str)
    onnx.save(proto, path)


def read_metadata(session) -> dict:
    """The ``inceptionnext_dense.`` metadata of an ONNX Runtime session's file, decoded."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: json.loads(v) for k, v in props.items()
            if k.startswith(META_PREFIX)}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: one number per output, scale-free."""
    return float(np.abs(ours - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def check_against_pytorch(path: str, part: nn.Module, shapes: Sequence[tuple[int, int, int]],
                          tol: float = 1e-4, seed: int = 0, name: str | None = None
                          ) -> list[float]:
    """Run ``path`` in ONNX Runtime and ``part`` in PyTorch on random images of each
    ``(batch, height, width)``; raise ``ExportMismatchError`` above ``tol``.

    Returns the worst relative error over the outputs, per shape. ``name``: the file as the
    messages call it (default ``path``).
    """
    name = name or path
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for batch, height, width in shapes:
        image = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            ref = part(image)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        try:
            outs = session.run(None, {'image': image.numpy()})
        except Exception as e:  # noqa: BLE001  (a runtime failure at this size is a mismatch)
            raise ExportMismatchError(
                f'{name} fails in ONNX Runtime at {batch}x3x{height}x{width}: '
                f'{str(e).strip().splitlines()[0][:300]}') from None
        shape_errors = []
        for output, out, r in zip((o.name for o in session.get_outputs()), outs, refs):
            if tuple(out.shape) != tuple(r.shape):
                raise ExportMismatchError(
                    f'{name}: output {output} is {tuple(out.shape)} in ONNX Runtime but '
                    f'{tuple(r.shape)} in PyTorch at {batch}x3x{height}x{width}')
            shape_errors.append(relative_error(out, r.numpy()))
        worst = max(shape_errors)
        if not worst <= tol:
            raise ExportMismatchError(
                f'{name} differs from PyTorch at {batch}x3x{height}x{width}: relative error '
                f'{worst:.2e} > {tol:.0e}')
        errors.append(worst)
    return errors


def check_detector_against_pytorch(path: str, detector: nn.Module,
                                   shapes: Sequence[tuple[int, int, int]], seed: int = 0,
                                   name: str | None = None) -> list[dict]:
    """Run a whole-detector file in ONNX Runtime and ``detector``'s own ``predict`` (through its
    data preprocessor, ``rescale=False``) on one image of flat colour patches of each size;
    raise ``ExportMismatchError`` unless every detection has its partner
    (``compare_detections``). Returns the comparison's numbers per shape."""
    import onnxruntime as ort
    name = name or path
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    cfg = detector.test_cfg.rcnn
    results = []
    for batch, height, width in shapes:
        if batch != 1:
            raise UserError(f'{name}: a whole detector takes one image; check at 1x{height}x'
                            f'{width}, not {batch}x{height}x{width}')
        bgr = check_image(height, width, generator)
        try:
            found = session.run(None, {'image': normalised(detector, bgr).numpy()})
        except Exception as e:  # noqa: BLE001  (a runtime failure at this size is a mismatch)
            raise ExportMismatchError(
                f'{name} fails in ONNX Runtime at 1x3x{height}x{width}: '
                f'{str(e).strip().splitlines()[0][:300]}') from None
        result = compare_detections(found, pytorch_detections(detector, bgr),
                                    float(cfg.score_thr), float(cfg.mask_thr_binary))
        if result['problem']:
            raise ExportMismatchError(f'{name} differs from PyTorch at 1x3x{height}x{width}: '
                                      f'{result["problem"]}')
        results.append(result)
    return results


def export_checked(model: nn.Module, kind: str, path: str, shapes: Sequence[tuple[int, int, int]],
                   metadata: dict, name: str | None = None) -> list[float] | list[dict]:
    """Export ``kind`` of a copy of ``model`` (the backbone itself for ``'backbone'``) to
    ``path``, then check the file against the unmodified ``model`` at each ``(batch, height,
    width)`` of ``shapes`` (``check_against_pytorch``; ``check_detector_against_pytorch`` for a
    whole detector); returns what the check returns. The export example has the first shape's
    size and at least 2 images (a batch of 1 would freeze the batch); a detector's is one image
    of ``DETECTOR_EXAMPLE``."""
    batch, height, width = shapes[0]
    part = export_part(copy.deepcopy(model), kind)
    detector = kind == 'detector'
    sample = (torch.randn(1, 3, *DETECTOR_EXAMPLE) if detector
              else torch.randn(max(batch, 2), 3, height, width))
    export_onnx(part, sample, path, metadata)
    if detector:
        return check_detector_against_pytorch(path, model, shapes, name=name)
    return check_against_pytorch(path, pytorch_part(model, kind), shapes, name=name)
