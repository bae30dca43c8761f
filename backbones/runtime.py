"""Fixes that let this stack (torch 2.14, mmengine 0.10.7) run as users expect, on GPU and CPU.

- mmengine-saved checkpoints (resume, ``load_from``, test) hold Python objects that torch >= 2.6's
  ``weights_only`` default refuses (mmengine#1655): local checkpoints load as mmengine intended.
- ``--amp`` on a machine without CUDA uses bfloat16 autocast (``BF16AmpOptimWrapper``).
- Distributed runs without CUDA use gloo (every ``--launcher``), CPU DDP and BatchNorm instead of
  SyncBN; a launcher started without its environment is a one-line error.
- Checkpoints are written atomically, old ones removed only after a new one is complete, and a
  non-finite loss stops training (``add_safety_hooks``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner import runner as mmengine_runner
from mmengine.runner.amp import autocast
from mmengine.runner.checkpoint import CheckpointLoader, find_latest_checkpoint

from . import cpu_bf16_ops
from .launchers import check_launcher_env, init_cpu_process_group


def load_from_trusted_local(filename: str, map_location=None) -> dict:
    """mmengine's local loader, with the pickle loading mmengine was written for."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


CheckpointLoader.register_scheme(prefixes='', loader=load_from_trusted_local, force=True)


def save_checkpoint_atomic(checkpoint: dict, filename: str, **kwargs) -> None:
    """Save to ``filename.tmp`` then rename: a killed save never leaves a partial checkpoint."""
    if '://' in str(filename):
        return _save_checkpoint(checkpoint, filename, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    tmp = f'{filename}.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # e.g. a full disk: the partial file goes, the last checkpoint stays
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, filename)


_save_checkpoint = mmengine_runner.save_checkpoint
mmengine_runner.save_checkpoint = save_checkpoint_atomic  # used by Runner.save_checkpoint


@OPTIM_WRAPPERS.register_module()
class BF16AmpOptimWrapper(OptimWrapper):
    """Mixed precision by bfloat16 autocast, no loss scaling: runs on CPUs as well as GPUs."""

    def __init__(self, dtype: str | torch.dtype = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), autocast(dtype=self.cast_dtype):
            yield


def _replace_type(node, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every dict of a config tree; count replacements."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        count += sum(_replace_type(v, old, new) for v in node)
    return count


def adapt_to_device(cfg: Config, launcher: str, amp: bool) -> None:
    """Make ``cfg`` runnable here: AMP and distributed training on CPU-only machines."""
    cuda = torch.cuda.is_available()
    if amp:
        wrapper = cfg.optim_wrapper
        if cuda:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        else:
            wrapper.type = 'BF16AmpOptimWrapper'
            wrapper.pop('loss_scale', None)
            cpu_bf16_ops.enable()
            print_log('--amp without CUDA: bfloat16 autocast on the CPU', logger='current')
    if launcher == 'none':
        return
    check_launcher_env(launcher)
    if cuda:
        return
    n = _replace_type(cfg._cfg_dict, 'SyncBN', 'BN')
    if n:
        print_log(f'distributed on CPU: {n} SyncBN configs use BN (SyncBN needs CUDA)',
                  logger='current')
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
    init_cpu_process_group(launcher)


def add_safety_hooks(cfg: Config) -> None:
    """Atomic checkpointing and a stop on non-finite losses, for any config."""
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint and checkpoint.get('type') == 'CheckpointHook':
        checkpoint['type'] = 'AtomicCheckpointHook'
    hooks = list(cfg.get('custom_hooks', []))
    if not any(h.get('type') == 'FiniteLossHook' for h in hooks):
        cfg.custom_hooks = [*hooks, dict(type='FiniteLossHook', priority='VERY_HIGH')]


def latest_complete_checkpoint(work_dir: str) -> str | None:
    """``last_checkpoint``'s target if it exists, else the newest ``*.pth`` in ``work_dir``."""
    last = find_latest_checkpoint(work_dir)
    if last and os.path.isfile(last):
        return last
    candidates = [os.path.join(work_dir, f) for f in os.listdir(work_dir) if f.endswith('.pth')] \
        if os.path.isdir(work_dir) else []
    return max(candidates, key=os.path.getmtime) if candidates else None
