"""``--launcher pytorch|slurm|mpi``: a clear error when the launcher's environment is missing, and
torch.distributed (gloo) on machines without CUDA.

mmengine's launchers call ``torch.cuda.set_device``, which fails without CUDA. On such machines this
reads the same environment they read (torchrun's, srun's or Open MPI's), sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` as they do, and opens the
gloo process group; the Runner then finds it initialized.
"""
from __future__ import annotations

import os
import subprocess

import torch.distributed as dist

from ..errors import ConfigError

# per launcher: the variables that must be set (MASTER_PORT defaults to 29500), and who sets them
REQUIRED = {
    'pytorch': (('RANK', 'WORLD_SIZE', 'MASTER_ADDR'),
                'start it with torchrun or tools/dist_train.sh'),
    'slurm': (('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
              'start it with srun or tools/slurm_train.sh'),
    'mpi': (('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'MASTER_ADDR'),
            'start it with mpirun and export MASTER_ADDR (the rank-0 host)'),
}


def _first_slurm_host(node_list: str) -> str:
    """The first host of a Slurm node list (``node[1-4]`` -> ``node1``), as mmengine finds it."""
    try:
        hosts = subprocess.run(['scontrol', 'show', 'hostnames', node_list],
                               capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        hosts = []
    if not hosts:
        raise ConfigError(f'--launcher slurm: `scontrol show hostnames {node_list}` gave no '
                          'host; set MASTER_ADDR to the rank-0 host')
    return hosts[0]


def _set_env(launcher: str) -> None:
    """Fill in torchrun's variables from the launcher's own, like mmengine's ``init_dist``."""
    env = os.environ
    if launcher == 'slurm':
        env['RANK'], env['WORLD_SIZE'] = env['SLURM_PROCID'], env['SLURM_NTASKS']
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
        if 'MASTER_ADDR' not in env:
            env['MASTER_ADDR'] = _first_slurm_host(env['SLURM_NODELIST'])
    elif launcher == 'mpi':
        env['RANK'], env['WORLD_SIZE'] = env['OMPI_COMM_WORLD_RANK'], env['OMPI_COMM_WORLD_SIZE']
        env['LOCAL_RANK'] = env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    env.setdefault('MASTER_PORT', '29500')


def check_launcher_env(launcher: str) -> None:
    """Raise a ConfigError naming what ``launcher`` ('pytorch', 'slurm' or 'mpi') lacks, unless
    a process group is already open."""
    if dist.is_initialized():
        return
    if launcher not in REQUIRED:
        raise ConfigError(f"--launcher {launcher}: expected one of 'none', "
                          f"{', '.join(map(repr, REQUIRED))}")
    names, how = REQUIRED[launcher]
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise ConfigError(f'--launcher {launcher}: {", ".join(missing)} not set; {how}')


def init_cpu_process_group(launcher: str) -> None:
    """Open the gloo group for ``launcher`` unless one is open (after ``check_launcher_env``)."""
    if dist.is_initialized():
        return
    _set_env(launcher)
    dist.init_process_group('gloo', init_method='env://', rank=int(os.environ['RANK']),
                            world_size=int(os.environ['WORLD_SIZE']))
