"""The models ``benchmark.py`` compares, built alike: ours and mmpretrain's ConvNeXt from their
mmseg/mmdet configs (random weights), timm's InceptionNeXt with our weights, their ONNX Runtime
twins, and a synthetic annotated batch to train them on."""
from __future__ import annotations

import copy
import os.path as osp

import torch
import torch.nn as nn

from backbones import ARCH_SETTINGS
from backbones.config import build_model, load_config

SIZES = {'a': 'atto', 't': 'tiny', 's': 'small', 'b': 'base'}
UPERNET = ('configs/upernet/upernet_inceptionnext-{}_8xb2-160k_ade20k-512x512.py', 'mmseg',
           'configs/convnext/convnext-{}_upernet_8xb2-amp-160k_ade20k-512x512.py')
CONFIGS = {  # family: ours, package, upstream config in its .mim folder (T's if no such size)
    'backbone': UPERNET, 'upernet': UPERNET,
    'maskrcnn': ('configs/mask_rcnn/mask-rcnn_inceptionnext-{}_fpn_1x_coco.py', 'mmdet',
                 'configs/convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py')}
EXPORT_KIND = {'backbone': 'backbone', 'upernet': 'segmentor', 'maskrcnn': 'detector'}
TASK = {'backbone': 'backbone', 'upernet': 'seg', 'maskrcnn': 'det'}  # as get_flops.py
N_GT = 16  # objects (boxes + masks) per image of the synthetic detection batch
CALIB = 4  # random images that calibrate the int8 variants


def build(family: str, size: str, upstream: bool, shape: tuple[int, int], root: str,
          device: str = 'cpu') -> nn.Module:
    """Our model (from the configs/ of the repository ``root``) or the upstream ConvNeXt one
    (from the mmseg/mmdet configs installed with them) of a family and size, random weights;
    ``shape``: the input size, which UperNet pads to."""
    arch, (ours, package, path) = SIZES[size], CONFIGS[family]
    if upstream:
        import mmpretrain.models  # registers mmpretrain.ConvNeXt
        folder = osp.join(osp.dirname(__import__(package).__file__), '.mim')
        exists = osp.isfile(osp.join(folder, path.format(arch)))
        cfg = load_config(osp.join(folder, path.format(arch if exists else 'tiny')))
        dims = mmpretrain.models.ConvNeXt.arch_settings[arch]['channels']
    else:
        cfg = load_config(osp.join(root, ours.format('t' if size == 'a' else size)))
        dims = ARCH_SETTINGS[arch]['dims']
    cfg.model.backbone.arch, dims = arch, list(dims)
    if 'neck' in cfg.model:
        cfg.model.neck.in_channels = dims
    else:
        cfg.model.decode_head.in_channels, cfg.model.auxiliary_head.in_channels = dims, dims[2]
    if family == 'backbone':
        cfg.model = cfg.model.backbone
    elif family == 'upernet':  # no padding beyond the input, one whole-image pass at test time
        cfg.model.data_preprocessor.size, cfg.model.test_cfg = shape, dict(mode='whole')
    else:  # random weights score below 0.05: with score_thr 0 every box survives to NMS, which
        # leaves more than max_per_img (100): eager and ONNX Runtime box and mask 100 per image
        cfg.model.test_cfg.rcnn.score_thr = 0.0
        if size == 'a':  # the tests' model: 100 proposals (8000 boxes to NMS, not 80000), 10
            cfg.model.test_cfg.rpn.max_per_img, cfg.model.test_cfg.rcnn.max_per_img = 100, 10
    torch.manual_seed(0)
    return build_model(cfg).to(device)


class TimmFeatures(nn.Module):
    """timm's InceptionNeXt with the weights of ``ours`` and its per-output norms."""

    def __init__(self, ours: nn.Module, arch: str):
        super().__init__()
        import timm
        rate = max((m.drop_prob for m in ours.modules() if hasattr(m, 'drop_prob')), default=0.0)
        self.model = timm.create_model(f'inception_next_{arch}', drop_path_rate=rate)
        self.model.prune_intermediate_layers(prune_head=True)  # the classifier is not run
        missing, unexpected = self.model.load_state_dict(ours.state_dict(), strict=False)
        if missing or any(not k.startswith('norm') for k in unexpected):
            raise RuntimeError(f'timm weights do not match ours: {missing} {unexpected}')
        self.norms = nn.ModuleList(copy.deepcopy(getattr(ours, f'norm{i}'))
                                   for i in ours.out_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.forward_intermediates(x, intermediates_only=True)
        return tuple(norm(f) for norm, f in zip(self.norms, feats))


def synthetic_batch(family: str, batch: int, shape: tuple[int, int]) -> dict:
    """Random uint8 images with annotations, as a dataloader gives them."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    from mmseg.structures import SegDataSample
    g, (h, w), samples = torch.Generator().manual_seed(0), shape, []
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0))
    for _ in range(batch):
        if family == 'upernet':
            samples.append(SegDataSample(metainfo=meta, gt_sem_seg=PixelData(
                data=torch.randint(0, 150, (1, h, w), generator=g))))
            continue
        wh = torch.rand(N_GT, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 16
        xy = torch.rand(N_GT, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes, masks = torch.cat([xy, xy + wh], 1), np.zeros((N_GT, h, w), np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        samples.append(DetDataSample(metainfo=meta, gt_instances=InstanceData(
            bboxes=boxes, masks=BitmapMasks(masks, h, w),
            labels=torch.randint(0, 80, (N_GT,), generator=g))))
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in samples]
    return dict(inputs=images, data_samples=samples)


def in_onnx_runtime(model: nn.Module, family: str, path: str, shape: tuple[int, int],
                    threads: int | None = None, int8: bool = False) -> nn.Module:
    """A copy of ``model`` whose network runs the export ``path`` in ONNX Runtime as
    tools/test.py runs it: a segmentor's backbone, neck and decode head, a detector whole (the
    data preprocessor and the mask pasting stay PyTorch's, as in eager); exported once and
    checked against PyTorch."""
    from backbones.deploy.onnx_export import export_checked, file_metadata
    from backbones.deploy.onnx_quantize import quantize_int8, random_calibration_inputs
    from backbones.deploy.onnx_runtime import (
        OnnxModule,
        run_detector_in_onnx_runtime,
        run_segmentor_in_onnx_runtime,
    )
    kind = EXPORT_KIND[family]
    if not osp.isfile(path):
        meta = dict(kind=kind) if kind == 'backbone' else file_metadata(model, kind, path)
        check = export_checked(model, kind, path, [(1, *shape)], meta)[0]
        print(f'[benchmark] {osp.basename(path)}: ' + (
            f'relative error {check:.1e} vs PyTorch' if kind != 'detector' else
            f'{check["matched"]} of PyTorch\'s {check["pytorch"]} detections matched (boxes '
            f'within {check["box_error"]:.1e} px, scores {check["score_error"]:.1e})'))
    if int8:
        fp32, path = path, path[:-len('onnx')] + 'int8.onnx'
        quantize_int8(fp32, path, random_calibration_inputs(
            getattr(model, 'data_preprocessor', None), shape, CALIB))
    if kind == 'backbone':
        return OnnxModule(path, threads)
    model = copy.deepcopy(model)
    run = run_segmentor_in_onnx_runtime if kind == 'segmentor' else run_detector_in_onnx_runtime
    run(model, path, threads)
    return model
