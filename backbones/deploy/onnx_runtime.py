"""Exported files run by ONNX Runtime inside mmseg's and mmdet's own inference.

``tools/test.py`` and ``tools/infer.py`` (``--backend onnxruntime``) build the segmentor from the
config as usual and hand its network to the ``.onnx`` file: the data preprocessor, sliding windows,
test-time augmentation, the resize to the original image and the arg-max stay mmseg's, so a
metric computed this way measures the exported network and nothing else. A detector file
(``--part detector``) computes the whole Mask R-CNN; mmdet's data preprocessor still loads and
normalises, and the boxes and 28x28 masks come back into ``DetDataSample.pred_instances`` as
mmdet's ``predict(rescale=True)`` makes them (its own mask pasting), so mmdet's metric and
visualizer run unchanged. A detector's features file computes its backbone + FPN only; its RPN
and RoI heads stay PyTorch's.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError
from .onnx_export import read_metadata


class _InOnnxFile(nn.Module):
    """Stands in for a module whose computation the ONNX file holds; calling it is a bug."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f'{self.name} runs in ONNX Runtime; its PyTorch weights were dropped')


class OnnxNetwork:
    """An ONNX Runtime session on a file written by ``tools/deployment/export.py``.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (None: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort
        if not osp.isfile(path):
            raise CheckpointError(f'ONNX file not found: {path}')
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001  (any loader failure is a bad input file)
            raise CheckpointError(
                f'cannot load {path} in ONNX Runtime: {str(e).strip().splitlines()[0][:200]} '
                '(expected an .onnx file written by tools/deployment/export.py)') from None
        self.path = path
        self.metadata = read_metadata(self.session)
        self.kind = self.metadata.get('kind')
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(image.detach().float().cpu().numpy())
        outputs = self.session.run(None, {self.input_name: array})
        return [torch.from_numpy(out).to(image.device) for out in outputs]


class OnnxModule(nn.Module):
    """An exported backbone (or detector features) file as a module: ``forward(image)`` returns
    the file's outputs, as the PyTorch backbone returns its maps."""

    def __init__(self, path: str, threads: int | None = None):
        super().__init__()
        self.network = OnnxNetwork(path, threads)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.network(image)


def _unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _open_export(model: nn.Module, path: str, kind: str, threads: int | None) -> OnnxNetwork:
    """The file as a network, after checking that it is a ``kind`` export normalising its input
    as ``model``'s data preprocessor does (else ``CheckpointError``)."""
    network = OnnxNetwork(path, threads)
    if network.kind != kind:
        what = (f"a '{network.kind}' export" if network.kind
                else 'not written by tools/deployment/export.py')
        raise CheckpointError(f'{path} is {what}; expected a {kind} export of this config '
                              '(tools/deployment/export.py CONFIG CHECKPOINT OUT.onnx --part '
                              f'{kind})')
    preprocessor = model.data_preprocessor
    ours = dict(mean=preprocessor.mean.flatten().tolist(), std=preprocessor.std.flatten().tolist())
    for key, value in ours.items():
        if not np.allclose(value, network.metadata.get(key, []), rtol=1e-6):
            raise CheckpointError(f'{path} was exported with {key}={network.metadata.get(key)} '
                                  f'but the config normalises with {value}')
    swap = bool(getattr(preprocessor, 'channel_conversion',  # mmseg's name, mmengine's below
                        getattr(preprocessor, '_channel_conversion', False)))
    if network.metadata.get('bgr_to_rgb', swap) != swap:
        raise CheckpointError(f"{path} was exported with bgr_to_rgb={not swap} but the config's "
                              f'data preprocessor has bgr_to_rgb={swap}')
    return network


def run_segmentor_in_onnx_runtime(model: nn.Module, path: str,
                                  threads: int | None = None) -> OnnxNetwork:
    """Let ``model`` (an mmseg segmentor built from the config, or a wrapper of one) compute its
    backbone, neck and decode head with the exported file ``path``.

    The file must be a segmentor export whose normalisation and class count match the config;
    otherwise ``CheckpointError``. The replaced PyTorch modules are dropped so that nothing can
    silently run on their untrained weights.
    """
    model = _unwrap(model)
    if not hasattr(model, 'encode_decode') or not hasattr(model, 'decode_head'):
        raise CheckpointError(f'{path}: the config builds {type(model).__name__}, not an mmseg '
                              'segmentor; --backend onnxruntime evaluates whole segmentors')
    network = _open_export(model, path, 'segmentor', threads)
    classes = network.session.get_outputs()[0].shape[1]
    if classes != model.decode_head.out_channels:
        raise CheckpointError(f'{path} predicts {classes} classes but the config\'s decode head '
                              f'{model.decode_head.out_channels}; export with this config')

    def encode_decode(inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        logits = network(inputs)[0]  # already at the input's size, as whole inference makes it
        return model.decode_head.predict_by_feat(logits, batch_img_metas)

    model.encode_decode = encode_decode
    model.backbone = _InOnnxFile('backbone')
    if getattr(model, 'neck', None) is not None:
        model.neck = _InOnnxFile('neck')
    return network


def run_features_in_onnx_runtime(model: nn.Module, path: str,
                                 threads: int | None = None) -> OnnxNetwork:
    """Let ``model`` (an mmdet detector) compute its backbone + FPN maps with the features export
    ``path``; its RPN and RoI heads keep running in PyTorch on their own weights. The replaced
    backbone and neck are dropped, as for segmentors."""
    model = _unwrap(model)
    network = _open_export(model, path, 'features', threads)
    outputs, neck = network.session.get_outputs(), getattr(model, 'neck', None)
    want = getattr(neck, 'num_outs', None), getattr(neck, 'out_channels', None)
    if None not in want and (len(outputs), outputs[0].shape[1]) != want:
        raise CheckpointError(f'{path} gives {len(outputs)} maps of {outputs[0].shape[1]} '
                              f'channels but the config\'s neck {want[0]} of {want[1]}; export '
                              'with this config')
    model.extract_feat = lambda inputs: tuple(network(inputs))
    model.backbone, model.neck = _InOnnxFile('backbone'), _InOnnxFile('neck')
    return network


def _detector_classes(model: nn.Module) -> int | None:
    """The class count of an mmdet detector's (last) box head, if it has one."""
    head = getattr(getattr(model, 'roi_head', None), 'bbox_head', None)
    head = head[-1] if isinstance(head, nn.ModuleList) else head
    return getattr(head, 'num_classes', None)


def detections_to_instances(outputs: list[torch.Tensor], img_meta: dict, mask_thr: float,
                            rescale: bool = True):
    """A detector file's ``boxes, scores, labels, masks`` (batch 1, in the input's pixels) as
    mmdet's ``predict`` returns them: padding rows (score <= 0) dropped, boxes clipped to
    ``img_shape`` and divided by ``scale_factor`` (``rescale``), masks pasted into ``ori_shape``
    (else the resized image's size) by ``paste_masks`` (mmdet's ``_do_paste_mask``) and
    thresholded at ``mask_thr`` (``test_cfg.rcnn.mask_thr_binary``) as its FCNMaskHead does.

    Returns an ``InstanceData`` with ``bboxes``, ``scores``, ``labels`` and ``masks``.
    """
    from mmdet.models.utils import empty_instances
    from mmengine.structures import InstanceData

    from .onnx_detector import paste_masks
    boxes, scores, labels, masks = (o[0] for o in outputs)
    keep = scores > 0
    boxes, scores, labels, masks = boxes[keep].float(), scores[keep], labels[keep], masks[keep]
    results = InstanceData(bboxes=boxes, scores=scores, labels=labels.long())
    if len(boxes) == 0:
        return empty_instances([img_meta], boxes.device, task_type='mask',
                               instance_results=[results], mask_thr_binary=mask_thr)[0]
    img_h, img_w = img_meta['img_shape'][:2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
    scale = boxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
    out_h, out_w = img_meta['ori_shape'][:2]
    if rescale:
        boxes /= scale
    else:
        out_h, out_w = (int(np.round(n * s)) for n, s in zip((out_h, out_w),
                                                             (scale[0, 1], scale[0, 0])))
    results.bboxes, results.masks = boxes, paste_masks(masks, boxes, out_h, out_w, mask_thr)
    return results


def run_detector_in_onnx_runtime(model: nn.Module, path: str,
                                 threads: int | None = None) -> OnnxNetwork:
    """Let ``model`` (an mmdet Mask R-CNN built from the config, or a wrapper of one) predict with
    the whole-detector export ``path``: its data preprocessor still loads and normalises, each
    image goes to the file unpadded (cropped to its ``img_shape``, one per call) and the file's
    outputs become ``pred_instances`` (``detections_to_instances``).

    The file must be a detector export whose normalisation and class count match the config;
    otherwise ``CheckpointError``. The backbone, neck and heads are dropped.
    """
    model = _unwrap(model)
    classes = _detector_classes(model)
    if not hasattr(model, 'extract_feat') or classes is None:
        raise CheckpointError(f'{path}: the config builds {type(model).__name__}, not an mmdet '
                              'two-stage detector; a detector export needs one')
    network = _open_export(model, path, 'detector', threads)
    if network.metadata.get('num_classes') != classes:
        raise CheckpointError(f"{path} predicts {network.metadata.get('num_classes')} classes "
                              f"but the config's box head {classes}; export with this config")
    rcnn_cfg = model.test_cfg.rcnn
    mask_thr = float(rcnn_cfg.get('mask_thr_binary', 0.5))

    def predict(batch_inputs: torch.Tensor, batch_data_samples: list, rescale: bool = True
                ) -> list:
        for image, sample in zip(batch_inputs, batch_data_samples):
            height, width = sample.metainfo['img_shape'][:2]
            outputs = network(image[None, :, :height, :width])
            sample.pred_instances = detections_to_instances(outputs, sample.metainfo, mask_thr,
                                                            rescale)
        return batch_data_samples

    model.predict = predict
    for name in ('backbone', 'neck', 'rpn_head', 'roi_head'):
        if getattr(model, name, None) is not None:
            setattr(model, name, _InOnnxFile(name))
    return network
