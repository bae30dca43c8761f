"""FLOP counting of ``get_flops.py`` and ``benchmark.py`` beside it (mmengine's counter).

One fused multiply-add counts as one FLOP (mmengine's and fvcore's convention, i.e. MACs).
Segmentors are counted without their auxiliary head (it is dropped at inference), detectors on
the input padded to the data preprocessor's size divisor, as upstream get_flops.py does.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count


def drop_auxiliary_head(model: nn.Module, task: str) -> float | None:
    """Drop a segmentor's auxiliary head (training only; not in the paper's FLOPs) and return its
    params (M); None if there is none."""
    if task != 'seg' or getattr(model, 'auxiliary_head', None) is None:
        return None
    aux = sum(p.numel() for p in model.auxiliary_head.parameters()) / 1e6
    model.auxiliary_head = None
    return aux


def model_inputs(model: nn.Module, task: str, hw: tuple[int, int]) -> torch.Tensor:
    """The input tensor of the measurement ('seg', 'det' or 'backbone'); detectors get their
    image metas bound to forward."""
    device = next(model.parameters()).device
    image = torch.rand(3, *hw, device=device) * 255
    if task != 'det':
        return (image - 127.5)[None] / 64.0
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(ori_shape=hw, img_shape=hw, scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    model.forward = partial(model.forward, data_samples=data['data_samples'], mode='tensor')
    return data['inputs']


def complexity(module: nn.Module, inputs: torch.Tensor) -> tuple[float, float, list[str]]:
    """(params in M, FLOPs in G, ops the counter skips) of ``module`` on ``inputs``.

    ``FlopAnalyzer`` is the counter behind ``get_model_complexity_info``, used directly to skip
    its second (activation) trace and to list the uncounted ops instead of warning per module.
    """
    with torch.no_grad():
        flops = (FlopAnalyzer(module, (inputs,)).unsupported_ops_warnings(False)
                 .uncalled_modules_warnings(False))
        total = flops.total()
    skipped = sorted(op.replace('aten::', '') for op in flops.unsupported_ops())
    return parameter_count(module)[''] / 1e6, total / 1e9, skipped


def inference_gflops(model: nn.Module, task: str, hw: tuple[int, int]) -> float:
    """GFLOPs (multiply-adds) of one ``hw`` image through a copy of ``model`` at inference."""
    model = copy.deepcopy(model)
    model.eval()  # (mmpretrain's ConvNeXt.train returns None)
    drop_auxiliary_head(model, task)
    return complexity(model, model_inputs(model, task, hw))[1]
