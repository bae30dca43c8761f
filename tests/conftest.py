"""Shared fixtures: small checkpoints made from timm's InceptionNeXt with random weights."""
from __future__ import annotations

import pytest
import timm
import torch

from backbones.demo_data import make_ade20k, make_coco

TIMM_NAMES = {'atto': 'inception_next_atto', 'tiny': 'inception_next_tiny',
              'small': 'inception_next_small', 'base': 'inception_next_base'}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm statistics and layer scales non-trivial values (init values hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope='session')
def timm_atto() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(timm.create_model('inception_next_atto', pretrained=False)).eval()


@pytest.fixture(scope='session')
def atto_ckpt(tmp_path_factory, timm_atto) -> str:
    """The official release format: a flat state dict with the ImageNet head."""
    path = tmp_path_factory.mktemp('ckpt') / 'inceptionnext_atto.pth'
    torch.save(timm_atto.state_dict(), path)
    return str(path)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Demo-format ADE20K and COCO sets of 4 + 2 images of 64x64."""
    root = tmp_path_factory.mktemp('data')
    make_ade20k(str(root / 'ade'), n_train=4, n_val=2, size=64)
    make_coco(str(root / 'coco'), n_train=4, n_val=2, size=64)
    return dict(seg=str(root / 'ade' / 'ADEChallengeData2016'), det=str(root / 'coco'))
