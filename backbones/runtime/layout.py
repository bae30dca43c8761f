"""Memory-format policy, applied by the caller rather than inside a model's ``forward``.

InceptionNeXt's depthwise and 1x1 convolutions run ~1.15x faster channels-last on the CPUs
measured (training and inference), while mmdet/mmseg heads expect, and on GPUs run as fast
with, plain NCHW maps. ``channels_last_inside`` gives a module the faster layout without changing
what it returns; ``ChannelsLastHook`` (``runtime.hooks``) applies it for a run, and the tools
add that hook on CPU-only machines.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last rather than as plain contiguous NCHW."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def channels_last_inside(module: nn.Module) -> tuple[RemovableHandle, RemovableHandle]:
    """Run ``module`` channels-last: its input is converted on the way in and its tensor outputs
    are returned in the input's format (contiguous NCHW for an NCHW input).

    Returns the two hook handles; ``handle.remove()`` on both restores plain behaviour.
    """
    convert_back = []

    def to_channels_last(_, args):
        x, *rest = args
        convert_back[:] = [x.dim() == 4 and not is_channels_last(x)]
        if x.dim() != 4:
            return None
        return (x.contiguous(memory_format=torch.channels_last), *rest)

    def to_input_format(_, __, outputs):
        if not convert_back[0]:
            return outputs
        if isinstance(outputs, torch.Tensor):
            return outputs.contiguous()
        return type(outputs)(o.contiguous() if isinstance(o, torch.Tensor) else o
                             for o in outputs)

    return (module.register_forward_pre_hook(to_channels_last),
            module.register_forward_hook(to_input_format))
