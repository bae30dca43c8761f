"""mmcv's ``nms`` and ``RoIAlign`` under CPU bfloat16 autocast (``--amp`` without CUDA).

mmcv's CPU kernels take float32 only, so a detector under bf16 autocast stops in the RPN's NMS
("expected scalar type Float but found BFloat16") and then in RoIAlign. ``enable()`` makes both
compute in float32 for CPU inputs of other dtypes and return the caller's dtype; float32 and CUDA
inputs take mmcv's path unchanged. Predictions leave ``float32_predictions(model)`` in float32,
as the metrics read them with numpy, which has no bfloat16.
"""
from __future__ import annotations

import functools
import sys

import torch


def _nms_in_float32(nms):
    @functools.wraps(nms)
    def wrapper(boxes: torch.Tensor, scores: torch.Tensor, *args, **kwargs):
        if boxes.device.type == 'cpu' and boxes.dtype != torch.float32:
            dets, keep = nms(boxes.float(), scores.float(), *args, **kwargs)
            return dets.to(boxes.dtype), keep
        return nms(boxes, scores, *args, **kwargs)
    wrapper._float32_on_cpu = True
    return wrapper


def _roi_align_in_float32(forward):
    @functools.wraps(forward)
    def wrapper(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if input.device.type == 'cpu' and input.dtype != torch.float32:
            return forward(self, input.float(), rois.float()).to(input.dtype)
        return forward(self, input, rois)
    wrapper._float32_on_cpu = True
    return wrapper


def enable() -> None:
    """Patch mmcv once; ``batched_nms`` looks ``nms`` up in its module, so it follows."""
    from mmcv.ops import RoIAlign
    nms_module = sys.modules['mmcv.ops.nms']  # `mmcv.ops.nms` the attribute is the function
    if not getattr(nms_module.nms, '_float32_on_cpu', False):
        nms_module.nms = _nms_in_float32(nms_module.nms)
    if not getattr(RoIAlign.forward, '_float32_on_cpu', False):
        RoIAlign.forward = _roi_align_in_float32(RoIAlign.forward)


def _to_float32(sample):
    for field in ('pred_instances', 'pred_sem_seg', 'seg_logits'):
        data = getattr(sample, field, None)
        if data is None:
            continue
        for key, value in list(data.items()):
            if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
                data.set_field(value.float(), key)
    return sample


def float32_predictions(model: torch.nn.Module) -> None:
    """Make ``model.test_step`` return float32 prediction tensors."""
    test_step = model.test_step

    @functools.wraps(test_step)
    def wrapper(*args, **kwargs):
        return [_to_float32(sample) for sample in test_step(*args, **kwargs)]
    model.test_step = wrapper
