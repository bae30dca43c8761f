"""The whole Mask R-CNN / Cascade Mask R-CNN in one standard-ONNX file (export.py --part
detector): no custom op, the detections of mmdet's own predict, the ops' semantics it relies on."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import ATTO, DET_TAIL, FAMILIES, assert_one_line_error, run_here, write_config

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

# Small heads and few classes: quick to export and run; the post-processing is the configs'.
SMALL = ("model.neck.out_channels=32 model.rpn_head.in_channels=32 "
         "model.rpn_head.feat_channels=32 model.roi_head.bbox_roi_extractor.out_channels=32 "
         "model.roi_head.mask_roi_extractor.out_channels=32 "
         "model.test_cfg.rpn.nms_pre=200 model.test_cfg.rpn.max_per_img=100 "
         "model.test_cfg.rcnn.max_per_img=30")
MASK_RCNN = (f"{SMALL} model.roi_head.bbox_head.in_channels=32 "
             "model.roi_head.bbox_head.fc_out_channels=64 model.roi_head.bbox_head.num_classes=5 "
             "model.roi_head.mask_head.in_channels=32 "
             "model.roi_head.mask_head.conv_out_channels=32 model.roi_head.mask_head.num_classes=5")
CHECKS = ['--check-shapes', '64x64', '48x80']


def _build(cfg_path: str, options: list[str]) -> nn.Module:
    from mmengine.config import DictAction

    from backbones.config import build_model, load_config
    parsed = {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in options)}
    return build_model(load_config(cfg_path, parsed)).eval()


@torch.no_grad()
def _spread_heads_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Head weights of a trained scale: mmdet's std-0.01 initialisation scores every box and
    class alike, and a float rounding would then decide between ties."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if name.startswith(('rpn_head', 'roi_head')) and isinstance(
                m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            fan_in = m.weight.shape[0] if isinstance(m, nn.ConvTranspose2d) else m.weight[0].numel()
            m.weight.normal_(0, 1 / fan_in ** 0.5, generator=g)
            if m.bias is not None:
                m.bias.normal_(0, 0.5, generator=g)
    return model


def _tiny(folder: Path, family: str, extra: str, root: str) -> SimpleNamespace:
    base, _, overrides = FAMILIES[family]
    cfg = write_config(folder, base, DET_TAIL, root=root, iters=1)
    options = [*ATTO.split(), *overrides.split(), *extra.split()]
    torch.manual_seed(0)
    model = _spread_heads_(_build(cfg, options))
    ckpt = folder / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return SimpleNamespace(cfg=cfg, options=options, ckpt=str(ckpt), model=model)


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory, tiny_data) -> SimpleNamespace:
    """A tiny Mask R-CNN exported by the tool (its default part for an mmdet config)."""
    folder = tmp_path_factory.mktemp('mask_rcnn')
    run = _tiny(folder, 'mask_rcnn', MASK_RCNN, tiny_data['det'])
    run.out = folder / 'detector.onnx'
    run.code, stdout, stderr = run_here('deployment/export.py', run.cfg, run.ckpt, run.out,
                                        *CHECKS, '--cfg-options', *run.options)
    run.printed = stdout + stderr
    run.folder = folder
    return run


def test_export_tool_writes_a_checked_detector(mask_rcnn):
    run = mask_rcnn
    assert run.code == 0, run.printed[-3000:]
    lines = [x for x in run.printed.splitlines() if x.startswith('ONNX Runtime vs PyTorch')]
    assert len(lines) == 2 and all(' detections matched' in x for x in lines), run.printed[-2000:]
    assert '1x3x48x80' in lines[1] and 'exported detector of' in run.printed
    assert run.out.is_file() and not list(run.folder.glob('*.tmp'))


def test_file_is_standard_onnx_and_runs_in_a_plain_session(mask_rcnn):
    """Every node in the default domain (no custom-op library needed), the contract's inputs,
    outputs and metadata, and a default InferenceSession runs it at a size of its own."""
    from backbones.deploy.onnx_export import read_metadata
    model = onnx.load(str(mask_rcnn.out))
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    assert {n.domain for n in nodes} <= {'', 'ai.onnx'}
    assert {o.domain for o in model.opset_import} <= {'', 'ai.onnx'}
    assert 'NonMaxSuppression' in {n.op_type for n in nodes}
    assert 'RoiAlign' in {n.op_type for n in nodes}
    session = ort.InferenceSession(str(mask_rcnn.out))
    dims = [d.dim_param or d.dim_value
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 'height', 'width']
    assert [o.name for o in session.get_outputs()] == ['boxes', 'scores', 'labels', 'masks']
    meta = read_metadata(session)
    assert meta['kind'] == 'detector' and meta['num_classes'] == 5
    assert meta['max_per_img'] == 30 and meta['mask_size'] == 28 and meta['bgr_to_rgb']
    boxes, scores, labels, masks = session.run(None, {'image': np.zeros((1, 3, 33, 70),
                                                                         np.float32)})
    assert boxes.shape == (1, 30, 4) and scores.shape == (1, 30) and labels.dtype == np.int64
    assert masks.shape == (1, 30, 28, 28)
    assert np.all(np.diff(scores[0]) <= 0) and (scores > 0).any()
    assert boxes[..., 2].max() <= 70 and boxes[..., 3].max() <= 33  # clipped to the input


def test_detections_equal_mmdet_predict_at_another_size(mask_rcnn):
    """Independently of the tool's check: a third size (odd, padded inside the graph), the
    same boxes, scores, labels and pasted masks as the model's own predict."""
    from backbones.deploy.onnx_detector import (
        check_image,
        compare_detections,
        normalised,
        paste_masks,
        pytorch_detections,
    )
    model = mask_rcnn.model
    session = ort.InferenceSession(str(mask_rcnn.out), providers=['CPUExecutionProvider'])
    bgr = check_image(77, 101, torch.Generator().manual_seed(5))
    found = session.run(None, {'image': normalised(model, bgr).numpy()})
    ref = pytorch_detections(model, bgr)
    n = int((found[1] > 0).sum())
    assert n == len(ref) == 30  # score_thr 0: every row is a detection
    result = compare_detections(found, ref, 0.0, 0.5)
    assert result['problem'] is None and result['matched'] == 30, result
    top = ref.scores > ref.scores[-1] + 1e-3  # all but near-ties at the cut: the same rows
    np.testing.assert_allclose(found[0][0, :int(top.sum())], ref.bboxes[top].numpy(), atol=0.05)
    np.testing.assert_array_equal(found[2][0, :int(top.sum())], ref.labels[top].numpy())
    pasted = paste_masks(torch.from_numpy(found[3][0, :n]), torch.from_numpy(found[0][0, :n]),
                         77, 101, 0.5)
    assert (pasted ^ ref.masks).sum() <= 0.01 * ref.masks.sum()


def test_a_file_of_other_weights_is_refused(mask_rcnn):
    """The check refuses a file that does not fit the model: one head weight changed."""
    from backbones.deploy.onnx_export import ExportMismatchError, check_detector_against_pytorch
    other = copy.deepcopy(mask_rcnn.model)
    with torch.no_grad():
        other.roi_head.bbox_head.fc_cls.bias[1] += 3
    check_detector_against_pytorch(str(mask_rcnn.out), mask_rcnn.model, [(1, 64, 64)])
    with pytest.raises(ExportMismatchError, match=r'differs from PyTorch at 1x3x64x64'):
        check_detector_against_pytorch(str(mask_rcnn.out), other, [(1, 64, 64)])


def test_torchvision_roi_align_equals_mmcv():
    """The graph's RoiAlign is torchvision's (aligned, adaptive sampling); mmcv's RoIAlign and
    SparseRoIAlign compute the same numbers, boxes past the border and empty boxes included."""
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align

    from backbones.ops.roi_align import SparseRoIAlign
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 8, 20, 27, generator=g)
    xy = torch.rand(60, 2, generator=g) * 120 - 10
    wh = torch.rand(60, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:3, 2:] = boxes[:3, :2]  # empty boxes
    rois = torch.cat([torch.zeros(60, 1), boxes], 1)
    want = roi_align(feat, rois, (7, 7), 0.25, 0, True)
    for layer in (RoIAlign((7, 7), 0.25, 0, aligned=True),
                  SparseRoIAlign((7, 7), 0.25, 0, aligned=True)):
        torch.testing.assert_close(layer(feat, rois), want, rtol=1e-5, atol=1e-5)
    assert want[:3].abs().max() == 0


def _ort_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node('NonMaxSuppression', ['b', 's', 'm', 'i'], ['k'])], 'nms',
        [helper.make_tensor_value_info('b', TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info('s', TensorProto.FLOAT, [1, 1, None])],
        [helper.make_tensor_value_info('k', TensorProto.INT64, [None, 3])],
        [helper.make_tensor('m', TensorProto.INT64, [1], [1000]),
         helper.make_tensor('i', TensorProto.FLOAT, [1], [iou])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 20)])
    session = ort.InferenceSession(model.SerializeToString())
    return session.run(None, {'b': boxes[None], 's': scores[None, None]})[0][:, 2].tolist()


@pytest.mark.parametrize('iou', [0.5, 0.25])
def test_onnx_runtime_nms_suppresses_as_mmcv(iou):
    """ONNX Runtime's NonMaxSuppression, like mmcv's nms, suppresses above the threshold and
    keeps a box at exactly the threshold; kept boxes come in descending score order."""
    from mmcv.ops import nms
    w = 1 / iou  # the IoU of [0, 0, 1, 1] and [0, 0, w, 1] is exactly the threshold
    boxes = np.array([[0, 0, 1, 1], [0, 0, w, 1], [0, 0, 1.05, 1], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.3], np.float32)
    _, keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
    assert keep.tolist() == [0, 1, 3]
    assert _ort_nms(boxes, scores, iou) == [0, 1, 3]


@pytest.mark.parametrize('overrides, fragment', [
    ("model.test_cfg.rcnn.nms.type='soft_nms'", "only nms exports"),
    ('model.test_cfg.rpn.nms_pre=-1', 'nms_pre and max_per_img must be positive')])
def test_unsupported_post_processing_is_one_line(tmp_path, tiny_data, overrides, fragment):
    cfg = write_config(tmp_path, FAMILIES['mask_rcnn'][0], DET_TAIL, root=tiny_data['det'],
                       iters=1)
    ckpt = tmp_path / 'model.pth'
    options = [*ATTO.split(), *FAMILIES['mask_rcnn'][2].split(), *MASK_RCNN.split(),
               *overrides.split()]
    ckpt.write_bytes(b'never read: the config is refused first')
    code, _, err = run_here('deployment/export.py', cfg, ckpt, tmp_path / 'x.onnx',
                            '--cfg-options', *options)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / 'x.onnx').exists()


CASCADE = ' '.join([SMALL, *(f'model.roi_head.bbox_head.{i}.{k}'
                             for i in range(3) for k in ('in_channels=32', 'conv_out_channels=32',
                                                         'fc_out_channels=64', 'num_classes=5')),
                    'model.roi_head.mask_head.in_channels=32',
                    'model.roi_head.mask_head.conv_out_channels=32',
                    'model.roi_head.mask_head.num_classes=5'])


@pytest.mark.slow
def test_cascade_mask_rcnn_exports_with_its_stages(tmp_path, tiny_data):
    """Cascade Mask R-CNN: 3 box stages refining the boxes, the class scores averaged over the
    stages and the masks of all stages averaged, as mmdet's CascadeRoIHead; the tool's check
    passes at two sizes."""
    from backbones.deploy.onnx_detector import OnnxDetector
    from backbones.deploy.onnx_export import export_checked, file_metadata
    run = _tiny(tmp_path, 'cascade', CASCADE, tiny_data['det'])
    assert isinstance(OnnxDetector(run.model).bbox_heads, list)
    path = tmp_path / 'cascade.onnx'
    meta = file_metadata(run.model, 'detector', run.cfg)
    results = export_checked(run.model, 'detector', str(path), [(1, 64, 64), (1, 48, 80)], meta)
    assert [r['problem'] for r in results] == [None, None]
    assert all(r['matched'] >= 25 for r in results), results
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {'', 'ai.onnx'}
    assert meta['num_stages'] == 3 and meta['roi_head'] == 'CascadeRoIHead'


def test_bounded_nms_is_the_first_boxes_of_full_nms(tmp_path):
    """``nms_first`` (ONNX NonMaxSuppression bounded by max_output_boxes_per_class) gives the
    first ``max_keep`` boxes of an unbounded NMS, in PyTorch and in ONNX Runtime."""
    import onnxruntime as ort
    from torchvision.ops import nms

    from backbones.deploy.onnx_detector import ONNX_TRANSLATIONS, nms_first

    class Bounded(torch.nn.Module):
        def forward(self, boxes, scores):
            return nms_first(boxes, scores, 0.5, 7)

    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(300, 2, generator=generator) * 50
    boxes = torch.cat([corner, corner + 5 + torch.rand(300, 2, generator=generator) * 20], 1)
    scores = torch.rand(300, generator=generator)
    full = nms(boxes, scores, 0.5)
    assert len(full) > 7 and nms_first(boxes, scores, 0.5, 7).tolist() == full[:7].tolist()
    path = tmp_path / 'nms.onnx'
    program = torch.onnx.export(Bounded(), (boxes, scores), dynamo=True, verbose=False,
                                input_names=['boxes', 'scores'],
                                dynamic_shapes=({0: 'n'}, {0: 'n'}),
                                custom_translation_table=ONNX_TRANSLATIONS)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    found = session.run(None, {'boxes': boxes.numpy(), 'scores': scores.numpy()})[0]
    assert found.tolist() == full[:7].tolist()
