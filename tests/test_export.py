"""ONNX export (tools/export.py) and evaluation through ONNX Runtime (--backend onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import ATTO, FAMILIES, ROOT, SEG_TAIL, run_tool, write_config
from PIL import Image

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from backbones.onnx_export import (  # noqa: E402
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
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    from backbones.cli import load_config
    parsed = {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in options)}
    cfg = load_config(cfg_path, parsed)
    init_default_scope(cfg.default_scope)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


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


@pytest.mark.slow
@pytest.mark.parametrize('family, part', [('upernet', 'segmentor'), ('sem_fpn', 'segmentor'),
                                          ('mask_rcnn', 'features'), ('upernet', 'backbone')])
def test_export_matches_pytorch_at_other_sizes(tmp_path, tiny_data, family, part):
    """The tool's own check passes, and an independent run at a third size (odd, not a multiple
    of 32, batch 3) agrees with the PyTorch model loaded from the same checkpoint."""
    import onnx

    from backbones.checkpoint import fit_model_checkpoint
    from backbones.onnx_export import BackboneFeatures, DetectorFeatures, SegmentorLogits
    task = 'seg' if FAMILIES[family][1] is SEG_TAIL else 'det'
    cfg_path, options, ckpt = _model_and_checkpoint(tmp_path, family, tiny_data[task])
    out = tmp_path / f'{part}.onnx'
    proc = run_tool('tools/export.py', cfg_path, ckpt, str(out), '--part', part, *CHECKS,
                    *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'relative error' in proc.stdout and out.is_file()
    assert not list(tmp_path.glob('*.tmp'))

    graph_input = onnx.load(str(out), load_external_data=False).graph.input[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']

    model = _build(cfg_path, options[1:]).eval()
    model.load_state_dict(fit_model_checkpoint(model, ckpt)[1], strict=False)
    ref = {'segmentor': SegmentorLogits, 'features': DetectorFeatures,
           'backbone': lambda m: BackboneFeatures(m.backbone)}[part](model)
    errors = _relative_errors(str(out), ref.eval(), (3, 3, 75, 101))
    assert max(errors) < 1e-4, errors


def _metric_and_maps(work_dir: Path, out_dir: Path) -> tuple[float, dict[str, np.ndarray]]:
    logs = sorted(work_dir.glob('*/*.json'))
    assert logs, f'no metrics json under {work_dir}'
    metrics = json.loads(logs[-1].read_text().splitlines()[-1])
    maps = {p.name: np.asarray(Image.open(p)) for p in sorted(out_dir.rglob('*.png'))}
    assert maps
    return metrics['mIoU'], maps


@pytest.mark.slow
def test_test_tool_onnxruntime_equals_pytorch(tmp_path, tiny_data):
    """tools/test.py --backend onnxruntime on the exported file: the same label maps and mIoU
    as the PyTorch checkpoint."""
    cfg_path, options, ckpt = _model_and_checkpoint(tmp_path, 'upernet', tiny_data['seg'])
    onnx_file = tmp_path / 'upernet.onnx'
    proc = run_tool('tools/export.py', cfg_path, ckpt, str(onnx_file), *CHECKS, *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for backend, checkpoint in (('pytorch', ckpt), ('onnxruntime', str(onnx_file))):
        work, preds = tmp_path / f'work_{backend}', tmp_path / f'preds_{backend}'
        proc = run_tool('tools/test.py', cfg_path, checkpoint, '--backend', backend,
                        '--work-dir', str(work), '--out', str(preds), *options)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = _metric_and_maps(work, preds)
    (miou, maps), (onnx_miou, onnx_maps) = results['pytorch'], results['onnxruntime']
    assert onnx_miou == miou
    assert maps.keys() == onnx_maps.keys()
    assert all(np.array_equal(maps[k], onnx_maps[k]) for k in maps)
    assert len(np.unique(np.concatenate([m.ravel() for m in maps.values()]))) > 1  # not trivial


@pytest.mark.parametrize('case', ['dir', 'same-file', 'not-onnx'])
def test_bad_input_is_one_line_error(tmp_path, tiny_data, case):
    base, tail, overrides = FAMILIES['upernet']
    cfg_path = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=1)
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'not used')
    options = ['--cfg-options', *ATTO.split(), *overrides.split()]
    if case == 'dir':
        proc = run_tool('tools/export.py', cfg_path, str(ckpt), str(tmp_path), *options)
        words = ['is a directory']
    elif case == 'same-file':
        proc = run_tool('tools/export.py', cfg_path, str(ckpt), str(ckpt), *options)
        words = ['is the input']
    else:
        fake = tmp_path / 'model.onnx'
        fake.write_bytes(b'\x08\x07garbage')
        proc = run_tool('tools/test.py', cfg_path, str(fake), '--backend', 'onnxruntime',
                        '--work-dir', str(tmp_path / 'work'), *options)
        words = ['cannot load', str(fake)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and all(w in last for w in words), last
    assert ckpt.read_bytes() == b'not used'


@pytest.mark.slow
def test_mismatch_is_one_line_error_and_writes_nothing(tmp_path, tiny_data, monkeypatch, capsys):
    """Exported with PyTorch's own adaptive pooling (the replacement switched off), UperNet's
    pyramid pooling keeps the example's bins: the check at the second size must refuse it."""
    import runpy
    import sys

    import backbones.onnx_export
    cfg_path, options, ckpt = _model_and_checkpoint(tmp_path, 'upernet', tiny_data['seg'])
    monkeypatch.setattr(backbones.onnx_export, 'make_shapes_dynamic', lambda model: 0)
    out = tmp_path / 'bad.onnx'
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', ['tools/export.py', cfg_path, ckpt, str(out), *CHECKS,
                                      *options])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / 'tools' / 'export.py'), run_name='__main__')
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('error: ') and '2x3x96x64' in last, last
    assert not out.exists() and not list(tmp_path.glob('*.tmp'))
