"""Two processes on the CPU (gloo) through torchrun and tools/train.py --launcher pytorch."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from helpers import ATTO, FAMILIES, ROOT, SEG_TAIL, run_tool, write_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tmp_path, tiny_data):
    base, _, overrides = FAMILIES['upernet']
    tail = SEG_TAIL + "custom_imports = dict(imports=['backbones', 'dist_probe'])\n" \
                      "custom_hooks = [dict(type='RankProbeHook')]\n"
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=3)
    work_dir = tmp_path / 'work'
    env = {'PYTHONPATH': os.pathsep.join([str(ROOT / 'tests'), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1'}
    result = run_tool('-m', 'torch.distributed.run', '--nproc_per_node=2',
                      f'--master_port={free_port()}', 'tools/train.py', cfg, '--launcher',
                      'pytorch', '--work-dir', str(work_dir), '--cfg-options', *ATTO.split(),
                      *overrides.split(), env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert 'SyncBN configs use BN' in log  # the UperNet heads ask for SyncBN
    samples = [json.loads((work_dir / f'rank{r}_samples.json').read_text()) for r in (0, 1)]
    assert len(samples[0]) == len(samples[1]) == 3
    for step0, step1 in zip(*samples):  # each step the two ranks see different images
        assert not set(step0) & set(step1)
    states = [torch.load(work_dir / f'rank{r}_state.pth', map_location='cpu') for r in (0, 1)]
    saved = torch.load(work_dir / 'iter_3.pth', map_location='cpu', weights_only=False)
    for key, value in saved['state_dict'].items():
        assert torch.equal(value, states[0][key]), key
        if 'running_' not in key and 'num_batches' not in key:  # BN statistics stay per rank
            assert torch.equal(value, states[1][key]), key
    assert saved['meta']['iter'] == 3
