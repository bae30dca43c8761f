"""Checkpoints written to a temporary file and renamed; old ones removed only after a new one is
complete; a full disk one line on every rank; the leftovers of a killed save removed."""
from __future__ import annotations

import functools
import os
import os.path as osp
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import find_latest_checkpoint

from ...errors import DiskFullError
from ...files import disk_full_message, is_disk_full, write_atomic
from .. import patches
from ..ranks import max_over_ranks

_TEMPORARY_CHECKPOINT = re.compile(r'^\..+\.pth\.\w+\.tmp$')  # write_atomic's names


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def checkpoint_bytes(runner) -> int:
    """About the size of a checkpoint of ``runner``: the bytes of its weights and optimizer
    state."""
    model = getattr(runner, 'model', None)
    model = model.module if is_model_wrapper(model) else model
    total = _tensor_bytes(model.state_dict()) if model is not None else 0
    optim = getattr(runner, 'optim_wrapper', None)
    if hasattr(optim, 'state_dict'):  # built for training
        total += _tensor_bytes(optim.state_dict())
    return total


def latest_complete_checkpoint(work_dir: str) -> str | None:
    """``last_checkpoint``'s target if it exists, else the newest ``*.pth`` in ``work_dir``."""
    last = find_latest_checkpoint(work_dir)
    if last and os.path.isfile(last):
        return last
    candidates = [os.path.join(work_dir, f) for f in os.listdir(work_dir) if f.endswith('.pth')] \
        if os.path.isdir(work_dir) else []
    return max(candidates, key=os.path.getmtime) if candidates else None


def after_disk_full(out_dir: str) -> str:
    """What to do after a full disk, naming the checkpoint that is still complete."""
    last = latest_complete_checkpoint(out_dir)
    kept = f'the last complete checkpoint, {last}, is intact' if last else \
        'no checkpoint was complete yet'
    return f'free some space, then continue with --resume ({kept})'


def remove_stale_temporary_files(work_dir: str) -> list[str]:
    """Delete the ``.*.tmp`` files a killed save left in ``work_dir``; returns their names."""
    if not osp.isdir(work_dir):
        return []
    stale = [f for f in os.listdir(work_dir) if _TEMPORARY_CHECKPOINT.match(f)]
    for name in stale:
        os.remove(osp.join(work_dir, name))
    return stale


def _save_step(save: Callable, hook: CheckpointHook, after_save: Callable | None, runner,
               step: int, meta: dict) -> None:
    """``CheckpointHook._save_checkpoint_with_step`` removing old checkpoints only after the
    new one is complete (upstream removes them first: a kill in between could keep nothing); a
    full disk stops every rank; ``after_save(runner, hook, meta)`` follows a complete save."""
    pending: list[str] = []
    failed = None
    try:
        with patches.file_backend_remove(hook.file_backend, pending.append):
            save(runner, step, meta)
    except Exception as e:  # only the main process writes
        if not is_disk_full(e, runner.work_dir):
            raise
        failed = e if isinstance(e, DiskFullError) else DiskFullError(
            f'{disk_full_message(e, hook.last_ckpt)}: {after_disk_full(hook.out_dir)}')
    if max_over_ranks(failed is not None)[0]:
        raise failed or DiskFullError('the main process found no space left for a checkpoint')
    for path in pending:
        hook.file_backend.remove(path)
    if after_save is not None:
        after_save(runner, hook, meta)


@contextmanager
def atomic_checkpoints(runner, after_save: Callable | None = None) -> Iterator[None]:
    """While active, ``runner``'s local checkpoints are written by the main process (as
    ``Runner.save_checkpoint`` does) to a temporary file and renamed, a full disk raises
    ``DiskFullError`` on every rank (the message says how much space a checkpoint needs), and
    its CheckpointHooks remove old checkpoints only after a new one is complete and then call
    ``after_save(runner, hook, meta)`` on every rank."""
    save = runner.save_checkpoint

    def save_atomic(out_dir: str, filename: str, *args, **kwargs) -> None:
        if '://' in str(out_dir):
            return save(out_dir, filename, *args, **kwargs)
        if not is_main_process():
            return None  # the other ranks would rename an empty file over the main one's
        try:
            write_atomic(osp.join(out_dir, filename),
                         lambda tmp: save(osp.dirname(tmp), osp.basename(tmp), *args, **kwargs),
                         needed_bytes=lambda: checkpoint_bytes(runner))
        except DiskFullError as e:
            raise DiskFullError(f'{e}: {after_disk_full(out_dir)}') from e.__cause__

    with ExitStack() as stack:
        stack.enter_context(patches.runner_save_checkpoint(runner, save_atomic))
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook):
                stack.enter_context(patches.checkpoint_hook_save_step(hook, functools.partial(
                    _save_step, hook._save_checkpoint_with_step, hook, after_save)))
        yield
