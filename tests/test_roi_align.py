"""SparseRoIAlign gives mmcv's RoIAlign numbers, forward and backward, and mmdet can build it."""
from __future__ import annotations

import pytest
import torch
from mmcv.ops import RoIAlign

from backbones.ops.roi_align import SparseRoIAlign


def random_rois(n: int, batch: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """RoIs in image pixels, some partly or wholly off a 108x80 image, three degenerate."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 140 - 20
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 80
    wh[:3] = 0
    idx = torch.randint(0, batch, (n, 1), generator=g).to(dtype)
    return torch.cat([idx, xy, xy + wh], 1)


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
@pytest.mark.parametrize('output_size', [(7, 7), (14, 14), (3, 5)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_mmcv(aligned, sampling_ratio, output_size, dtype):
    feat = torch.randn(3, 16, 20, 27, dtype=dtype, requires_grad=True)
    rois = random_rois(40, 3, dtype)
    args = (output_size, 0.25, sampling_ratio)
    ref = RoIAlign(*args, aligned=aligned)(feat, rois)
    out = SparseRoIAlign(*args, aligned=aligned)(feat, rois)
    assert out.shape == ref.shape and out.abs().sum() > 0
    grad = torch.randn_like(ref)
    grad_ref, = torch.autograd.grad(ref, feat, grad)
    grad_out, = torch.autograd.grad(out, feat, grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(grad_out, grad_ref, atol=tol * 10, rtol=tol)


def test_no_rois_and_max_mode_fallback():
    feat = torch.randn(2, 8, 10, 12)
    assert SparseRoIAlign(7, 0.5)(feat, torch.zeros(0, 5)).shape == (0, 8, 7, 7)
    rois = random_rois(10, 2, torch.float32)
    torch.testing.assert_close(SparseRoIAlign(7, 0.5, pool_mode='max')(feat, rois),
                               RoIAlign(7, 0.5, pool_mode='max')(feat, rois))


def test_mmdet_roi_extractor_builds_it():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    feats = tuple(torch.randn(2, 8, 64 // 2 ** i, 64 // 2 ** i) for i in range(4))
    rois = random_rois(30, 2, torch.float32) * torch.tensor([1, 2, 2, 2, 2])
    outs = []
    for layer_type in ('RoIAlign', 'SparseRoIAlign'):
        extractor = MODELS.build(dict(
            type='SingleRoIExtractor', out_channels=8, featmap_strides=[4, 8, 16, 32],
            roi_layer=dict(type=layer_type, output_size=7, sampling_ratio=0)))
        assert type(extractor.roi_layers[0]).__name__ == layer_type
        outs.append(extractor(feats, rois))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
