"""ONNX export (tools/deployment/export.py) and evaluation through ONNX Runtime
(--backend onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import ATTO, FAMILIES, SEG_TAIL, run_here, run_tool_here, write_config
from PIL import Image

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from backbones.deploy.onnx_export import (  # noqa: E402
    ShapeFreeAdaptiveAvgPool2d,
    ShapeFreeUpsample,
    make_shapes_dynamic,
)

CHECKS = ['--check-shapes', '64x64', '2x96x64']


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (7, 5), (17, 64), (40, 53)])
@pytest.mark.parametrize('bins', [1, 2, 3, 6, (4, None)])
def test_shape_free_pooling_equals_adaptive_pooling(size, bins):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    want = nn.functional.adaptive_avg_pool2d(x, bins)
    got = ShapeFreeAdaptiveAvgPool2d(bins)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('scale, mode, align', [(2, 'bilinear', False), (4, 'nearest', None),
                                               (1.5, 'bilinear', True)])
def test_shape_free_upsample_equals_mmseg_upsample(scale, mode, align):
    from mmseg.models.utils import Upsample
    model = nn.Sequential(nn.Identity(), Upsample(scale_factor=scale, mode=mode,
                                                  align_corners=align))
    x = torch.randn(1, 2, 7, 10)
    want = model(x)
    assert make_shapes_dynamic(model) == 1 and isinstance(model[1], ShapeFreeUpsample)
    assert torch.equal(model(x), want)


def _build(cfg_path: str, options: list[str]) -> nn.Module:
    """The model of a config with ``--cfg-options`` strings applied, as the tools build it."""
    from mmengine.config import DictAction

    from backbones.config import build_model, load_config
    parsed = {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in options)}
    return build_model(load_config(cfg_path, parsed))


def _model_and_checkpoint(tmp_path: Path, family: str, root: str) -> tuple[str, list[str], str]:
    """A tiny config of ``family``, its overrides, and a whole-model checkpoint with random
    weights and non-trivial BatchNorm statistics and layer scales."""
    from torch.nn.modules.batchnorm import _BatchNorm
    base, tail, overrides = FAMILIES[family]
    cfg_path = write_config(tmp_path, base, tail, root=root, iters=1)
    options = [*ATTO.split(), *overrides.split()]
    torch.manual_seed(0)
    model = _build(cfg_path, options)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return cfg_path, ['--cfg-options', *options], str(ckpt)


def _relative_errors(onnx_file: str, ref: nn.Module, shape: tuple[int, ...]) -> list[float]:
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    x = torch.randn(*shape)
    outs = session.run(None, {'image': x.numpy()})
    with torch.no_grad():
        refs = ref(x)
    refs = [refs] if isinstance(refs, torch.Tensor) else list(refs)
    assert [o.shape for o in outs] == [tuple(r.shape) for r in refs]
    return [float(np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max())
            for o, r in zip(outs, refs)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory, tiny_data):
    """``get(family, part, int8)``: a tiny model, its checkpoint and its export (with an int8
    copy calibrated on the tiny training images if ``int8``), made once."""
    made = {}

    def get(family: str, part: str, int8: bool = False) -> SimpleNamespace:
        if (family, part, int8) not in made:
            folder = tmp_path_factory.mktemp(f'{family}_{part}')
            task = 'seg' if FAMILIES[family][1] is SEG_TAIL else 'det'
            cfg, options, ckpt = _model_and_checkpoint(folder, family, tiny_data[task])
            out = folder / f'{part}.onnx'
            quantize = (['--quantize', 'int8', '--calib-data',
                         f'{tiny_data["seg"]}/images/training', '--calib-num', '3'] if int8 else [])
            code, stdout, stderr = run_here('deployment/export.py', cfg, ckpt, out, '--part', part,
                                            *CHECKS, *quantize, *options)
            printed = stdout + stderr
            made[family, part, int8] = SimpleNamespace(
                cfg=cfg, options=options, ckpt=ckpt, out=out, code=code, printed=printed,
                folder=folder, int8=folder / f'{part}.int8.onnx')
        return made[family, part, int8]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('family, part, int8', [
    ('upernet', 'segmentor', True), ('sem_fpn', 'segmentor', False),
    ('mask_rcnn', 'features', False), ('upernet', 'backbone', False)])
def test_export_matches_pytorch_at_other_sizes(exported, family, part, int8):
    """The tool's own check passes, and an independent run at a third size (odd, not a multiple
    of 32, batch 3) agrees with the PyTorch model loaded from the same checkpoint."""
    import onnx

    from backbones.checkpoint import fit_model_checkpoint
    from backbones.deploy.onnx_export import BackboneFeatures, DetectorFeatures, SegmentorLogits
    run = exported(family, part, int8)
    assert run.code == 0, run.printed[-3000:]
    assert 'relative error' in run.printed and run.out.is_file()
    assert not list(run.folder.glob('*.tmp'))

    graph_input = onnx.load(str(run.out), load_external_data=False).graph.input[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']

    model = _build(run.cfg, run.options[1:]).eval()
    model.load_state_dict(fit_model_checkpoint(model, run.ckpt)[1], strict=False)
    ref = {'segmentor': SegmentorLogits, 'features': DetectorFeatures,
           'backbone': lambda m: BackboneFeatures(m.backbone)}[part](model)
    errors = _relative_errors(str(run.out), ref.eval(), (3, 3, 75, 101))
    assert max(errors) < 1e-4, errors
    assert run.int8.is_file() == int8


@pytest.mark.slow
def test_int8_export_is_quantized_and_close(exported):
    """The int8 file holds quantized convolutions, keeps the metadata and dynamic sizes, and
    labels nearly every pixel as the float model does (random weights, random input)."""
    import onnx
    import onnxruntime as ort

    from backbones.deploy.onnx_export import read_metadata
    run = exported('upernet', 'segmentor', int8=True)
    assert run.code == 0, run.printed[-3000:]
    assert 'calibrated on 3 images' in run.printed
    ops = {n.op_type for n in onnx.load(str(run.int8)).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'Conv'} <= ops
    sessions = [ort.InferenceSession(str(p), providers=['CPUExecutionProvider'])
                for p in (run.out, run.int8)]
    assert read_metadata(sessions[1])['kind'] == 'segmentor'
    x = torch.randn(2, 3, 72, 88).numpy()
    fp32, int8 = (s.run(None, {'image': x})[0] for s in sessions)
    assert fp32.shape == int8.shape == (2, 150, 72, 88)
    assert not np.array_equal(fp32, int8)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() > 0.9


def _metric_and_maps(work_dir: Path, out_dir: Path) -> tuple[float, dict[str, np.ndarray]]:
    logs = sorted(work_dir.glob('*/*.json'))
    assert logs, f'no metrics json under {work_dir}'
    metrics = json.loads(logs[-1].read_text().splitlines()[-1])
    maps = {p.name: np.asarray(Image.open(p)) for p in sorted(out_dir.rglob('*.png'))}
    assert maps
    return metrics['mIoU'], maps


@pytest.mark.slow
def test_test_tool_onnxruntime_equals_pytorch(tmp_path, exported):
    """tools/test.py --backend onnxruntime on the exported file: the same label maps and mIoU
    as the PyTorch checkpoint."""
    run = exported('upernet', 'segmentor', int8=True)
    assert run.code == 0, run.printed[-3000:]
    results = {}
    for backend, checkpoint in (('pytorch', run.ckpt), ('onnxruntime', str(run.out))):
        work, preds = tmp_path / f'work_{backend}', tmp_path / f'preds_{backend}'
        proc = run_tool_here('tools/test.py', run.cfg, checkpoint, '--backend', backend,
                             '--work-dir', str(work), '--out', str(preds), *run.options)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = _metric_and_maps(work, preds)
    (miou, maps), (onnx_miou, onnx_maps) = results['pytorch'], results['onnxruntime']
    assert onnx_miou == miou
    assert maps.keys() == onnx_maps.keys()
    assert all(np.array_equal(maps[k], onnx_maps[k]) for k in maps)
    assert len(np.unique(np.concatenate([m.ravel() for m in maps.values()]))) > 1  # not trivial


@pytest.mark.slow
def test_infer_tool_onnxruntime_draws_what_pytorch_draws(tmp_path, exported, tiny_data):
    run = exported('upernet', 'segmentor', int8=True)
    images = f'{tiny_data["seg"]}/images/validation'
    drawn = {}
    for backend, checkpoint in (('pytorch', run.ckpt), ('onnxruntime', run.out)):
        out_dir = tmp_path / backend
        code, stdout, stderr = run_here('infer.py', run.cfg, checkpoint, images, '--backend',
                                        backend, '--out-dir', out_dir, *run.options)
        printed = stdout + stderr
        assert code == 0, printed[-3000:]
        drawn[backend] = {p.name: np.asarray(Image.open(p)) for p in out_dir.glob('*.png')}
    assert len(drawn['pytorch']) == 2 and drawn['pytorch'].keys() == drawn['onnxruntime'].keys()
    assert all(np.array_equal(v, drawn['onnxruntime'][k]) for k, v in drawn['pytorch'].items())


def test_mismatch_is_refused_with_the_size(tmp_path):
    """PyTorch's own adaptive pooling, exported as is, keeps the example's bins (UperNet's
    pyramid pooling pitfall): the check at the second size must refuse the file."""
    from backbones.deploy.onnx_export import ExportMismatchError, check_against_pytorch, export_onnx
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(6)).eval()
    path = str(tmp_path / 'pool.onnx')
    export_onnx(model, torch.randn(2, 3, 64, 64), path, {'kind': 'backbone'})
    check_against_pytorch(path, model, [(1, 64, 64)])  # the example's size passes
    with pytest.raises(ExportMismatchError, match=r'pool\.onnx differs from PyTorch at '
                       r'2x3x77x130: relative error'):
        check_against_pytorch(path, model, [(1, 64, 64), (2, 77, 130)])
    make_shapes_dynamic(model)
    export_onnx(model, torch.randn(2, 3, 64, 64), path, {'kind': 'backbone'})
    assert max(check_against_pytorch(path, model, [(1, 64, 64), (2, 77, 130)])) < 1e-5


@pytest.mark.slow
def test_detector_with_features_in_onnx_runtime_detects_as_pytorch(exported, tiny_data):
    """A features export runs the detector's backbone + FPN inside mmdet's own predict (RPN and
    RoI heads in PyTorch): the same boxes, scores and labels as the PyTorch model; a segmentor
    file is refused."""
    import copy

    from mmdet.structures import DetDataSample

    from backbones.checkpoint import fit_model_checkpoint
    from backbones.deploy.onnx_runtime import run_features_in_onnx_runtime
    from backbones.errors import CheckpointError
    run = exported('mask_rcnn', 'features')
    assert run.code == 0, run.printed[-3000:]
    model = _build(run.cfg, run.options[1:]).eval()
    model.load_state_dict(fit_model_checkpoint(model, run.ckpt)[1], strict=False)
    model.test_cfg.rcnn.score_thr = 0.0  # random heads score low: keep detections to compare
    in_ort = copy.deepcopy(model)
    run_features_in_onnx_runtime(in_ort, str(run.out))
    assert not any(k.startswith(('backbone.', 'neck.')) for k in in_ort.state_dict())
    g = torch.Generator().manual_seed(0)
    meta = dict(ori_shape=(80, 112), img_shape=(80, 112), scale_factor=(1.0, 1.0))
    data = dict(inputs=[torch.randint(0, 256, (3, 80, 112), dtype=torch.uint8, generator=g)],
                data_samples=[DetDataSample(metainfo=meta)])
    with torch.no_grad():
        ref, got = (m.test_step(copy.deepcopy(data))[0].pred_instances for m in (model, in_ort))
    assert len(ref) > 0 and len(got) == len(ref)
    torch.testing.assert_close(got.bboxes, ref.bboxes, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-3, atol=1e-4)
    assert torch.equal(got.labels, ref.labels)
    segmentor = exported('upernet', 'segmentor', int8=True)
    with pytest.raises(CheckpointError, match="a 'segmentor' export; expected a features export"):
        run_features_in_onnx_runtime(copy.deepcopy(model), str(segmentor.out))
