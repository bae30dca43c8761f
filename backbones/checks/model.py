"""The config's InceptionNeXt built before the run, and the widths its neck or heads expect."""
from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from mmengine.config import Config

from ..errors import ConfigError
from ..inception_next import InceptionNeXt


def check_backbone(cfg: Config) -> None:
    """Build an InceptionNeXt ``model.backbone`` on the meta device (no memory, no weights), so a
    bad argument fails before a run makes its folders; then check the head widths."""
    model = cfg.get('model')
    backbone = model.get('backbone') if isinstance(model, Mapping) else None
    if not isinstance(backbone, Mapping) or backbone.get('type') != 'InceptionNeXt':
        return
    with torch.device('meta'):
        built = InceptionNeXt(**{k: v for k, v in backbone.items()
                                 if k not in ('type', '_scope_')})
    default_arch = inspect.signature(InceptionNeXt).parameters['arch'].default
    _check_head_widths(model, built, backbone.get('arch', default_arch))


def _check_head_widths(model: Mapping, backbone: torch.nn.Module, arch) -> None:
    """The neck's (else the heads') ``in_channels`` must be what the backbone gives, e.g. after
    ``model.backbone.arch=atto`` alone (a shape error deep in the heads otherwise)."""
    widths = [int(backbone.dims[i]) for i in backbone.out_indices]
    name = arch if isinstance(arch, str) else 'with this arch'
    if isinstance(model.get('neck'), Mapping):
        checks = [('neck', widths)]
    else:
        checks = [('decode_head', widths)]
        aux = model.get('auxiliary_head')
        index = aux.get('in_index') if isinstance(aux, Mapping) else None
        if isinstance(index, int) and -len(widths) <= index < len(widths):
            checks.append(('auxiliary_head', widths[index]))
    for key, want in checks:
        head = model.get(key)
        have = head.get('in_channels') if isinstance(head, Mapping) else None
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have is not None and type(have) is type(want) and have != want:
            raise ConfigError(f'model.{key}.in_channels is {have} but InceptionNeXt {name} gives '
                              f'{want}; add --cfg-options model.{key}.in_channels='
                              f"{str(want).replace(' ', '')}")
