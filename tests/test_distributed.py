"""Two processes on the CPU (gloo) through tools/train.py, for each ``--launcher``."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ATTO, FAMILIES, ROOT, SEG_TAIL, run_tool, write_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def probe_config(tmp_path: Path, tiny_data: dict) -> tuple[str, list[str], dict]:
    """A 3-iteration atto UperNet recording what each rank trained on; its args and env."""
    base, _, overrides = FAMILIES['upernet']
    tail = SEG_TAIL + "custom_imports = dict(imports=['backbones', 'dist_probe'])\n" \
                      "custom_hooks = [dict(type='RankProbeHook')]\n"
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg'], iters=3)
    args = ['--work-dir', str(tmp_path / 'work'), '--cfg-options', *ATTO.split(),
            *overrides.split()]
    env = {'PYTHONPATH': os.pathsep.join([str(ROOT / 'tests'), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1'}
    return cfg, args, env


def assert_ranks_trained_together(work_dir: Path, log: str) -> None:
    """Different images per rank each step, and one model: the checkpoint equals both ranks'."""
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


def test_two_process_gloo_training_torchrun(tmp_path, tiny_data):
    cfg, args, env = probe_config(tmp_path, tiny_data)
    result = run_tool('-m', 'torch.distributed.run', '--nproc_per_node=2',
                      f'--master_port={free_port()}', 'tools/train.py', cfg, '--launcher',
                      'pytorch', *args, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_ranks_trained_together(tmp_path / 'work', result.stdout + result.stderr)


def launcher_env(launcher: str, rank: int, bin_dir: Path) -> dict[str, str]:
    """What srun (with a stand-in ``scontrol``) or mpirun would set for ``rank`` of 2."""
    if launcher == 'slurm':
        return {'SLURM_PROCID': str(rank), 'SLURM_NTASKS': '2', 'SLURM_LOCALID': str(rank),
                'SLURM_NODELIST': 'node[1-2]',
                'PATH': os.pathsep.join([str(bin_dir), os.environ['PATH']])}
    return {'OMPI_COMM_WORLD_RANK': str(rank), 'OMPI_COMM_WORLD_SIZE': '2',
            'OMPI_COMM_WORLD_LOCAL_RANK': str(rank), 'MASTER_ADDR': '127.0.0.1'}


@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_two_process_gloo_training_slurm_and_mpi(tmp_path, tiny_data, launcher):
    cfg, args, env = probe_config(tmp_path, tiny_data)
    bin_dir = tmp_path / 'bin'  # `scontrol show hostnames node[1-2]`: the rank-0 host first
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text('#!/usr/bin/env bash\nprintf "127.0.0.1\\nnode2\\n"\n')
    (bin_dir / 'scontrol').chmod(0o755)
    base_env = {k: v for k, v in os.environ.items()
                if k not in ('MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    base_env.update(env, MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, 'tools/train.py', cfg, '--launcher', launcher,
                               *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**base_env, **launcher_env(launcher, r, bin_dir)})
             for r in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert_ranks_trained_together(tmp_path / 'work', logs[0])


@pytest.mark.parametrize('launcher, missing', [('pytorch', 'RANK, WORLD_SIZE, MASTER_ADDR'),
                                               ('slurm', 'SLURM_PROCID'), ('mpi', 'MASTER_ADDR')])
def test_launcher_without_its_environment_is_one_line_error(tmp_path, tiny_data, launcher,
                                                            missing):
    cfg, args, probe_env = probe_config(tmp_path, tiny_data)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'OMPI_')) and k not in ('RANK', 'WORLD_SIZE',
                                                                   'MASTER_ADDR')}
    env.update(probe_env)
    if launcher == 'slurm':
        env.update(SLURM_NTASKS='2', SLURM_NODELIST='node1')
    if launcher == 'mpi':
        env.update(OMPI_COMM_WORLD_RANK='0', OMPI_COMM_WORLD_SIZE='2')
    result = subprocess.run([sys.executable, 'tools/train.py', cfg, '--launcher', launcher, *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and f'--launcher {launcher}: {missing} not set' in last, last
    assert not (tmp_path / 'work').exists() or not list((tmp_path / 'work').glob('*.pth'))


def test_sigterm_to_one_rank_stops_both_at_the_same_iteration(tmp_path, tiny_data):
    """SIGTERM to rank 1 only (a rank that got it late): both ranks stop after the same iteration
    (a rank stopping alone would leave the other waiting in a collective), rank 0 saves it, and
    both exit 143."""
    base, _, overrides = FAMILIES['upernet']
    cfg = write_config(tmp_path, base, SEG_TAIL, root=tiny_data['seg'], iters=1000)
    work = tmp_path / 'work'
    env = {**{k: v for k, v in os.environ.items()
              if k not in ('MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')},
           'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', 'MASTER_PORT': str(free_port())}
    procs = [subprocess.Popen([sys.executable, 'tools/train.py', cfg, '--launcher', 'mpi',
                               '--work-dir', str(work), '--cfg-options', *ATTO.split(),
                               *overrides.split()], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**env, **launcher_env('mpi', r, tmp_path)})
             for r in (0, 1)]
    try:
        log = ''
        for line in procs[0].stdout:  # rank 0 logs the iterations
            log += line
            if re.search(r'Iter\(train\) \[\s*2/1000\]', line):
                break
        procs[1].send_signal(signal.SIGTERM)
        log += procs[0].communicate(timeout=180)[0]
        log1 = procs[1].communicate(timeout=60)[0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [143, 143], log[-3000:] + log1[-3000:]
    stopped = re.findall(r'^stopped by SIGTERM after iteration (\d+); saved (\S+): '
                         r'continue with --resume$', log, re.MULTILINE)
    assert len(stopped) == 1 and 'stopped by' not in log1, log[-3000:]
    done, path = int(stopped[0][0]), stopped[0][1]
    assert path == f'{work}/iter_{done}.pth'
    saved = torch.load(path, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == done >= 2
    assert [p.name for p in work.glob('*.pth')] == [f'iter_{done}.pth']
    assert not list(work.rglob('*.tmp'))
