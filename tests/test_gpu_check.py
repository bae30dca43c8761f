"""scripts/gpu_check.sh as a CPU dry run: the same steps at tiny sizes, one summary table and
JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, run_script

pytestmark = pytest.mark.slow
ONE_TEST = 'tests/test_cuda.py::test_channels_last_input_gives_channels_last_maps'


RUNS = ['backbone-224-fp32-cl', 'upernet-512-fp32', 'maskrcnn-512-amp']  # cl, memory, amp


def test_every_planned_run_has_valid_benchmark_flags():
    """What the dry run below leaves out is at least accepted by the benchmark tool."""
    plan = run_script(ROOT / 'scripts' / 'gpu_check.py', run_name='gpu_check')['plan']
    bench = run_script(ROOT / 'tools' / 'analysis_tools' / 'benchmark.py', run_name='benchmark')
    threads = torch.get_num_threads()  # check_args sets --threads
    try:
        for device in ('cuda', 'cpu'):
            for name, argv in plan(device):
                args = bench['parse_args']([*argv, '--device', 'cpu'])
                assert bench['check_args'](args).variants, name
    finally:
        torch.set_num_threads(threads)


def test_cpu_dry_run_writes_the_summary(tmp_path):
    out = tmp_path / 'check'
    result = subprocess.run(
        ['bash', 'scripts/gpu_check.sh', '--device', 'cpu', '--no-install', '--tests', ONE_TEST,
         '--out', str(out), '--budget', '900', '--runs', ','.join(RUNS)], cwd=ROOT,
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '2'})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    plan = run_script(ROOT / 'scripts' / 'gpu_check.py', run_name='gpu_check')['plan']('cpu')
    data = json.loads((out / 'summary.json').read_text())
    assert data['device'] == 'cpu' and data['machine']['gpu'] is None
    assert [r['name'] for r in data['runs']] == [name for name, _ in plan]
    assert [r['status'] for r in data['runs']] == ['ok' if name in RUNS else 'skipped'
                                                   for name, _ in plan], data['runs']
    assert all(r['detail'] == 'not in --runs' for r in data['runs'] if r['name'] not in RUNS)
    assert data['tests']['counts'] == dict(passed=1, failed=0, skipped=0)
    rows = data['rows']
    assert {r['run'] for r in rows} == set(RUNS)
    for r in rows:
        assert r['median_ms'] > 0 and r['batch'] == 2 and r['shape'] == [64, 64]
        assert (r['peak_mem_mib'] is not None) == (r['run'] == 'upernet-512-fp32')
    families = {(r['family'], r['variant'], r['mode']) for r in rows}
    assert {('backbone', 'timm', 'train'), ('backbone', 'convnext', 'infer'),
            ('upernet', 'convnext', 'train'), ('maskrcnn', 'ours', 'train')} <= families
    assert {r['precision'] for r in rows} == {'fp32', 'amp', 'fp32, channels_last'}
    md = (out / 'summary.md').read_text()
    table = [ln for ln in md.splitlines() if ln.startswith('| ')]
    assert table[0].startswith('| run | model |') and len(table) == len(rows) + 1
    assert 'tests: 1 passed, 0 failed, 0 skipped' in md
    assert 'upernet-512-amp skipped (not in --runs)' in md
