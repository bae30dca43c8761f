"""What the tools apply to a config before they run it; nothing here acts on import.

- Without CUDA the backbone runs channels-last inside (``ChannelsLastHook``).

- ``--amp`` on a machine without CUDA uses bfloat16 autocast (``BF16AmpOptimWrapper``).
- Distributed runs without CUDA use gloo (every ``--launcher``), CPU DDP and BatchNorm instead of
  SyncBN; a launcher started without its environment is a one-line error.
- ``SafeRunHook``: safe checkpoint loading, atomic checkpoints, a stop on non-finite losses and
  on SIGTERM/SIGINT.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from . import amp as _amp  # noqa: F401  (registers BF16AmpOptimWrapper)
from . import hooks as _hooks  # noqa: F401  (registers SafeRunHook, ChannelsLastHook)
from .launchers import check_launcher_env, init_cpu_process_group


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
    """Make ``cfg`` run well here: on CPU-only machines a channels-last backbone, bfloat16 AMP
    and gloo for distributed runs."""
    cuda = torch.cuda.is_available()
    if not cuda:
        _add_custom_hook(cfg, dict(type='ChannelsLastHook'))
    if amp:
        wrapper = cfg.optim_wrapper
        if cuda:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        else:
            wrapper.type = 'BF16AmpOptimWrapper'
            wrapper.pop('loss_scale', None)
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


def _add_custom_hook(cfg: Config, hook: dict) -> None:
    """Add ``hook`` to ``cfg.custom_hooks``, replacing one of the same type the config has."""
    others = [h for h in cfg.get('custom_hooks', []) if h.get('type') != hook['type']]
    cfg.custom_hooks = [*others, hook]


def add_safety_hooks(cfg: Config, trusted_checkpoints: Iterable[str] = ()) -> None:
    """Add ``SafeRunHook`` (safe loading, atomic checkpoints, non-finite loss stop) to ``cfg``."""
    _add_custom_hook(cfg, dict(type='SafeRunHook', trusted_checkpoints=list(trusted_checkpoints)))
