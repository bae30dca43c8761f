"""InceptionNeXt (Yu et al., arXiv 2303.16900) as a multi-scale backbone for dense prediction.

The modules and parameter names follow the official code (sail-sg/inceptionnext) and timm's
``inception_next.py``, so the published ImageNet checkpoints load without a remapping table:
``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``,
``stages.{i}.blocks.{j}.{token_mixer,norm,mlp,gamma}``.

timm's layers (``DropPath``, ``trunc_normal_``) are imported when a model is built, not when this
module is: importing timm takes seconds (it imports torchvision), and ``import backbones`` in a
config's ``custom_imports`` only registers the class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import load_pretrained
from .errors import ConfigError

ARCH_SETTINGS = {
    'atto': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9,
                 branch_ratio=0.25),
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    'small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}
ARCH_DEFAULTS = dict(square_kernel_size=3, band_kernel_size=11, branch_ratio=0.125,
                     mlp_ratios=(4, 4, 4, 3))

DEFAULT_OUT_NORM = dict(type='LN2d', eps=1e-6)  # ConvNeXt's per-output LayerNorm

class InceptionDWConv2d(nn.Module):
    """Inception depthwise convolution: identity, k x k, 1 x band and band x 1 channel branches."""

    def __init__(self, in_chs: int, square_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: float = 0.125):
        super().__init__()
        gc = int(in_chs * branch_ratio)
        if gc < 1 or 3 * gc > in_chs:
            raise ConfigError(f'InceptionNeXt: branch_ratio={branch_ratio} with {in_chs} channels '
                              f'gives {gc} channels per conv branch; choose 0 < 3 * ratio <= 1')
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=square_kernel_size // 2,
                                   groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_kernel_size // 2),
                                  groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_kernel_size // 2, 0),
                                  groups=gc)
        self.split_indexes = (in_chs - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)),
                         dim=1)


class ConvMlp(nn.Module):
    """Two 1x1 convolutions with GELU between them."""

    def __init__(self, in_chs: int, hidden_chs: int):
        super().__init__()
        self.fc1 = nn.Conv2d(in_chs, hidden_chs, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_chs, in_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaNeXtBlock(nn.Module):
    """token mixer -> BatchNorm -> ConvMlp -> layer scale -> drop path -> + shortcut."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, ls_init_value: float,
                 **mixer_kwargs):
        super().__init__()
        self.token_mixer = InceptionDWConv2d(dim, **mixer_kwargs)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value else None
        if drop_path > 0:
            from timm.layers import DropPath
            self.drop_path = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        if self.gamma is not None:
            y = y.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(y) + x


class MetaNeXtStage(nn.Module):
    """An optional (BatchNorm, 2x2 stride-2 conv) downsample followed by MetaNeXt blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool,
                 drop_path_rates: Sequence[float], **block_kwargs):
        super().__init__()
        self.downsample = (nn.Sequential(nn.BatchNorm2d(in_chs),
                                         nn.Conv2d(in_chs, out_chs, 2, stride=2))
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[MetaNeXtBlock(out_chs, drop_path=dpr, **block_kwargs)
                                      for dpr in drop_path_rates[:depth]])
        self.grad_checkpointing = False  # timm's name; set by InceptionNeXt(with_cp=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        # Checkpointing is an autograd memory strategy with the same values: TorchScript cannot
        # compile it, and an FX graph (x a Proxy) records the blocks' ops, not a checkpoint call.
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and self.training and not isinstance(x, torch.fx.Proxy):
                for block in self.blocks:
                    x = cp.checkpoint(block, x, use_reentrant=False)
                return x
        return self.blocks(x)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt's per-output norm).

    The output keeps the input's memory format, so a plain NCHW input gives a contiguous NCHW
    map to the heads (as mmpretrain's ConvNeXt does) rather than a channels-last view.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                     self.bias, self.eps).permute(0, 3, 1, 2)
        return _in_format_of(y, x)


@torch.fx.wrap
def _in_format_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` (channels-last strided) as is for a channels-last ``x``, else contiguous NCHW.

    A leaf for FX (the layout is a runtime property a symbolic trace cannot branch on, so the
    graph decides when it runs, as eager does); TorchScript compiles it as it is.
    """
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y
    return y.contiguous()


def _resolve_arch(arch: str | dict) -> dict:
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ConfigError(f"InceptionNeXt: unknown arch '{arch}'; expected one of "
                              f'{sorted(ARCH_SETTINGS)} or a dict with depths and dims')
        return {**ARCH_DEFAULTS, **ARCH_SETTINGS[arch]}
    if not isinstance(arch, dict):
        raise ConfigError(f'InceptionNeXt: arch must be a name or a dict, '
                          f'got {type(arch).__name__}')
    unknown = set(arch) - set(ARCH_DEFAULTS) - {'depths', 'dims'}
    missing = {'depths', 'dims'} - set(arch)
    if unknown or missing:
        raise ConfigError(f'InceptionNeXt: arch dict has unknown keys {sorted(unknown)} / lacks '
                          f'{sorted(missing)}; allowed: depths, dims, {", ".join(ARCH_DEFAULTS)}')
    settings = {**ARCH_DEFAULTS, **arch}
    for key in ('depths', 'dims', 'mlp_ratios'):
        value = settings[key]
        if (not isinstance(value, Sequence) or len(value) != 4
                or not all(isinstance(v, (int, float)) and v > 0 for v in value)):
            raise ConfigError(f'InceptionNeXt: arch {key} must be 4 positive numbers, '
                              f'got {value!r}')
    return settings


def _resolve_out_indices(out_indices: Sequence[int] | int) -> tuple[int, ...]:
    """Stage indices in [0, 3], sorted (negative ones count from the last stage)."""
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    resolved = []
    for i in out_indices:
        if not isinstance(i, int) or not -4 <= i <= 3:
            raise ConfigError(f'InceptionNeXt: out_indices must be ints in [-4, 3], '
                              f'got {tuple(out_indices)!r}')
        resolved.append(i % 4)
    if len(set(resolved)) != len(resolved) or not resolved:
        raise ConfigError(f'InceptionNeXt: out_indices must name distinct stages, '
                          f'got {tuple(out_indices)!r}')
    return tuple(sorted(resolved))


@MODELS.register_module()
class InceptionNeXt(BaseModule):
    """InceptionNeXt backbone returning multi-scale NCHW features (strides 4, 8, 16, 32).

    Args:
        arch: 'atto', 'tiny', 'small', 'base', or a dict with ``depths`` and ``dims`` (4 each) and
            optionally ``square_kernel_size``, ``band_kernel_size``, ``branch_ratio``,
            ``mlp_ratios``.
        in_channels: Input image channels.
        out_indices: Stages whose outputs are returned (negative indices count from the end).
        drop_path_rate: Stochastic depth rate, rising linearly over all blocks up to this value.
        layer_scale_init_value: Initial layer-scale ``gamma``; 0 disables layer scale.
        out_norm_cfg: Norm applied to each returned map (new, not pretrained); None disables it.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and the first k stages.
        norm_eval: Keep every BatchNorm of the backbone in eval mode during training.
        with_cp: Gradient checkpointing for each block (saves memory, costs a second forward).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads ImageNet weights
            (official, timm, wrapped or full mmdet/mmseg checkpoints) and verifies what loaded.
    """

    # Python-side metadata (here and mmengine's): TorchScript would otherwise compile them
    __jit_unused_properties__ = ['feature_info', 'is_init']

    def __init__(self,
                 arch: str | dict = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 out_norm_cfg: dict | None = DEFAULT_OUT_NORM,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: dict | list | None = None):
        super().__init__(init_cfg=init_cfg)
        for cfg in init_cfg if isinstance(init_cfg, list) else [init_cfg]:
            if cfg is not None and (not isinstance(cfg, dict) or 'type' not in cfg
                                    or cfg['type'] == 'Pretrained' and 'checkpoint' not in cfg):
                raise ConfigError(f"InceptionNeXt: init_cfg must be None or like "
                                  f"dict(type='Pretrained', checkpoint=PATH_OR_URL), got {cfg!r}")
        settings = _resolve_arch(arch)
        self.arch_settings = settings
        self.depths = tuple(int(d) for d in settings['depths'])
        self.dims = tuple(int(d) for d in settings['dims'])
        self.out_indices = _resolve_out_indices(out_indices)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ConfigError(f'InceptionNeXt: frozen_stages must be an int in [-1, 4], '
                              f'got {frozen_stages!r}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f'InceptionNeXt: drop_path_rate must be in [0, 1), '
                              f'got {drop_path_rate!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        self.stem = nn.Sequential(nn.Conv2d(in_channels, self.dims[0], 4, stride=4),
                                  nn.BatchNorm2d(self.dims[0]))
        n = sum(self.depths)  # drop path rises linearly from 0 (torch.linspace, on any device)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        mixer_kwargs = {k: settings[k] for k in ('square_kernel_size', 'band_kernel_size',
                                                 'branch_ratio')}
        self.stages = nn.Sequential()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            self.stages.append(MetaNeXtStage(
                self.dims[max(i - 1, 0)], self.dims[i], depth, downsample=i > 0,
                drop_path_rates=dpr[start:start + depth], mlp_ratio=settings['mlp_ratios'][i],
                ls_init_value=layer_scale_init_value, **mixer_kwargs))
            self.stages[-1].grad_checkpointing = with_cp
        for i in self.out_indices:
            self.add_module(f'norm{i}', self._build_out_norm(out_norm_cfg, self.dims[i]))
        self.apply(self._init_module)
        self._freeze_stages()

    @staticmethod
    def _build_out_norm(cfg: dict | None, channels: int) -> nn.Module:
        if cfg is None:
            return nn.Identity()
        if cfg.get('type') == 'LN2d':
            return LayerNorm2d(channels, **{k: v for k, v in cfg.items() if k != 'type'})
        from mmcv.cnn import build_norm_layer
        return build_norm_layer(cfg, channels)[1]

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            from timm.layers import trunc_normal_
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def feature_info(self) -> list[dict]:
        """Channels, reduction and module name of each returned map (timm's convention)."""
        return [dict(num_chs=self.dims[i], reduction=4 * 2 ** i, module=f'stages.{i}')
                for i in self.out_indices]

    def init_weights(self) -> None:
        """Initialise; with a ``Pretrained`` init_cfg load and verify the checkpoint."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if c and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        cfg = pretrained[0]
        load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
        self._is_init = True

    def forward(self, x: torch.Tensor):  # a tuple of tensors; TorchScript rejects `Tensor, ...`
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        # Literal names, not getattr(self, f'norm{i}'): TorchScript resolves hasattr when it
        # compiles, so the scripted forward returns a fixed-length tuple as eager does.
        outs = ()
        if hasattr(self, 'norm0'):
            outs = outs + (self.norm0(feats[0]),)
        if hasattr(self, 'norm1'):
            outs = outs + (self.norm1(feats[1]),)
        if hasattr(self, 'norm2'):
            outs = outs + (self.norm2(feats[2]),)
        if hasattr(self, 'norm3'):
            outs = outs + (self.norm3(feats[3]),)
        return outs

    def _freeze_stages(self) -> None:
        frozen = ([self.stem] if self.frozen_stages >= 0 else []) + \
            list(self.stages[:max(self.frozen_stages, 0)])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> InceptionNeXt:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> tuple[int, int]:
        """Layer id for layer-wise lr decay (ConvNeXt's scheme) and the number of layers.

        The stem is layer 0, stages 0 and 1 (with their downsample) layers 1 and 2, stage 2 one
        layer per 3 blocks from 3, stage 3 the last backbone layer; anything outside the backbone
        (necks, heads) is one layer above it.
        """
        max_layer_id = 3 + (self.depths[2] - 1) // 3 + 1
        num_layers = max_layer_id + 2
        if not param_name.startswith(prefix):
            return max_layer_id + 1, num_layers
        name = param_name[len(prefix):]
        parts = name.split('.')
        if parts[0] != 'stages':
            return (0 if parts[0] == 'stem' else max_layer_id + 1), num_layers
        stage_id = int(parts[1])
        if stage_id < 2:
            layer_id = stage_id + 1
        elif stage_id == 2:
            layer_id = 3 + int(parts[3]) // 3 if parts[2] == 'blocks' else 3
        else:
            layer_id = max_layer_id
        return layer_id, num_layers

    def get_stage_depth(self, param_name: str, prefix: str = '') -> tuple[int, int]:
        """Stage id for stage-wise lr decay: stem 0, stage i i + 1, outside the backbone last."""
        _, num_layers = self.get_layer_depth(param_name, prefix)
        name = param_name[len(prefix):] if param_name.startswith(prefix) else None
        if name is None or name.split('.')[0] not in ('stem', 'stages'):
            return num_layers - 1, num_layers
        return (0 if name.startswith('stem') else int(name.split('.')[1]) + 1), num_layers
