"""tools/benchmark.py end to end on a tiny setting, and the fused (deploy) backbone's outputs.

Correctness only: nothing here asserts a timing.
"""
from __future__ import annotations

import copy
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import randomize_

from backbones import ARCH_SETTINGS, ConfigError, InceptionNeXt
from backbones.inception_next import MetaNeXtBlock

ROOT = Path(__file__).resolve().parents[1]
CL = torch.channels_last
BACKBONE_ROWS = {('ours', 'train'), ('ours', 'infer'), ('ours-cl', 'train'), ('ours-cl', 'infer'),
                 ('ours-deploy', 'infer'), ('ours-deploy-cl', 'infer'), ('timm', 'train'),
                 ('timm', 'infer'), ('convnext', 'train'), ('convnext', 'infer')}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP waits on a machine shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def bench() -> dict:
    """The namespace of tools/benchmark.py."""
    return runpy.run_path(str(ROOT / 'tools' / 'benchmark.py'), run_name='benchmark')


def test_cli_backbone_tiny_writes_json_and_markdown(tmp_path):
    out = tmp_path / 'tiny64'
    proc = subprocess.run(
        [sys.executable, 'tools/benchmark.py', '--models', 'backbone', '--sizes', 't',
         '--batch', '1', '--shape', '64', '--repeats', '1', '--warmup', '0', '--threads', '1',
         '--no-memory', '--out', str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / 'results.json').read_text())
    rows = report['results']
    assert {(r['variant'], r['mode']) for r in rows} == BACKBONE_ROWS
    assert len(rows) == len(BACKBONE_ROWS)
    for r in rows:
        assert (r['family'], r['size'], r['batch'], r['shape']) == ('backbone', 't', 1, [64, 64])
        assert r['median_ms'] > 0 and r['images_per_s'] > 0 and len(r['times_ms']) == 1
        assert r['channels_last'] == r['variant'].endswith('-cl')
        if r['variant'] == 'convnext':
            assert r['rel_err_vs_ours'] is None and r['speed_vs_convnext'] == 1.0
        else:  # same weights as ours: same features
            assert r['rel_err_vs_ours'] < 1e-5
        if r['variant'] == 'timm':
            assert r['speed_vs_timm'] == 1.0
    params = {r['variant']: r['params_m'] for r in rows}
    assert params['ours'] == pytest.approx(params['timm'], abs=0.01)  # timm's head is pruned
    machine = report['machine']
    assert machine['torch_threads'] == 1 and machine['versions']['torch'] == torch.__version__
    assert report['command'].startswith('python tools/benchmark.py --models backbone')
    assert report['settings']['memory'] is False
    md = (out / 'results.md').read_text()
    assert '## backbone, tiny' in md and report['command'] in md and machine['cpu'] in md
    table = [ln for ln in md.splitlines() if ln.startswith('| ') and ' | ' in ln]
    assert {tuple(c.strip() for c in ln.split('|')[1:3]) for ln in table[1:]} == BACKBONE_ROWS


def test_bad_arguments_are_config_errors(bench):
    check = bench['check_args']
    with pytest.raises(ConfigError, match='--models'):
        check(bench['parse_args'](['--models', 'resnet']))
    with pytest.raises(ConfigError, match='UperNet'):
        check(bench['parse_args'](['--models', 'upernet', '--batch', '1']))
    with pytest.raises(ConfigError, match='--shape'):
        check(bench['parse_args'](['--shape', '1', '2', '3']))


def test_channels_last_flag_drops_the_cl_duplicates(bench):
    _, sizes, variants, _, opts = bench['check_args'](bench['parse_args'](
        ['--channels-last', '--sizes', 'tiny,b', '--threads', str(torch.get_num_threads())]))
    assert variants == ['ours', 'ours-deploy', 'timm', 'convnext'] and sizes == ['t', 'b']
    assert opts.channels_last


def test_memory_child_reports_a_peak(bench, capsys):
    opts = dict(batch=1, shape=[64, 64], device='cpu', amp=False, channels_last=False,
                compile=False, threads=torch.get_num_threads())
    bench['memory_child'](json.dumps(dict(family='backbone', size='t', variant='ours-deploy-cl',
                                          mode='infer', opts=opts)))
    line = [ln for ln in capsys.readouterr().out.splitlines()
            if ln.startswith(bench['RESULT_MARK'])][-1]
    result = json.loads(line[len(bench['RESULT_MARK']):])
    assert result['peak_mib'] >= 0 and result['method']


class _ToyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 2, 1)

    def forward(self, feats):
        return self.conv(feats[-1])

    def loss(self, feats):
        return dict(loss=self.forward(feats).square().mean())


class _ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.decode_head = _ToyHead()

    def forward(self, x):
        return self.decode_head.loss([self.backbone(x)])['loss']


def test_breakdown_times_each_module(bench):
    opts = bench['Options'](1, (16, 16), 'cpu', False, False, False, 1)
    model = _ToyModel()
    x = torch.randn(1, 3, 16, 16)
    case = bench['Case']('upernet', 't', 'ours', model, lambda: model(x), lambda: model(x),
                         False, 0.0)
    bench['breakdown_cases']([case], 'train', opts, 2)
    steps = case.breakdown['train']
    assert len(steps) == 2
    parts = set(steps[0])
    assert {'fwd backbone', 'fwd decode_head', 'bwd backbone', 'bwd decode_head', 'optimizer',
            'total'} <= parts
    assert all(v > 0 for k, v in steps[0].items() if k.split()[0] in ('fwd', 'bwd')
               and k != 'fwd other' and k != 'bwd other')
    assert 'forward' not in vars(model.backbone) and 'loss' not in vars(model.decode_head)


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_fused_equals_unfused_in_every_memory_format(arch, monkeypatch):
    torch.manual_seed(0)
    model = randomize_(InceptionNeXt(arch)).eval()
    x = torch.randn(2, 3, 64, 96) if arch == 'atto' else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fused = copy.deepcopy(model).fuse(onednn=True)
    fast_calls = []
    original = MetaNeXtBlock._forward_onednn
    monkeypatch.setattr(MetaNeXtBlock, '_forward_onednn',
                        lambda self, t: fast_calls.append(1) or original(self, t))
    for model_cl in (False, True):
        net = copy.deepcopy(fused).to(memory_format=CL) if model_cl else fused
        for input_cl in (False, True):
            with torch.no_grad():
                out = net(x.contiguous(memory_format=CL) if input_cl else x)
            for a, b in zip(ref, out):
                assert ((a - b).norm() / a.norm()).item() < 1e-5
    if _onednn_available():
        assert len(fast_calls) == 4 * sum(ARCH_SETTINGS[arch]['depths'])  # the oneDNN path ran
    if arch == 'atto':  # with autograd: the plain modules, differentiable
        out = fused(x)
        out[-1].sum().backward()
        for a, b in zip(ref, out):
            assert ((a - b.detach()).norm() / a.norm()).item() < 1e-5


def _onednn_available() -> bool:
    from backbones import inception_next
    return inception_next._CONV_POINTWISE is not None and torch.backends.mkldnn.is_available()
