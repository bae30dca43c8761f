"""``fuse_inception_next(backbone)``: the inference form of a trained backbone, same outputs.

BatchNorms and layer scales are folded into the neighbouring convolutions (exact in eval mode),
and each block becomes a ``FusedMetaNeXtBlock``. Where it measures faster on this CPU, that block
runs fc1 + GELU and fc2 + shortcut as single oneDNN convolutions with fused post-ops (what
inductor lowers them to), a private torch op kept here rather than in the model.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn as nn

from ..inception_next import InceptionNeXt, MetaNeXtBlock

try:  # oneDNN convolution with fused post-ops
    _CONV_POINTWISE = torch.ops.mkldnn._convolution_pointwise
except (AttributeError, RuntimeError):  # a build without oneDNN
    _CONV_POINTWISE = None

# torch < 2.3 has only the private spelling; torch < 2.4 has no device argument
_is_compiling = getattr(torch.compiler, 'is_compiling', None) or torch._dynamo.is_compiling
try:
    torch.is_autocast_enabled('cpu')
    _cpu_autocast = functools.partial(torch.is_autocast_enabled, 'cpu')
except TypeError:
    _cpu_autocast = torch.is_autocast_cpu_enabled


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


def _onednn_applies(x: torch.Tensor) -> bool:
    """Whether the oneDNN kernels may run: eager fp32 CPU inference only (the op has no
    derivative), no autocast, and not while tracing, scripting or compiling (exporters and
    inductor see the plain modules)."""
    if _is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False  # first: under torch.compile the rest would break the graph
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not _cpu_autocast())


class FusedMetaNeXtBlock(nn.Module):
    """A ``MetaNeXtBlock`` in inference form: token mixer -> MLP (BatchNorm folded into fc1, layer
    scale into fc2) -> + shortcut. Parameter names stay those of the block."""

    def __init__(self, block: MetaNeXtBlock, onednn: bool = False):
        super().__init__()
        self.token_mixer = block.token_mixer
        self.mlp = block.mlp
        fold_bn_into_following_conv(block.norm, self.mlp.fc1)
        if block.gamma is not None:
            fold_scale_into_conv(self.mlp.fc2, block.gamma.detach())
        self.onednn = onednn and _CONV_POINTWISE is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and _onednn_applies(x):
            return self._forward_onednn(x)
        return self.mlp(self.token_mixer(x)) + x

    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        """fc1 + GELU and fc2 + shortcut, each one oneDNN convolution: saves the separate GELU
        and add passes over the 4x wide hidden map (1.3-1.4x faster at 2x512x512 on one CPU
        thread of the machines where it wins, same outputs)."""
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        conv = ([0, 0], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups
        y = _CONV_POINTWISE(self.token_mixer(x), fc1.weight, fc1.bias, *conv, 'gelu', [], 'none')
        return _CONV_POINTWISE.binary(y, x, fc2.weight, fc2.bias, *conv, 'add', None, None, [],
                                      None)


@functools.cache
def onednn_mlp_wins() -> bool:
    """Whether the fused blocks should use the oneDNN kernels: timed once per process on a
    stage-1 block (96 channels, 64x64, channels-last), both ways interleaved, one warm-up call
    each, then the best of 6.

    Which is faster depends on the CPU, not only on its ISA (docs/benchmark.md has the
    measurements, each with its machine). The outputs are the same either way; on a busy machine
    the timing, and so the choice, can vary between processes.
    """
    if _CONV_POINTWISE is None or not torch.backends.mkldnn.is_available():
        return False
    block = MetaNeXtBlock(96, mlp_ratio=4, drop_path=0.0, ls_init_value=1.0).eval()
    x = torch.randn(1, 96, 64, 64).contiguous(memory_format=torch.channels_last)
    best = {True: float('inf'), False: float('inf')}
    with torch.no_grad():
        fused = FusedMetaNeXtBlock(block, onednn=True)
        for onednn in best:  # first calls create oneDNN primitives
            fused.onednn = onednn
            fused(x)
        for _ in range(6):
            for onednn in best:
                fused.onednn = onednn
                start = time.perf_counter()
                fused(x)
                best[onednn] = min(best[onednn], time.perf_counter() - start)
    return best[True] < best[False]


@torch.no_grad()
def fuse_inception_next(model: InceptionNeXt, onednn: bool | None = None) -> InceptionNeXt:
    """Fold ``model``'s BatchNorms and layer scales into convolutions (in place, same outputs).

    Args:
        onednn: Run each block's fc1 + GELU and fc2 + shortcut as single oneDNN convolutions in
            fp32 CPU inference. None: if they measure faster on this CPU (``onednn_mlp_wins()``).
    """
    if model.training:
        raise RuntimeError('fuse_inception_next() folds BatchNorm statistics: call model.eval() '
                           'first')
    onednn = onednn_mlp_wins() if onednn is None else onednn
    if isinstance(model.stem[-1], nn.BatchNorm2d):
        model.stem = nn.Sequential(fold_conv_bn(model.stem[0], model.stem[1]))
    for stage in model.stages:
        if isinstance(stage.downsample, nn.Sequential) and len(stage.downsample) == 2:
            fold_bn_into_following_conv(stage.downsample[0], stage.downsample[1])
            stage.downsample = nn.Sequential(stage.downsample[1])
        for i, block in enumerate(stage.blocks):
            if isinstance(block, MetaNeXtBlock):
                stage.blocks[i] = FusedMetaNeXtBlock(block, onednn)
            else:
                block.onednn = onednn and _CONV_POINTWISE is not None
    return model
