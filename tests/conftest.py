"""Shared fixtures: small checkpoints made from timm's InceptionNeXt with random weights."""
from __future__ import annotations

import pytest
import timm
import torch

from backbones.demo_data import make_ade20k, make_coco
from backbones.fusion import randomize_bn_and_layer_scale_ as randomize_

TIMM_NAMES = {'atto': 'inception_next_atto', 'tiny': 'inception_next_tiny',
              'small': 'inception_next_small', 'base': 'inception_next_base'}


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
