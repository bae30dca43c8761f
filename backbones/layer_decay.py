"""Layer-wise / stage-wise learning-rate decay for InceptionNeXt (mmdet's and mmseg's only take
ConvNeXt). Usable from any mmdet or mmseg config:

    optim_wrapper = dict(
        constructor='InceptionNeXtLearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from .errors import ConfigError

DECAY_TYPES = ('layer_wise', 'stage_wise')


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and layer scales (all 1-D) take no weight decay."""
    return param.ndim <= 1 or name.endswith('.bias')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class InceptionNeXtLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Scale each parameter's lr by ``decay_rate ** (num_layers - 1 - depth)``.

    ``depth`` comes from the backbone's ``get_layer_depth`` (layer_wise) or ``get_stage_depth``
    (stage_wise); necks and heads sit one above the last backbone layer and keep the base lr.
    ``paramwise_cfg``: ``decay_rate`` (required), ``decay_type`` ('layer_wise' default),
    ``num_layers`` (optional; if given it must equal the backbone's, as in upstream configs).
    """

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        decay_rate = cfg.get('decay_rate')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if not isinstance(decay_rate, (int, float)) or not 0 < decay_rate <= 1:
            raise ConfigError(f'paramwise_cfg.decay_rate must be a number in (0, 1], '
                              f'got {decay_rate!r}')
        if decay_type not in DECAY_TYPES:
            raise ConfigError(f'paramwise_cfg.decay_type must be one of {DECAY_TYPES}, '
                              f'got {decay_type!r}')
        backbone = getattr(module, 'backbone', None)
        if not hasattr(backbone, 'get_layer_depth'):
            raise ConfigError(f'{type(self).__name__} needs model.backbone with get_layer_depth '
                              f'(e.g. InceptionNeXt); got {type(backbone).__name__}')
        depth_fn = (backbone.get_layer_depth if decay_type == 'layer_wise'
                    else backbone.get_stage_depth)
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id, num_layers = depth_fn(name, 'backbone.')
            if cfg.get('num_layers') is not None and cfg['num_layers'] + 2 != num_layers:
                raise ConfigError(f"paramwise_cfg.num_layers={cfg['num_layers']} does not match "
                                  f'this backbone ({num_layers - 2}); drop it or set it to that')
            no_decay = is_no_decay(name, param)
            key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if key not in groups:
                scale = decay_rate ** (num_layers - 1 - layer_id)
                groups[key] = dict(params=[], param_names=[], lr=self.base_lr * scale,
                                   lr_scale=scale, group_name=key,
                                   weight_decay=0.0 if no_decay else self.base_wd)
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        print_log(f'{type(self).__name__}: {decay_type} decay {decay_rate}, '
                  f'{len(groups)} parameter groups', logger='current')
        params.extend(groups.values())
