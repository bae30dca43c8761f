"""``fuse_inception_next`` (``backbones.deploy.fuse``): same outputs, fused kernels only where
they measure faster, plain differentiable modules under autograd."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize_bn_and_layer_scale_ as randomize_

from backbones import ARCH_SETTINGS, InceptionNeXt
from backbones.deploy import fuse as fuse_module
from backbones.deploy.fuse import FusedMetaNeXtBlock, fuse_inception_next

CL = torch.channels_last


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_fused_equals_unfused_in_every_memory_format(arch, monkeypatch):
    torch.manual_seed(0)
    model = randomize_(InceptionNeXt(arch)).eval()
    x = torch.randn(2, 3, 64, 96) if arch == 'atto' else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fused = fuse_inception_next(copy.deepcopy(model), onednn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(isinstance(b, FusedMetaNeXtBlock) for s in fused.stages for b in s.blocks)
    assert set(fused.state_dict()) < set(model.state_dict())  # the same names, fewer of them
    fast_calls = []
    original = FusedMetaNeXtBlock._forward_onednn
    monkeypatch.setattr(FusedMetaNeXtBlock, '_forward_onednn',
                        lambda self, t: fast_calls.append(1) or original(self, t))
    for model_cl in (False, True):
        net = copy.deepcopy(fused).to(memory_format=CL) if model_cl else fused
        for input_cl in (False, True):
            with torch.no_grad():
                out = net(x.contiguous(memory_format=CL) if input_cl else x)
            assert all(_rel(a, b) < 1e-5 for a, b in zip(ref, out))
    if fuse_module._CONV_POINTWISE is not None and torch.backends.mkldnn.is_available():
        assert len(fast_calls) == 4 * sum(ARCH_SETTINGS[arch]['depths'])  # the oneDNN path ran
    if arch == 'atto':  # with autograd: the plain modules, differentiable
        out = fused(x)
        out[-1].sum().backward()
        assert all(_rel(a, b.detach()) < 1e-5 for a, b in zip(ref, out))


@pytest.mark.parametrize('faster', [True, False])
def test_fuse_uses_onednn_kernels_where_they_measure_faster(faster, monkeypatch):
    assert isinstance(fuse_module.onednn_mlp_wins(), bool)  # the real one-time timing runs
    monkeypatch.setattr(fuse_module, 'onednn_mlp_wins', lambda: faster)
    available = fuse_module._CONV_POINTWISE is not None
    blocks = [b for s in fuse_inception_next(InceptionNeXt('atto').eval()).stages for b in s.blocks]
    assert all(b.onednn == (faster and available) for b in blocks)
    forced = fuse_inception_next(InceptionNeXt('atto').eval(), onednn=not faster)
    assert all(b.onednn == (not faster and available) for s in forced.stages for b in s.blocks)
    # fusing again only changes the kernel choice
    refused = fuse_inception_next(forced, onednn=faster)
    assert all(b.onednn == (faster and available) for s in refused.stages for b in s.blocks)


def test_fuse_refuses_training_mode():
    with pytest.raises(RuntimeError, match='eval'):
        fuse_inception_next(InceptionNeXt('atto').train())
