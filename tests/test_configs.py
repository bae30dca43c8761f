"""Every config builds its model without weights; overrides reach the built model."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_readme_config

from backbones.config import build_model, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.py'))
PAPER_PARAMS_M = {'upernet_inceptionnext-t': 56, 'upernet_inceptionnext-s': 78,
                  'upernet_inceptionnext-b': 115}


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds(config):
    cfg = load_config(str(ROOT / config), {'model.backbone.init_cfg': None})
    assert cfg.model.backbone.type == 'InceptionNeXt'
    assert 'backbones' in cfg.custom_imports['imports']
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    for prefix, expected in PAPER_PARAMS_M.items():
        if config.startswith(f'configs/upernet/{prefix}'):
            assert params == pytest.approx(expected, abs=0.5)
    if 'demo' not in config:  # the ImageNet checkpoint of the config's own size
        backbone = load_config(str(ROOT / config)).model.backbone
        assert f'/inceptionnext_{backbone.arch}.pth' in backbone.init_cfg['checkpoint']


def test_overrides_reach_the_model():
    cfg = load_config(str(ROOT / 'configs/upernet_inceptionnext_t_ade20k.py'), {
        'model.backbone.init_cfg': None, 'model.backbone.arch': 'atto',
        'model.backbone.drop_path_rate': 0.3, 'model.backbone.frozen_stages': 2,
        'model.decode_head.in_channels': [40, 80, 160, 320],
        'model.auxiliary_head.in_channels': 160})
    backbone = build_model(cfg).backbone
    assert backbone.dims == (40, 80, 160, 320)
    assert backbone.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert not any(p.requires_grad for p in backbone.stages[1].parameters())
    assert all(p.requires_grad for p in backbone.stages[2].parameters())


@pytest.mark.parametrize('library', ['mmdet', 'mmseg'])
def test_readme_snippet_builds_and_runs_on_its_base(tmp_path, library):
    import torch
    path = write_readme_config(tmp_path, library)
    cfg = load_config(str(path), {'model.backbone.init_cfg': None})  # no download here
    model = build_model(cfg)
    assert type(model.backbone).__name__ == 'InceptionNeXt'
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, 64, 64))
        if library == 'mmdet':
            assert [f.shape[1] for f in feats] == [256] * 5  # the FPN took the stage widths
        else:
            logits = model.decode_head(feats)
            aux = model.auxiliary_head(feats)
            assert logits.shape == (1, 150, 16, 16) and aux.shape == (1, 150, 4, 4)
