"""A whole Mask R-CNN exported with ``--part detector`` evaluated and drawn through ONNX Runtime
(tools/test.py and tools/infer.py ``--backend onnxruntime``): the same detections and COCO AP
as the PyTorch checkpoint, and the refusals of files that do not fit the config."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    UPERNET_OVERRIDES,
    assert_one_line_error,
    run_here,
    run_tool_here,
    write_config,
)
from PIL import Image

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

# Seeded random weights score every class about 1/80: score_thr 0 keeps detections to compare;
# fewer proposals and detections than COCO's keep each image a fraction of a second.
SMALL_TEST_CFG = ['model.test_cfg.rcnn.score_thr=0.0', 'model.test_cfg.rcnn.max_per_img=20',
                  'model.test_cfg.rpn.nms_pre=200', 'model.test_cfg.rpn.max_per_img=100']


def _build(cfg_path: str, options: list[str]) -> torch.nn.Module:
    from mmengine.config import DictAction

    from backbones.config import build_model, load_config
    parsed = {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in options)}
    return build_model(load_config(cfg_path, parsed)).eval()


@pytest.fixture(scope='module')
def det(tmp_path_factory, tiny_data) -> SimpleNamespace:
    """A tiny Mask R-CNN config on the demo COCO set, a checkpoint of seeded random weights, and
    its ``--part detector`` export (tools/deployment/export.py)."""
    folder = tmp_path_factory.mktemp('det')
    base, tail, overrides = FAMILIES['mask_rcnn']
    cfg = write_config(folder, base, tail, root=tiny_data['det'])
    options = [*ATTO.split(), *overrides.split(), *SMALL_TEST_CFG]
    torch.manual_seed(0)
    model = _build(cfg, options)
    ckpt = folder / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    out = folder / 'detector.onnx'
    code, stdout, stderr = run_here('deployment/export.py', cfg, ckpt, out, '--part', 'detector',
                                    '--check-shapes', '64x64', '48x80', '--cfg-options',
                                    *options)
    assert code == 0, (stdout + stderr)[-3000:]
    return SimpleNamespace(cfg=cfg, options=options, ckpt=str(ckpt), out=str(out), model=model,
                           folder=folder, root=tiny_data['det'])


def _gt_from_predictions(det: SimpleNamespace, path: Path, per_image: int = 3) -> None:
    """A COCO annotation file of the val images whose objects are the PyTorch model's own
    ``per_image`` best detections, so that AP is far from 0 and sensitive to every box, label,
    score and mask."""
    import pycocotools.mask as mask_util
    from mmdet.apis import inference_detector
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.api_wrappers import COCO

    from backbones.config import load_config
    ann_file = Path(det.root) / 'annotations' / 'instances_val2017.json'
    coco, data = COCO(str(ann_file)), json.loads(ann_file.read_text())
    model = copy.deepcopy(det.model)
    model.cfg = load_config(det.cfg)
    cat_ids = coco.get_cat_ids(cat_names=CocoDataset.METAINFO['classes'])
    annotations = []
    for image in data['images']:
        file = Path(det.root) / 'val2017' / image['file_name']
        found = inference_detector(model, str(file)).pred_instances[:per_image]
        for box, label, mask in zip(found.bboxes.tolist(), found.labels.tolist(), found.masks):
            rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            x1, y1, x2, y2 = box
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image['id'], category_id=cat_ids[label],
                iscrowd=0, bbox=[x1, y1, x2 - x1, y2 - y1], area=float(mask.sum()),
                segmentation=dict(size=rle['size'], counts=rle['counts'].decode())))
    path.write_text(json.dumps({**data, 'annotations': annotations}))


def _metrics(work_dir: Path) -> dict:
    (log,) = work_dir.glob('*/*.json')
    return json.loads(log.read_text().splitlines()[-1])


def test_test_tool_gives_the_ap_and_detections_of_pytorch(det, tmp_path):
    """COCO bbox and segm AP through the file equal PyTorch's, and so do the detections dumped
    by --out (boxes rescaled to the original image, masks pasted at its size)."""
    gt = tmp_path / 'gt.json'
    _gt_from_predictions(det, gt)
    results = {}
    for backend, checkpoint in (('pytorch', det.ckpt), ('onnxruntime', det.out)):
        work, dump = tmp_path / backend, tmp_path / f'{backend}.pkl'
        proc = run_tool_here('tools/test.py', det.cfg, checkpoint, '--backend', backend,
                             '--work-dir', work, '--out', dump, '--cfg-options', *det.options,
                             f'test_dataloader.dataset.ann_file={gt}',
                             f'test_evaluator.ann_file={gt}')
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(dump, 'rb') as f:
            results[backend] = _metrics(work), pickle.load(f)
    (metrics, preds), (ort_metrics, ort_preds) = results['pytorch'], results['onnxruntime']
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert metrics[key] >= 0.5, metrics  # the model finds its own detections
        assert ort_metrics[key] == pytest.approx(metrics[key], abs=1e-3)
    import pycocotools.mask as mask_util
    assert len(preds) == len(ort_preds) == 2
    for ref, got in zip(preds, ort_preds):
        ref, got = ref['pred_instances'], got['pred_instances']
        assert len(ref['labels']) == len(got['labels']) > 0
        assert torch.equal(got['labels'], ref['labels'])
        torch.testing.assert_close(got['bboxes'], ref['bboxes'], rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(got['scores'], ref['scores'], rtol=1e-3, atol=1e-5)
        masks, ort_masks = (mask_util.decode(m['masks']).astype(bool) for m in (ref, got))
        union = (masks | ort_masks).sum((0, 1))
        assert ((masks ^ ort_masks).sum((0, 1)) <= 0.05 * union).all() and union.any()


def test_rescaled_image_matches_pytorch(det):
    """An image resized by the pipeline (scale_factor != 1): the file sees the resized image
    unpadded, the boxes come back divided by scale_factor and the masks at the original size."""
    from mmdet.structures import DetDataSample

    from backbones.deploy.onnx_runtime import run_detector_in_onnx_runtime
    in_ort = copy.deepcopy(det.model)
    run_detector_in_onnx_runtime(in_ort, det.out)
    assert not any(k.startswith(('backbone.', 'neck.', 'rpn_head.', 'roi_head.'))
                   for k in in_ort.state_dict())
    meta = dict(ori_shape=(100, 140), img_shape=(50, 70), scale_factor=(0.5, 0.5))
    g = torch.Generator().manual_seed(0)
    data = dict(inputs=[torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g)],
                data_samples=[DetDataSample(metainfo=meta)])
    with torch.no_grad():
        ref, got = (m.test_step(copy.deepcopy(data))[0].pred_instances
                    for m in (det.model, in_ort))
    assert len(got) == len(ref) > 0 and got.masks.shape == ref.masks.shape == (len(ref), 100, 140)
    assert torch.equal(got.labels, ref.labels)
    torch.testing.assert_close(got.bboxes, ref.bboxes, rtol=1e-3, atol=1e-2)
    assert got.bboxes[:, 2].max() > 70  # in the original image's pixels
    agree = (got.masks == ref.masks).float().mean()
    assert agree > 0.99 and got.masks.any()


def test_infer_tool_paints_the_detections(det, tmp_path):
    images = Path(det.root) / 'val2017'
    out_dir = tmp_path / 'drawn'
    code, stdout, stderr = run_here('infer.py', det.cfg, det.out, images, '--backend',
                                    'onnxruntime', '--out-dir', out_dir, '--score-thr', '0',
                                    '--cfg-options', *det.options)
    assert code == 0, (stdout + stderr)[-3000:]
    drawn = sorted(out_dir.glob('*.png'))
    assert [p.stem for p in drawn] == sorted(p.stem for p in images.glob('*.jpg'))
    for path in drawn:
        painted = np.asarray(Image.open(path).convert('RGB')).astype(int)
        source = np.asarray(Image.open(images / f'{path.stem}.jpg').convert('RGB')).astype(int)
        assert painted.shape == source.shape
        assert (np.abs(painted - source).max(-1) > 30).mean() > 0.05  # boxes and masks drawn


def _metadata(path: str) -> dict:
    """A file's metadata as ``read_metadata`` decodes it, without an ONNX Runtime session."""
    import onnx

    from backbones.deploy.onnx_export import META_PREFIX
    props = onnx.load(path, load_external_data=False).metadata_props
    return {p.key[len(META_PREFIX):]: json.loads(p.value) for p in props
            if p.key.startswith(META_PREFIX)}


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory):
    """``make(path, meta)``: a valid ONNX file (one convolution, exported once) carrying
    ``meta`` as our metadata, which is what the refusals read."""
    import onnx

    from backbones.deploy.onnx_export import META_PREFIX, export_onnx
    plain = tmp_path_factory.mktemp('tiny') / 'conv.onnx'
    export_onnx(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(2, 3, 32, 32), str(plain), {})

    def make(path: Path, meta: dict) -> str:
        proto = onnx.load(str(plain))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_PREFIX + key, json.dumps(value)
        onnx.save(proto, str(path))
        return str(path)
    return make


@pytest.mark.parametrize('change, message', [
    (dict(kind='features'), "is a 'features' export; expected a detector export of this config "
                            r'\(tools/deployment/export.py CONFIG CHECKPOINT OUT.onnx --part '
                            r'detector\)'),
    (dict(kind='backbone'), "is a 'backbone' export; expected a detector export"),
    (dict(kind='segmentor'), "is a 'segmentor' export; expected a detector export"),
    (dict(num_classes=3), "predicts 3 classes but the config's box head 80"),
    (dict(mean=[0.0, 0.0, 0.0]), r'was exported with mean=\[0.0, 0.0, 0.0\] but the config '
                                 'normalises with'),
    (dict(bgr_to_rgb=False), 'was exported with bgr_to_rgb=False'),
])
def test_files_that_do_not_fit_are_refused(det, tmp_path, tiny_file, change, message):
    from backbones.deploy.onnx_runtime import run_detector_in_onnx_runtime
    from backbones.errors import CheckpointError
    bad = tiny_file(tmp_path / 'bad.onnx', {**_metadata(det.out), **change})
    model = copy.deepcopy(det.model)
    with pytest.raises(CheckpointError, match=message):
        run_detector_in_onnx_runtime(model, bad)


def test_tools_refuse_in_one_line(det, tmp_path, tiny_file, seg_cfg, tiny_data):
    """A features file given to test.py for a detector names the export to make; a detector
    file given to infer.py for a segmentor config is refused too."""
    meta = {**_metadata(det.out), 'kind': 'features'}
    code, _, err = run_here('test.py', det.cfg, tiny_file(tmp_path / 'features.onnx', meta),
                            '--backend', 'onnxruntime', '--work-dir', tmp_path / 'work',
                            '--cfg-options', *det.options)
    assert_one_line_error(code, err, "is a 'features' export", '--part detector')
    code, _, err = run_here('infer.py', seg_cfg, det.out,
                            Path(tiny_data['seg']) / 'images' / 'validation', '--backend',
                            'onnxruntime', '--out-dir', tmp_path / 'drawn', '--cfg-options',
                            *ATTO.split(), *UPERNET_OVERRIDES)
    assert_one_line_error(code, err, "is a 'detector' export; expected a segmentor export")


def test_int8_calibration_inputs_and_matching(det):
    """What export.py --quantize int8 uses for a detector: calibration images through the test
    pipeline and preprocessor, unpadded; the fp32 file finds all its own detections again, and a
    file given shifted images does not."""
    import onnxruntime as ort

    from backbones.config import load_config
    from backbones.deploy.onnx_quantize import (
        calibration_images,
        calibration_inputs,
        matched_detections,
    )
    images = calibration_images(str(Path(det.root) / 'train2017'), 2)
    inputs = calibration_inputs(load_config(det.cfg), det.model.data_preprocessor, images,
                                unpadded=True)
    assert [i.shape for i in inputs] == [(1, 3, 64, 64)] * 2 and inputs[0].dtype == np.float32
    session = ort.InferenceSession(det.out, providers=['CPUExecutionProvider'])
    found, total = matched_detections(session, session, inputs, score_thr=0.0)
    assert found == total == 40  # max_per_img 20, twice

    class Shifted:  # the same file, run on the images moved 16 pixels right
        def run(self, names, feeds):
            return session.run(names, {'image': np.roll(feeds['image'], 16, axis=-1)})
    found, total = matched_detections(session, Shifted(), inputs, score_thr=0.0)
    assert found < total == 40
