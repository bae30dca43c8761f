"""Registration under both scopes, and the learning-rate decay optimizer constructor."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from backbones import ConfigError, InceptionNeXt


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_under_default_scope(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='InceptionNeXt', arch='atto', out_indices=(1, 3)))
    assert isinstance(model, InceptionNeXt) and model.out_indices == (1, 3)


@pytest.mark.parametrize('present,absent', [('mmdet', 'mmseg'), ('mmseg', 'mmdet')])
def test_works_with_only_one_library_installed(present, absent):
    """``import backbones`` and a build under the present library, with the other one blocked."""
    code = (f'import sys; sys.modules[{absent!r}] = None\n'  # any import of it now fails
            'import backbones\n'
            f'from {present}.registry import MODELS\n'
            'from mmengine.registry import DefaultScope\n'
            f'with DefaultScope.overwrite_default_scope({present!r}):\n'
            "    m = MODELS.build(dict(type='InceptionNeXt', arch='atto'))\n"
            f'assert {absent!r} not in [n.split(".")[0] for n, v in sys.modules.items() if v]\n'
            'print(type(m).__name__)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'InceptionNeXt'


class Detector(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = InceptionNeXt('tiny', **kwargs)
        self.neck = nn.Conv2d(4, 4, 1)


def _groups(decay_type: str, rate: float = 0.9, **extra) -> dict[str, dict]:
    model = Detector(frozen_stages=0)
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05),
        constructor='InceptionNeXtLearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=rate, decay_type=decay_type, **extra)))
    named = {id(p): n for n, p in model.named_parameters()}
    return {named[id(p)]: g for g in wrapper.optimizer.param_groups for p in g['params']}, model


def test_layer_wise_lrs_follow_convnext_scheme():
    groups, model = _groups('layer_wise')
    num_layers = 6 + 2  # tiny: stage 2 has 9 blocks -> layers 3..5, stage 3 is layer 6
    lr = {n: g['lr'] for n, g in groups.items()}
    assert lr['neck.weight'] == pytest.approx(1.0)
    assert lr['backbone.stages.3.blocks.0.mlp.fc1.weight'] == pytest.approx(0.9 ** 1)
    assert lr['backbone.stages.2.blocks.8.mlp.fc1.weight'] == pytest.approx(0.9 ** 2)
    assert lr['backbone.stages.2.blocks.0.mlp.fc1.weight'] == pytest.approx(0.9 ** 4)
    assert lr['backbone.stages.2.downsample.1.weight'] == pytest.approx(0.9 ** 4)
    assert lr['backbone.stages.0.blocks.0.mlp.fc1.weight'] == pytest.approx(0.9 ** 6)
    assert lr['backbone.norm0.weight'] == pytest.approx(1.0)  # new output norms: head level
    assert max(lr.values()) == 1.0 and min(lr.values()) == pytest.approx(0.9 ** (num_layers - 2))
    assert not any(n.startswith('backbone.stem') for n in groups)  # frozen: not optimized


def test_stage_wise_lrs():
    groups, _ = _groups('stage_wise')
    lr = {n: g['lr'] for n, g in groups.items()}
    for stage in range(4):
        name = f'backbone.stages.{stage}.blocks.0.token_mixer.dwconv_hw.weight'
        assert lr[name] == pytest.approx(0.9 ** (8 - 1 - (stage + 1)))
    assert lr['neck.weight'] == pytest.approx(1.0)


def test_weight_decay_exemptions():
    groups, _ = _groups('layer_wise')
    wd = {n: g['weight_decay'] for n, g in groups.items()}
    assert wd['backbone.stages.1.blocks.0.mlp.fc1.weight'] == 0.05
    assert wd['backbone.stages.1.blocks.0.token_mixer.dwconv_w.weight'] == 0.05
    for name in ('backbone.stages.1.blocks.0.mlp.fc1.bias', 'backbone.stages.1.blocks.0.gamma',
                 'backbone.stages.1.blocks.0.norm.weight', 'backbone.norm2.bias', 'neck.bias'):
        assert wd[name] == 0.0, name


@pytest.mark.parametrize('cfg,match', [
    (dict(decay_type='layer_wise'), 'decay_rate'),
    (dict(decay_rate=0.9, decay_type='block_wise'), 'decay_type'),
    (dict(decay_rate=0.9, num_layers=12), 'num_layers=12 does not match'),
])
def test_bad_paramwise_cfg(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_optim_wrapper(Detector(), dict(
            optimizer=dict(type='AdamW', lr=1.0),
            constructor='InceptionNeXtLearningRateDecayOptimizerConstructor', paramwise_cfg=cfg))


def test_upstream_num_layers_accepted():
    groups, _ = _groups('layer_wise', num_layers=6)
    assert groups
