"""Runner hooks of the suite; importing this module registers them in mmengine's root ``HOOKS``.

``import backbones`` does not import it. The tools do; a downstream config opts in with
``custom_imports=dict(imports=['backbones', 'backbones.runtime.hooks'])`` and
``custom_hooks=[dict(type='SafeRunHook')]``.
"""
from __future__ import annotations

import functools
import os
import os.path as osp
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop
from mmengine.runner.checkpoint import CheckpointLoader

from ..errors import TrainingDivergedError
from ..safe_load import load_checkpoint_file
from .files import write_atomic
from .layout import channels_last_inside


@contextmanager
def safe_checkpoint_loading(trusted: Iterable[str] = ()) -> Iterator[None]:
    """While active, mmengine reads local and http(s) checkpoints (``load_from``, resume, test)
    without unpickling code (``backbones.safe_load``); ``trusted`` paths load with pickle.

    mmengine's own loaders call ``torch.load`` with torch's default, which unpickles anything
    before torch 2.6 and refuses mmengine's own checkpoints from 2.6 on (mmengine#1655).
    """
    trusted_paths = {osp.realpath(p) for p in trusted}

    def load(filename: str, map_location=None, **_) -> object:
        if '://' not in filename and not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        is_trusted = '://' not in filename and osp.realpath(filename) in trusted_paths
        return load_checkpoint_file(filename, map_location, trusted=is_trusted)

    saved = CheckpointLoader._schemes.copy()
    CheckpointLoader.register_scheme(prefixes=('', 'http://', 'https://'), loader=load,
                                     force=True)
    try:
        yield
    finally:
        CheckpointLoader._schemes = saved


def _save_deferring_removals(save: Callable, hook: CheckpointHook, runner, step: int,
                             meta: dict) -> None:
    """``CheckpointHook._save_checkpoint_with_step`` removing old checkpoints only after the
    new one is complete (upstream removes them first: a kill in between could keep nothing)."""
    pending: list[str] = []
    backend = hook.file_backend
    backend.remove = pending.append
    try:
        save(runner, step, meta)
    finally:
        del backend.remove
    for path in pending:
        backend.remove(path)


@contextmanager
def atomic_checkpoints(runner) -> Iterator[None]:
    """While active, ``runner``'s local checkpoints are written to a temporary file and renamed,
    and its CheckpointHooks remove old checkpoints only after a new one is complete."""
    save = runner.save_checkpoint

    def save_atomic(out_dir: str, filename: str, *args, **kwargs) -> None:
        if '://' in str(out_dir):
            return save(out_dir, filename, *args, **kwargs)
        write_atomic(osp.join(out_dir, filename),
                     lambda tmp: save(osp.dirname(tmp), osp.basename(tmp), *args, **kwargs))

    hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    runner.save_checkpoint = save_atomic
    for hook in hooks:
        hook._save_checkpoint_with_step = functools.partial(
            _save_deferring_removals, hook._save_checkpoint_with_step, hook)
    try:
        yield
    finally:
        del runner.save_checkpoint
        for hook in hooks:
            del hook._save_checkpoint_with_step


_TEMPORARY_CHECKPOINT = re.compile(r'^\..+\.pth\.\w+\.tmp$')  # write_atomic's names


def remove_stale_temporary_files(work_dir: str) -> list[str]:
    """Delete the ``.*.tmp`` files a killed save left in ``work_dir``; returns their names."""
    if not osp.isdir(work_dir):
        return []
    stale = [f for f in os.listdir(work_dir) if _TEMPORARY_CHECKPOINT.match(f)]
    for name in stale:
        os.remove(osp.join(work_dir, name))
    return stale


@HOOKS.register_module()
class SafeRunHook(Hook):
    """Safe loading, atomic checkpoints and a stop on non-finite losses, for any config.

    For one run (``before_run`` to ``after_run``): checkpoints are read without unpickling code
    (``trusted_checkpoints`` lists files to read with pickle anyway), written atomically and old
    ones removed only after a new one is complete; a NaN/inf loss stops training before it is
    saved. Everything it changes is restored after the run.
    """

    priority = 'VERY_HIGH'  # the loss check runs before CheckpointHook saves the iteration

    def __init__(self, safe_loading: bool = True, atomic_checkpoints: bool = True,
                 finite_loss: bool = True, trusted_checkpoints: Iterable[str] = ()):
        self.safe_loading = safe_loading
        self.atomic_checkpoints = atomic_checkpoints
        self.finite_loss = finite_loss
        self.trusted_checkpoints = tuple(trusted_checkpoints)
        self._active = ExitStack()

    def before_run(self, runner) -> None:
        self._active.close()  # a second run (train, then test) of the same runner
        if self.safe_loading:
            self._active.enter_context(safe_checkpoint_loading(self.trusted_checkpoints))
        if self.atomic_checkpoints:
            stale = remove_stale_temporary_files(runner.work_dir)
            if stale:
                print_log(f'removed {len(stale)} unfinished checkpoint file(s) of an earlier '
                          f'run: {", ".join(stale)}', logger='current')
            self._active.enter_context(atomic_checkpoints(runner))

    def after_run(self, runner) -> None:
        self._active.close()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss')
        if self.finite_loss and loss is not None and not torch.isfinite(loss).all():
            self._active.close()
            clip = ('optim_wrapper.clip_grad.max_norm=1.0'
                    if 'clip_grad' in runner.cfg.get('optim_wrapper', {})
                    else 'add clip_grad=dict(max_norm=1.0) to optim_wrapper in the config')
            name = 'epoch' if isinstance(runner.train_loop, EpochBasedTrainLoop) else 'iter'
            raise TrainingDivergedError(
                f'the loss became {loss.item()} at iteration {runner.iter + 1}: lower the lr '
                f'(--cfg-options optim_wrapper.optimizer.lr=...), enable gradient clipping '
                f'({clip}) or check the data, then resume with --resume {runner.work_dir}/'
                f'{name}_N.pth (the checkpoints are complete, but the latest may already hold '
                'diverging weights: pick one saved before the loss grew)')


def _backbone_of(runner) -> torch.nn.Module | None:
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    model = getattr(model, 'module', model)  # TTA wrappers hold the model in .module
    return getattr(model, 'backbone', None)


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Run the model's backbone channels-last inside on the given devices (``runtime.layout``).

    InceptionNeXt trains and infers ~1.15x faster that way on the CPUs measured; the heads still
    get contiguous NCHW maps. Opt in with ``custom_hooks=[dict(type='ChannelsLastHook')]``; the
    tools add it on machines without CUDA.
    """

    priority = 'VERY_HIGH'

    def __init__(self, devices: Iterable[str] = ('cpu',)):
        self.devices = tuple(devices)
        self._handles = ()

    def before_run(self, runner) -> None:
        backbone = _backbone_of(runner)
        param = next(backbone.parameters(), None) if backbone is not None else None
        if param is not None and param.device.type in self.devices and not self._handles:
            self._handles = channels_last_inside(backbone)

    def after_run(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = ()


@HOOKS.register_module()
class DeployBackboneHook(Hook):
    """Before testing (after the checkpoint is loaded), fuse the InceptionNeXt backbone."""

    def before_test_epoch(self, runner) -> None:
        backbone = _backbone_of(runner)
        if not hasattr(backbone, 'fuse'):
            print_log('--deploy: the model has no fusable backbone; testing it unchanged',
                      logger='current', level=30)
            return
        backbone.eval()
        backbone.fuse()
        print_log('--deploy: folded the backbone BatchNorms and layer scales', logger='current')
