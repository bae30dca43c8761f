"""``--amp`` without CUDA: bfloat16 autocast, and mmcv's ``nms``/``RoIAlign`` under it.

Importing this module registers ``BF16AmpOptimWrapper`` (the tools import it). mmcv's CPU kernels
take float32 only, so a detector under bf16 autocast stops in the RPN's NMS ("expected scalar type
Float but found BFloat16") and then in RoIAlign. Inside ``float32_mmcv_ops()`` both compute in
float32 for CPU inputs of other dtypes and return the caller's dtype; float32 and CUDA inputs take
mmcv's path unchanged, and mmcv is restored on exit. Predictions leave
``float32_predictions(model)`` in float32, as the metrics read them with numpy, which has no
bfloat16.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast

from . import patches


@OPTIM_WRAPPERS.register_module()
class BF16AmpOptimWrapper(OptimWrapper):
    """Mixed precision by bfloat16 autocast, no loss scaling: runs on CPUs as well as GPUs."""

    def __init__(self, dtype: str | torch.dtype = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), autocast(dtype=self.cast_dtype):
            yield


def _nms_in_float32(nms):
    @functools.wraps(nms)
    def wrapper(boxes: torch.Tensor, scores: torch.Tensor, *args, **kwargs):
        if boxes.device.type == 'cpu' and boxes.dtype != torch.float32:
            dets, keep = nms(boxes.float(), scores.float(), *args, **kwargs)
            return dets.to(boxes.dtype), keep
        return nms(boxes, scores, *args, **kwargs)
    return wrapper


def _roi_align_in_float32(forward):
    @functools.wraps(forward)
    def wrapper(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if input.device.type == 'cpu' and input.dtype != torch.float32:
            return forward(self, input.float(), rois.float()).to(input.dtype)
        return forward(self, input, rois)
    return wrapper


@contextmanager
def float32_mmcv_ops(enabled: bool = True) -> Iterator[None]:
    """While active (and ``enabled``), mmcv's nms and RoIAlign take non-float32 CPU inputs."""
    if not enabled:
        yield
        return
    with patches.mmcv_nms_and_roi_align(_nms_in_float32, _roi_align_in_float32):
        yield


def _to_float32(sample):
    for field in ('pred_instances', 'pred_sem_seg', 'seg_logits'):
        data = getattr(sample, field, None)
        if data is None:
            continue
        for key, value in list(data.items()):
            if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
                data.set_field(value.float(), key)
    return sample


def float32_predictions(model: torch.nn.Module):
    """While active, ``model.test_step`` returns float32 prediction tensors."""
    test_step = model.test_step

    @functools.wraps(test_step)
    def wrapper(*args, **kwargs):
        return [_to_float32(sample) for sample in test_step(*args, **kwargs)]
    return patches.model_test_step(model, wrapper)
