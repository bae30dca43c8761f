"""tools/analysis_tools/benchmark.py end to end on tiny settings (atto, 64x64): every requested
row, the fwd/bwd/opt split, GFLOP/s and the GEMM ceiling, the ONNX Runtime variants, the
JSON/CSV/markdown outputs. Nothing here asserts a timing."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import ROOT, assert_one_line_error, run_script, run_tool

from backbones import ConfigError

VARIANTS = ['ours', 'ours-cl-inside', 'ours-cl', 'ours-deploy', 'ours-deploy-cl',
            'ours-deploy-onednn', 'ours-deploy-no-onednn-cl-inside', 'timm', 'convnext']


@pytest.fixture(scope='module')
def bench() -> dict:
    """The namespace of tools/analysis_tools/benchmark.py."""
    return run_script(ROOT / 'tools' / 'analysis_tools' / 'benchmark.py', run_name='benchmark')


def run_benchmark(out, *args: str) -> dict:
    proc = run_tool('tools/analysis_tools/benchmark.py', *args, '--sizes', 'a', '--shape', '64',
                    '--repeats', '2', '--warmup', '0', '--threads', '1', '--gemm', '128', '--out',
                    str(out),
                    env={'PYTHONWARNINGS': 'ignore'}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / 'results.json').read_text())


def check_rows(out, report: dict, expected: set[tuple[str, str, str]]) -> None:
    """Every requested (model, variant, mode) once, with positive times that add up, and GFLOP/s
    for inference; the CSV and the markdown table have the same rows."""
    rows = report['results']
    assert sorted((r['family'], r['variant'], r['mode']) for r in rows) == sorted(expected)
    assert report['machine']['gemm']['n'] == 128 and report['machine']['gemm']['gflop_per_s'] > 0
    for r in rows:
        precision = 'int8' if r['variant'].endswith('-int8') else 'fp32'
        assert r['size'] == 'a' and r['shape'] == [64, 64] and r['precision'] == precision
        assert len(r['times_ms']) == 2 and all(t > 0 for t in r['times_ms'])
        assert r['median_ms'] in r['times_ms'] and r['images_per_s'] > 0
        assert r['min_ms'] == min(r['times_ms']) and r['speed_vs_first'] > 0
        infer = r['mode'] == 'infer'
        assert (r['gmacs'] > 0 and r['gflop_per_s'] > 0) if infer else r['gflop_per_s'] is None
        parts = [r['fwd_ms'], r['bwd_ms'], r['opt_ms']]
        if r['mode'] == 'train':
            assert all(p > 0 for p in parts)
            assert sum(parts) == pytest.approx(r['median_ms'], rel=1e-9)
        else:
            assert r['fwd_ms'] == r['median_ms'] and r['bwd_ms'] is None and r['opt_ms'] is None
        for ref in ('timm', 'convnext'):
            if r['variant'] == ref:
                assert r[f'speed_vs_{ref}'] == 1.0
    with open(out / 'results.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert [(t['family'], t['variant'], t['mode']) for t in table] == [
        (r['family'], r['variant'], r['mode']) for r in rows]
    assert float(table[0]['median_ms']) == pytest.approx(rows[0]['median_ms'])
    md = (out / 'results.md').read_text()
    assert report['command'] in md and report['machine']['cpu'] in md
    assert len([ln for ln in md.splitlines() if ln.startswith('| ')]) == len(rows) + 1


def test_backbone_every_variant(tmp_path):
    report = run_benchmark(tmp_path, '--models', 'backbone', '--batch', '1',
                           '--variants', ','.join(VARIANTS), '--memory')
    check_rows(tmp_path, report, {('backbone', v, m) for v in VARIANTS for m in ('train', 'infer')
                                  if m == 'infer' or 'deploy' not in v})
    rows = report['results']
    assert all(r['peak_mem_mib'] is not None and r['peak_mem_mib'] >= 0 for r in rows)
    params = {r['variant']: r['params_m'] for r in rows}
    assert params['ours'] == pytest.approx(params['timm'], abs=0.01)  # timm's head is pruned
    machine = report['machine']
    assert machine['torch_threads'] == 1 and machine['versions']['torch'] == torch.__version__
    assert isinstance(machine['isa'], list) and machine['gpu'] is None
    assert report['command'].startswith(
        'python tools/analysis_tools/benchmark.py --models backbone')


def test_upernet_train_and_infer(tmp_path):
    report = run_benchmark(tmp_path, '--models', 'upernet', '--batch', '2',
                           '--variants', 'ours,ours-cl-inside,timm,convnext')
    check_rows(tmp_path, report, {('upernet', v, m) for v in ('ours', 'ours-cl-inside', 'convnext')
                                  for m in ('train', 'infer')})  # timm: backbone only
    assert all(r['peak_mem_mib'] is None for r in report['results'])


def test_onnx_runtime_variants(tmp_path):
    """fp32 and int8 in ONNX Runtime beside eager (the export checked against PyTorch inside the
    tool): UperNet and Mask R-CNN whole; FLOPs and params are the eager model's, and every Mask
    R-CNN variant boxes and masks the same number of detections (max_per_img, 10 for atto)."""
    variants = ('ours', 'ours-ort', 'ours-ort-int8')
    report = run_benchmark(tmp_path, '--models', 'upernet,maskrcnn', '--batch', '1', '--mode',
                           'infer', '--variants', ','.join(variants))
    check_rows(tmp_path, report, {(f, v, 'infer') for v in variants
                                  for f in ('upernet', 'maskrcnn')})
    for family in ('upernet', 'maskrcnn'):
        rows = {r['variant']: r for r in report['results'] if r['family'] == family}
        assert rows['ours-ort']['gmacs'] == rows['ours-ort-int8']['gmacs'] == rows['ours']['gmacs']
        assert rows['ours-ort']['params_m'] == rows['ours']['params_m']
        assert rows['ours']['speed_vs_first'] == 1.0
        dets = {v: r['detections'] for v, r in rows.items()}
        assert dets == dict.fromkeys(variants, 10 if family == 'maskrcnn' else None)
    assert report['machine']['versions']['onnxruntime']


@pytest.mark.slow
def test_convnext_upernet_in_onnx_runtime(tmp_path):
    """mmseg's ConvNeXt UperNet exports the same way and matches PyTorch (the tool's check)."""
    report = run_benchmark(tmp_path, '--models', 'upernet', '--batch', '1', '--mode', 'infer',
                           '--variants', 'convnext,convnext-ort')
    check_rows(tmp_path, report, {('upernet', v, 'infer') for v in ('convnext', 'convnext-ort')})


def test_bad_flags_end_with_one_error_line():
    proc = run_tool('tools/analysis_tools/benchmark.py', '--variants', 'ours,timm-deploy')
    assert_one_line_error(proc.returncode, proc.stderr, '--variants', 'ours-deploy')


@pytest.mark.parametrize('argv, match', [
    (['--models', 'resnet'], '--models'), (['--sizes', 'tiny'], '--sizes'),
    (['--variants', 'convnext-deploy'], '--variants'), (['--mode', 'eval'], '--mode'),
    (['--variants', 'timm-ort'], '--variants'), (['--variants', 'ours-deploy-ort'], '--variants'),
    (['--variants', 'ours-cl-ort'], '--variants'),
    (['--models', 'upernet', '--batch', '1'], 'UperNet'), (['--shape', '1', '2', '3'], '--shape'),
    (['--repeats', '0'], '--repeats')])
def test_bad_arguments_are_config_errors(bench, argv, match):
    with pytest.raises(ConfigError, match=match):
        bench['check_args'](bench['parse_args'](argv))


def test_channels_last_flag_drops_the_cl_duplicates(bench):
    args = bench['check_args'](bench['parse_args'](
        ['--channels-last', '--threads', str(torch.get_num_threads())]))
    assert args.variants == ['ours', 'ours-deploy', 'timm', 'convnext']
    assert args.shape == (512, 512) and args.sizes == ['t']
