"""A whole two-stage detector (Mask R-CNN, Cascade Mask R-CNN) as one standard-ONNX graph.

mmdet's ``predict`` cannot be exported as is: its Python control flow and data-dependent shapes
(score filtering, NMS) do not trace. ``OnnxDetector`` runs the trained detector's own modules
(backbone, FPN, RPN convolutions, box and mask heads, mmdet's box decoding and RoI level mapping)
and redoes mmdet's test-time post-processing with fixed shapes: every selection is a ``topk`` of
a fixed ``k`` over scores masked with ``-inf``, candidates padded first so that ``k`` fits at
every input size, and only the output of NMS itself (ONNX ``NonMaxSuppression``) has a
data-dependent length: it is scattered back into a fixed-size boolean mask at once. RoIAlign is
ONNX ``RoiAlign``. Every node is in the default ONNX domain, so a plain ``onnxruntime`` runs the
file without any custom-op library. ONNX Runtime's ``NonMaxSuppression`` suppresses a box whose
IoU is above the threshold and keeps one at exactly the threshold, as mmcv's ``nms``; its
``RoiAlign`` with ``half_pixel`` is torchvision's and mmcv's aligned RoIAlign
(tests/test_export_detector.py checks both).

The file's contract (what ``tools/test.py`` and ``tools/infer.py`` read):

- input ``image``: float32 (1, 3, H, W), normalised as the data preprocessor does, not padded;
  the graph pads bottom/right with zeros to ``pad_size_divisor`` and clips boxes to (H, W);
- outputs ``boxes`` (1, K, 4) x1, y1, x2, y2 in the input's pixels, ``scores`` (1, K),
  ``labels`` int64 (1, K), ``masks`` (1, K, M, M): the mask head's probabilities of each box's
  own label, before pasting. K = ``test_cfg.rcnn.max_per_img``; rows sorted by descending score;
  rows with score <= 0 are padding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

OUTPUTS = ('boxes', 'scores', 'labels', 'masks')
# RoI layers whose numbers are ONNX RoiAlign's (avg mode)
ROI_LAYERS = ('RoIAlign', 'SparseRoIAlign')


def _topk_padded(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of ``scores`` (1-d) at any length: missing rows have score ``-inf`` and an
    index clamped into range (callers gather with it and mask by the score)."""
    n = scores.shape[0]
    padded = torch.cat([scores, scores.new_full((k,), -math.inf)])
    values, index = padded.topk(k)
    return values, index.clamp(max=n - 1)


def nms_first(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int) -> Tensor:
    """The first ``max_keep`` boxes NMS keeps, by descending score (torchvision's ``nms``).

    Whether NMS keeps a box depends only on the boxes scored above it, so these are exactly the
    best ``max_keep`` of all kept boxes, and the NMS can stop there: in ONNX it is
    ``NonMaxSuppression`` with ``max_output_boxes_per_class=max_keep``. Without the bound, ONNX
    Runtime compares each of the 80,000 box-class candidates of a COCO detector at
    ``score_thr=0`` with every box kept so far (seconds a image).
    """
    from torchvision.ops import nms
    return nms(boxes, scores, iou_threshold)[:max_keep]


def _nms_first_fake(boxes: Tensor, scores: Tensor, iou_threshold: float,
                    max_keep: int) -> Tensor:
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


def nms_first_onnx(boxes, scores, iou_threshold: float, max_keep: int):
    """``nms_first`` as ONNX ``NonMaxSuppression`` (one batch, one class)."""
    from onnxscript import opset18 as op
    selected = op.NonMaxSuppression(op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]),
                                    max_keep, iou_threshold)
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


# An op of its own, so that the export can translate it: torch >= 2.4, which the dynamo export
# needs anyway (older torch still imports this module, for the ONNX Runtime side).
ONNX_TRANSLATIONS = {}
if hasattr(torch.library, 'custom_op'):
    nms_first = torch.library.custom_op('inceptionnext_dense::nms_first',
                                        mutates_args=())(nms_first)
    nms_first.register_fake(_nms_first_fake)
    ONNX_TRANSLATIONS[torch.ops.inceptionnext_dense.nms_first.default] = nms_first_onnx


def _nms_keep(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, valid: Tensor,
              nms_cfg: dict, max_keep: int) -> Tensor:
    """mmcv's ``batched_nms`` (one NMS over boxes offset per group, the offset from the largest
    coordinate of the valid boxes; none with ``class_agnostic``) as a boolean mask of the
    ``max_keep`` best kept boxes among the valid ones.

    The invalid boxes are moved onto one box beyond every group: they suppress nothing valid and
    each other, so NMS stays cheap however many there are.
    """
    if nms_cfg.get('class_agnostic', False):
        groups = torch.zeros_like(groups)
    step = torch.where(valid[:, None], boxes, torch.zeros_like(boxes)).max() + 1
    shifted = boxes + (groups.to(boxes.dtype) * step)[:, None]
    parked = (torch.tensor([0., 0., 1., 1.], dtype=boxes.dtype, device=boxes.device)
              + num_groups * step)
    shifted = torch.where(valid[:, None], shifted, parked)
    keep = nms_first(shifted, torch.where(valid, scores, torch.full_like(scores, -1.0)),
                     float(nms_cfg['iou_threshold']), max_keep)
    kept = torch.zeros_like(valid).index_fill(0, keep, True)
    return kept & valid


def _roi_layer_args(extractor: nn.Module) -> list[tuple[float, tuple[int, int], int, bool]]:
    """(spatial_scale, output_size, sampling_ratio, aligned) of each level of an mmdet
    ``SingleRoIExtractor`` whose layers are RoIAlign in avg mode (ONNX RoiAlign's numbers)."""
    if type(extractor).__name__ != 'SingleRoIExtractor':
        raise ConfigError(f'{type(extractor).__name__}: only SingleRoIExtractor exports to ONNX')
    args = []
    for layer in extractor.roi_layers:
        name = type(layer).__name__
        if name not in ROI_LAYERS or getattr(layer, 'pool_mode', 'avg') != 'avg':
            raise ConfigError(f'RoI layer {name}: only RoIAlign (avg) exports to standard ONNX')
        args.append((float(layer.spatial_scale), tuple(layer.output_size),
                     max(int(layer.sampling_ratio), 0), bool(layer.aligned)))
    return args


class RoIFeatures(nn.Module):
    """mmdet's ``SingleRoIExtractor`` for fixed-size RoI sets: each RoI is pooled from the level
    ``map_roi_levels`` gives it. One RoiAlign per level reads all RoIs, those of other levels
    replaced by an empty box, which samples nothing (cost and, when aligned, value zero: the
    levels' outputs are then just summed)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.levels = _roi_layer_args(extractor)

    def forward(self, feats: tuple[Tensor, ...], boxes: Tensor) -> Tensor:
        from torchvision.ops import roi_align
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        level = self.extractor.map_roi_levels(rois, len(self.levels))
        out = None
        for i, (scale, size, ratio, aligned) in enumerate(self.levels):
            mine = (level == i)[:, None]
            pooled = roi_align(feats[i], torch.where(mine, rois, torch.zeros_like(rois)), size,
                               scale, ratio, aligned)
            if not aligned:  # legacy mode samples empty boxes as 1x1
                pooled = torch.where(mine[:, :, None, None], pooled, torch.zeros_like(pooled))
            out = pooled if out is None else out + pooled
        return out


def check_exportable(detector: nn.Module) -> None:
    """Refuse (``ConfigError``, with the reason) what ``OnnxDetector`` does not reimplement."""
    from mmdet.models.detectors import TwoStageDetector
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    name = type(detector).__name__
    if not isinstance(detector, TwoStageDetector) or detector.rpn_head is None:
        raise ConfigError(f'{name}: --part detector exports two-stage detectors with an RPN '
                          '(Mask R-CNN, Cascade Mask R-CNN); use --part features')
    rpn, roi = detector.rpn_head, detector.roi_head
    if type(rpn).__name__ != 'RPNHead' or type(rpn.prior_generator).__name__ != 'AnchorGenerator':
        raise ConfigError(f'{type(rpn).__name__}: only RPNHead with AnchorGenerator exports')
    if type(roi) not in (StandardRoIHead, CascadeRoIHead) or not roi.with_mask:
        raise ConfigError(f'{type(roi).__name__}: only StandardRoIHead and CascadeRoIHead with '
                          'a mask head export')
    heads = roi.bbox_head if isinstance(roi, CascadeRoIHead) else [roi.bbox_head]
    for head in [rpn, *heads]:
        if type(head.bbox_coder) is not DeltaXYWHBBoxCoder:
            raise ConfigError(f'{type(head.bbox_coder).__name__}: only DeltaXYWHBBoxCoder exports')
    for head in heads:
        if head.custom_cls_channels or head.custom_activation:
            raise ConfigError(f'{type(head).__name__}: a custom classification activation '
                              'does not export')
    masks = roi.mask_head if isinstance(roi, CascadeRoIHead) else [roi.mask_head]
    for head in masks:
        if type(head).__name__ != 'FCNMaskHead':
            raise ConfigError(f'{type(head).__name__}: only FCNMaskHead exports')
    cfg = detector.test_cfg
    for stage in ('rpn', 'rcnn'):
        nms = cfg[stage].get('nms', {})
        if nms.get('type', 'nms') != 'nms':
            raise ConfigError(f'test_cfg.{stage}.nms.type={nms.get("type")!r}: only nms exports')
    if not cfg.rpn.get('nms_pre', -1) > 0 or not cfg.rpn.get('max_per_img', -1) > 0:
        raise ConfigError('test_cfg.rpn: nms_pre and max_per_img must be positive to export')
    if not cfg.rcnn.get('max_per_img', -1) > 0:
        raise ConfigError('test_cfg.rcnn.max_per_img must be positive to export')


class OnnxDetector(nn.Module):
    """``image`` (1, 3, H, W) -> ``boxes, scores, labels, masks`` as mmdet's ``predict`` with
    ``rescale=False`` finds them (see the module's docstring for the layout).

    Holds ``detector`` (fuse its backbone before, if wanted) and uses its modules and weights.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        check_exportable(detector)
        from mmdet.models.roi_heads import CascadeRoIHead
        self.detector = detector
        roi = detector.roi_head
        self.cascade = isinstance(roi, CascadeRoIHead)
        if self.cascade:
            bbox_extractors, mask_extractors = roi.bbox_roi_extractor, roi.mask_roi_extractor
        else:
            bbox_extractors, mask_extractors = [roi.bbox_roi_extractor], [roi.mask_roi_extractor]
        self.bbox_rois = nn.ModuleList(RoIFeatures(e) for e in bbox_extractors)
        self.mask_rois = nn.ModuleList(RoIFeatures(e) for e in mask_extractors)
        self.bbox_heads = list(roi.bbox_head) if self.cascade else [roi.bbox_head]
        self.mask_heads = list(roi.mask_head) if self.cascade else [roi.mask_head]
        pre = detector.data_preprocessor
        self.pad_divisor = int(getattr(pre, 'pad_size_divisor', 1))
        self.rpn_cfg, self.rcnn_cfg = detector.test_cfg.rpn, detector.test_cfg.rcnn

    @property
    def num_classes(self) -> int:
        return int(self.bbox_heads[-1].num_classes)

    def _decode(self, coder: nn.Module, priors: Tensor, deltas: Tensor, height, width) -> Tensor:
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
        return delta2bbox(priors, deltas, coder.means, coder.stds, (height, width),
                          clip_border=coder.clip_border, add_ctr_clamp=coder.add_ctr_clamp,
                          ctr_clamp=coder.ctr_clamp)

    def proposals(self, feats: tuple[Tensor, ...], height, width) -> tuple[Tensor, Tensor]:
        """RPNHead's ``predict`` for one image: (max_per_img, 4) boxes and whether each row is
        a proposal (the rest is padding)."""
        rpn, cfg = self.detector.rpn_head, self.rpn_cfg
        priors = rpn.prior_generator.grid_priors([f.shape[-2:] for f in feats],
                                                 dtype=feats[0].dtype, device=feats[0].device)
        boxes, scores, levels = [], [], []
        for level, (feat, anchors) in enumerate(zip(feats, priors)):
            cls_score, bbox_pred = rpn.forward_single(feat)
            score = cls_score[0].permute(1, 2, 0).reshape(-1).sigmoid()
            delta = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
            score, index = _topk_padded(score, int(cfg.nms_pre))
            boxes.append(self._decode(rpn.bbox_coder, anchors[index], delta[index],
                                      height, width))
            scores.append(score)
            levels.append(torch.full_like(index, level))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        valid = torch.isfinite(scores)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            valid &= (wh[:, 0] > min_size) & (wh[:, 1] > min_size)
        kept = _nms_keep(boxes, scores, levels, len(feats), valid, cfg.nms,
                         int(cfg.max_per_img))
        score, index = _topk_padded(torch.where(kept, scores, -math.inf), int(cfg.max_per_img))
        return boxes[index], torch.isfinite(score)

    def _refine(self, head: nn.Module, boxes: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                height, width) -> Tensor:
        """CascadeRoIHead's refinement: each RoI regressed by its best class of the stage."""
        if not head.reg_class_agnostic:
            label = cls_score[:, :-1].argmax(dim=1)
            bbox_pred = bbox_pred.view(bbox_pred.shape[0], -1, 4)
            bbox_pred = bbox_pred.gather(1, label[:, None, None].expand(-1, 1, 4))[:, 0]
        return self._decode(head.bbox_coder, boxes, bbox_pred, height, width)

    def detections(self, feats: tuple[Tensor, ...], boxes: Tensor, valid: Tensor, height,
                   width) -> tuple[Tensor, Tensor, Tensor]:
        """The RoI head's box branch and ``multiclass_nms``: (K, 4) boxes, (K,) scores (-inf on
        padding rows), (K,) labels."""
        cls_scores, bbox_pred = [], None
        for stage, (extract, head) in enumerate(zip(self.bbox_rois, self.bbox_heads)):
            if stage:
                boxes = self._refine(self.bbox_heads[stage - 1], boxes, cls_scores[-1],
                                     bbox_pred, height, width)
            cls_score, bbox_pred = head(extract(feats, boxes))
            cls_scores.append(cls_score)
        head, cfg = self.bbox_heads[-1], self.rcnn_cfg
        scores = F.softmax(sum(cls_scores) / len(cls_scores), dim=-1)[:, :-1]
        num, classes = scores.shape
        decoded = self._decode(head.bbox_coder, boxes, bbox_pred, height, width)
        decoded = decoded.view(num, -1, 4).expand(num, classes, 4).reshape(-1, 4)
        labels = torch.arange(classes, device=scores.device).repeat(num)
        valid = ((scores > cfg.score_thr) & valid[:, None]).reshape(-1)
        scores = scores.reshape(-1)
        kept = _nms_keep(decoded, scores, labels, classes, valid, cfg.nms,
                         int(cfg.max_per_img))
        score, index = _topk_padded(torch.where(kept, scores, -math.inf), int(cfg.max_per_img))
        return decoded[index], score, labels[index]

    def masks(self, feats: tuple[Tensor, ...], boxes: Tensor, labels: Tensor) -> Tensor:
        """(K, M, M) mask probabilities of each box's label (the mean over a cascade's stages,
        as mmdet's ``merge_aug_masks``)."""
        probs = []
        for extract, head in zip(self.mask_rois, self.mask_heads):
            logits = head(extract(feats, boxes))
            if not head.class_agnostic:
                logits = logits.gather(1, labels[:, None, None, None].expand(
                    -1, 1, *logits.shape[-2:]))
            probs.append(logits[:, 0].sigmoid())
        return sum(probs) / len(probs)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2:]
        d = self.pad_divisor
        image = F.pad(image, (0, (width + d - 1) // d * d - width,
                              0, (height + d - 1) // d * d - height))
        feats = tuple(self.detector.extract_feat(image))
        proposals, valid = self.proposals(feats, height, width)
        boxes, scores, labels = self.detections(feats, proposals, valid, height, width)
        found = torch.isfinite(scores)
        boxes = torch.where(found[:, None], boxes, torch.zeros_like(boxes))
        scores = torch.where(found, scores, torch.zeros_like(scores))
        labels = torch.where(found, labels, torch.zeros_like(labels))
        masks = self.masks(feats, boxes, labels)
        return boxes[None], scores[None], labels[None], masks[None]


def _mask_size(head: nn.Module) -> int:
    """The side of an FCNMaskHead's output: its RoI size, times the upsampling factor."""
    return int(head.roi_feat_size[0] * (head.scale_factor if head.upsample is not None else 1))


def detector_metadata(detector: nn.Module) -> dict:
    """What the runtime side checks a file against its config with, and what it needs to turn
    the outputs into mmdet's results (``mask_thr_binary``)."""
    check_exportable(detector)
    rpn, rcnn = detector.test_cfg.rpn, detector.test_cfg.rcnn
    roi = detector.roi_head
    mask_head = roi.mask_head[-1] if isinstance(roi.mask_head, nn.ModuleList) else roi.mask_head
    bbox_head = roi.bbox_head[-1] if isinstance(roi.bbox_head, nn.ModuleList) else roi.bbox_head
    return dict(
        output='boxes (1, K, 4) x1y1x2y2 in input pixels, scores (1, K), labels int64 (1, K), '
               'masks (1, K, M, M) probabilities of the own label before pasting; rows sorted '
               'by descending score; score <= 0: padding',
        detector=type(detector).__name__, roi_head=type(roi).__name__,
        num_stages=int(getattr(roi, 'num_stages', 1)),
        num_classes=int(bbox_head.num_classes), mask_size=_mask_size(mask_head),
        max_per_img=int(rcnn.max_per_img), score_thr=float(rcnn.score_thr),
        nms_iou=float(rcnn.nms.iou_threshold), mask_thr_binary=float(rcnn.mask_thr_binary),
        rpn=dict(nms_pre=int(rpn.nms_pre), max_per_img=int(rpn.max_per_img),
                 nms_iou=float(rpn.nms.iou_threshold),
                 min_bbox_size=float(rpn.get('min_bbox_size', -1))),
        pad_size_divisor=int(getattr(detector.data_preprocessor, 'pad_size_divisor', 1)),
        batch=1)


def check_image(height: int, width: int, generator: torch.Generator) -> Tensor:
    """A BGR image (3, H, W) of flat colour patches, values 0-255: closer to what detectors see
    than pixel noise, so that a trained detector finds something to compare."""
    coarse = torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=generator)
    return F.interpolate(coarse * 255, size=(height, width), mode='nearest')[0].round()


def pytorch_detections(detector: nn.Module, bgr: Tensor):
    """mmdet's own ``predict`` of one BGR image (3, H, W) through the detector's data
    preprocessor, ``rescale=False``: what the file must find."""
    from mmdet.structures import DetDataSample
    height, width = bgr.shape[-2:]
    meta = dict(ori_shape=(height, width), img_shape=(height, width), scale_factor=(1.0, 1.0))
    data = dict(inputs=[bgr], data_samples=[DetDataSample(metainfo=meta)])
    with torch.no_grad():
        data = detector.data_preprocessor(data, False)
        return detector.predict(data['inputs'], data['data_samples'], rescale=False)[0] \
            .pred_instances


def bgr_to_rgb(preprocessor: nn.Module) -> bool:
    """Whether a data preprocessor swaps BGR to RGB (mmseg's attribute is public, mmengine's
    private)."""
    return bool(getattr(preprocessor, 'channel_conversion',
                        getattr(preprocessor, '_channel_conversion', False)))


def normalised(detector: nn.Module, bgr: Tensor) -> Tensor:
    """(1, 3, H, W) input of the file for a BGR image, as the data preprocessor normalises."""
    pre = detector.data_preprocessor
    image = bgr[[2, 1, 0]] if bgr_to_rgb(pre) else bgr
    return ((image - pre.mean.view(-1, 1, 1)) / pre.std.view(-1, 1, 1))[None]


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int,
                threshold: float) -> Tensor:
    """(K, H, W) masks of the file's (K, M, M) probabilities pasted as mmdet's FCNMaskHead does:
    booleans at ``threshold``, or, where it is negative, the probabilities as uint8 0-255; on a
    CPU one box at a time, into the box's own crop."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    binary = threshold >= 0
    pasted = torch.zeros(len(masks), height, width, device=boxes.device,
                         dtype=torch.bool if binary else torch.uint8)
    for i in range(len(masks)):
        crop, where = _do_paste_mask(masks[i:i + 1, None].float(), boxes[i:i + 1], height, width,
                                     skip_empty=boxes.device.type == 'cpu')
        pasted[(slice(i, i + 1), *where)] = (crop >= threshold if binary
                                             else (crop * 255).to(torch.uint8))
    return pasted


def compare_detections(found: Sequence[np.ndarray], ref, cutoff: float, mask_thr: float,
                       box_tol: float = 0.05, score_tol: float = 1e-3) -> dict:
    """Match the file's ``boxes, scores, labels, masks`` (batch 1) with mmdet's ``ref``
    detections; returns ``problem`` (None if they agree) and the numbers.

    Each detection must have a partner of the same label, box and score (within ``box_tol``
    pixels and ``score_tol``) whose pasted mask agrees on all but 2% of their union (2 pixels
    for tiny masks). Only two kinds of detection may be missing, as an order that does not
    exist decides them: those whose score is within ``score_tol`` of where a side stopped
    (``cutoff``: the score threshold, or the lowest score when all K rows are used), and those
    tied (the same label and score to 1e-6) with another of their side, which NMS may keep
    instead.
    """
    def tied(all_scores: Tensor, all_labels: Tensor, i: int) -> bool:
        same = (all_labels == all_labels[i]) & ((all_scores - all_scores[i]).abs() <= 1e-6)
        return int(same.sum()) > 1

    boxes, scores, labels, masks = (torch.from_numpy(np.asarray(a)[0]) for a in found)
    real = scores > 0
    boxes, scores, labels, masks = boxes[real], scores[real], labels[real], masks[real]
    height, width = ref.masks.shape[-2:] if len(ref) else (0, 0)
    ours_pasted = paste_masks(masks, boxes, height, width, mask_thr) if len(ref) else None
    k = found[1].shape[1]
    ours_cut = float(scores.min()) if len(scores) == k else cutoff
    ref_cut = float(ref.scores.min()) if len(ref) == k else cutoff
    used = torch.zeros(len(scores), dtype=torch.bool)
    box_err = score_err = 0.0
    worst_mask = 1.0
    for i in range(len(ref)):
        close = ((labels == ref.labels[i]) & ~used
                 & ((boxes - ref.bboxes[i]).abs().amax(1) <= box_tol)
                 & ((scores - ref.scores[i]).abs() <= score_tol))
        if not close.any():
            if (float(ref.scores[i]) > ours_cut + score_tol
                    and not tied(ref.scores, ref.labels, i)):
                return dict(problem=f'PyTorch detection {i} (label {int(ref.labels[i])}, score '
                                    f'{float(ref.scores[i]):.4f}) is missing')
            continue
        j = int(torch.nonzero(close)[0])
        used[j] = True
        box_err = max(box_err, float((boxes[j] - ref.bboxes[i]).abs().max()))
        score_err = max(score_err, float((scores[j] - ref.scores[i]).abs()))
        union = int((ours_pasted[j] | ref.masks[i]).sum())
        wrong = int((ours_pasted[j] ^ ref.masks[i]).sum())
        if wrong > max(2, 0.02 * union):
            return dict(problem=f'the mask of detection {i} differs in {wrong} of {union} pixels')
        worst_mask = min(worst_mask, 1 - wrong / max(union, 1))
    extra = [j for j in range(len(scores))
             if not used[j] and float(scores[j]) > ref_cut + score_tol
             and not tied(scores, labels, j)]
    if extra:
        return dict(problem=f'detection {extra[0]} (label {int(labels[extra[0]])}, score '
                            f'{float(scores[extra[0]]):.4f}) is not in PyTorch\'s')
    return dict(problem=None, matched=int(used.sum()), pytorch=len(ref), found=len(scores),
                box_error=box_err, score_error=score_err, mask_iou=worst_mask)
