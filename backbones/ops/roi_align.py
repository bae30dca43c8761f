"""A faster RoIAlign for CPU training, with the same numbers as mmcv's kernel.

mmcv's CPU RoIAlign walks every channel plane of an NCHW map per sample point; on a CPU its
backward dominates a Mask R-CNN training step. Here every (RoI, bin) output is a fixed weighted
sum of map pixels, so the whole op is one sparse matrix (bins x pixels) times the map laid out as
pixels x channels: forward and backward are sparse-dense products that read channels
contiguously. Sample points, the adaptive ``sampling_ratio=0`` grid, the boundary rules and
``aligned`` follow mmcv's ``roi_align`` exactly.

``import backbones.ops.roi_align`` adds ``SparseRoIAlign`` to ``mmcv.ops``, where mmdet's RoI
extractors look layer types up: ``roi_layer=dict(type='SparseRoIAlign', output_size=7,
sampling_ratio=0)``. Off the CPU, in ``max`` mode or for dtypes without sparse CPU kernels it
runs mmcv's ``RoIAlign`` unchanged.
"""
from __future__ import annotations

import mmcv.ops
import torch
from mmcv.ops import RoIAlign
from torch import Tensor


def _corners(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Low/high neighbour indices and their bilinear weights along one axis (mmcv's rules)."""
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    top = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, 1 - frac, frac


def roi_align_matrix(rois: Tensor, feat_shape: tuple[int, int, int],
                     output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
                     aligned: bool, dtype: torch.dtype) -> Tensor:
    """The (num_rois * out_h * out_w) x (batch * H * W) sparse COO matrix of RoIAlign (avg)."""
    batch, height, width = feat_shape
    out_h, out_w = output_size
    n = rois.shape[0]
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # mmcv's legacy mode forces RoIs to be at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h
    if sampling_ratio > 0:
        grid_y = grid_x = torch.full((n,), sampling_ratio, dtype=torch.long, device=rois.device)
    else:  # adaptive: ceil(roi size / bins) samples per bin and axis, as mmcv
        grid_y, grid_x = torch.ceil(bin_h).long(), torch.ceil(bin_w).long()
    steps = max(int(grid_y.max()), int(grid_x.max()), 1) if n else 1
    s = torch.arange(steps, dtype=dtype, device=rois.device)

    def axis(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int):
        p = torch.arange(bins, dtype=dtype, device=rois.device)
        coord = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
                 + (s + 0.5)[None, None, :] * (bin_size / grid.clamp(min=1))[:, None, None])
        valid = (s[None, None, :] < grid[:, None, None]) & (coord >= -1) & (coord <= size)
        low, high, w_low, w_high = _corners(coord, size)
        return (torch.stack([low, high], -1),
                torch.stack([w_low, w_high], -1) * valid[..., None])  # (n, bins, steps, 2)

    iy, wy = axis(y1, bin_h, grid_y, out_h, height)
    ix, wx = axis(x1, bin_w, grid_x, out_w, width)
    count = (grid_y * grid_x).clamp(min=1).to(dtype)
    # (n, out_h, out_w, steps_y, steps_x, 2, 2): one entry per sample point and corner
    col = (rois[:, 0].long().view(n, 1, 1, 1, 1, 1, 1) * (height * width)
           + iy[:, :, None, :, None, :, None] * width + ix[:, None, :, None, :, None, :])
    weight = (wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
              / count.view(n, 1, 1, 1, 1, 1, 1))
    row = torch.arange(n * out_h * out_w, device=rois.device).view(n, out_h, out_w, 1, 1, 1, 1)
    keep = weight != 0
    indices = torch.stack([row.expand_as(col)[keep], col[keep]])
    matrix = torch.sparse_coo_tensor(indices, weight[keep],
                                     (n * out_h * out_w, batch * height * width),
                                     check_invariants=False)
    return matrix.coalesce()


def roi_align_sparse(feat: Tensor, rois: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int = 0,
                     aligned: bool = True) -> Tensor:
    """mmcv's ``roi_align`` (avg mode) as a sparse-dense product; differentiable in ``feat``."""
    batch, channels, height, width = feat.shape
    matrix = roi_align_matrix(rois.detach(), (batch, height, width), output_size,
                              spatial_scale, sampling_ratio, aligned, feat.dtype)
    pixels = feat.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    out = torch.sparse.mm(matrix, pixels)
    return out.view(-1, *output_size, channels).permute(0, 3, 1, 2).contiguous()


class SparseRoIAlign(RoIAlign):
    """``mmcv.ops.RoIAlign`` with the sparse-matrix path on the CPU (same arguments)."""

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # noqa: A002  (mmcv's name)
        if (input.device.type != 'cpu' or self.pool_mode != 'avg' or self.use_torchvision
                or input.dtype not in (torch.float32, torch.float64)):
            return super().forward(input.contiguous(), rois)  # mmcv's kernels index NCHW memory
        return roi_align_sparse(input, rois, self.output_size, self.spatial_scale,
                                self.sampling_ratio, self.aligned)


mmcv.ops.SparseRoIAlign = SparseRoIAlign
