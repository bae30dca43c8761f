"""Exact re-parameterisations used by ``InceptionNeXt.fuse()`` for inference."""
from __future__ import annotations

import torch
import torch.nn as nn


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return ``conv`` with the following BatchNorm folded into its weight and bias."""
    scale, shift = _bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(bias * scale + shift)
    return fused


def fold_bn_into_following_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """Fold a BatchNorm into the dense, unpadded convolution that follows it (in place)."""
    if conv.groups != 1 or any(p != 0 for p in conv.padding):
        raise ValueError('folding a BatchNorm forward needs a dense convolution without padding')
    scale, shift = _bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels).to(shift)
    new_bias = bias + torch.einsum('oihw,i->o', conv.weight, shift)
    conv.weight.mul_(scale.reshape(1, -1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fold_scale_into_conv(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """Multiply a convolution's output channels by ``scale`` through its weight and bias."""
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.mul_(scale)


@torch.no_grad()
def randomize_bn_and_layer_scale_(model: nn.Module, seed: int = 0,
                                  gamma_range: tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Give BatchNorm statistics/affines and layer scales non-trivial random values (in place).

    Their initial values (identity BN, gamma 1e-6) hide folding and parity bugs; checks of
    ``fuse()`` and of weight compatibility run on a model randomized this way.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    low, high = gamma_range
    for name, p in model.named_parameters():
        if name.endswith('gamma'):
            p.copy_(low + torch.rand(p.shape, generator=g) * (high - low))
    return model
