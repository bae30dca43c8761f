"""Runner hooks of the suite; importing this module registers them in mmengine's root ``HOOKS``.

``import backbones`` does not import it. The tools do; a downstream config opts in with
``custom_imports=dict(imports=['backbones', 'backbones.runtime.hooks'])`` and
``custom_hooks=[dict(type='SafeRunHook')]``.
"""
from __future__ import annotations

import functools
import logging
import os
import os.path as osp
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.checkpoint import CheckpointLoader, find_latest_checkpoint

from ..errors import DiskFullError, TrainingDivergedError, TrainingStopped
from ..safe_load import load_checkpoint_file
from .files import disk_full_message, is_disk_full, write_atomic
from .layout import channels_last_inside
from .signals import StopRequest


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


def _max_over_ranks(*values: int) -> list[int]:
    """``values`` reduced with max over the ranks of a distributed run (all ranks must call)."""
    if get_world_size() == 1:
        return list(values)
    flags = torch.tensor(values, dtype=torch.int64)
    all_reduce(flags, op='max')
    return flags.tolist()


def _after_disk_full(out_dir: str) -> str:
    last = latest_complete_checkpoint(out_dir)
    kept = f'the last complete checkpoint, {last}, is intact' if last else \
        'no checkpoint was complete yet'
    return f'free some space, then continue with --resume ({kept})'


def _save_step(save: Callable, hook: CheckpointHook, after_save: Callable | None, runner,
               step: int, meta: dict) -> None:
    """``CheckpointHook._save_checkpoint_with_step`` removing old checkpoints only after the
    new one is complete (upstream removes them first: a kill in between could keep nothing); a
    full disk stops every rank; ``after_save(runner, hook, meta)`` follows a complete save."""
    pending: list[str] = []
    backend = hook.file_backend
    backend.remove = pending.append
    failed = None
    try:
        save(runner, step, meta)
    except Exception as e:  # only the main process writes
        if not is_disk_full(e, runner.work_dir):
            raise
        failed = e if isinstance(e, DiskFullError) else DiskFullError(
            f'{disk_full_message(e, hook.last_ckpt)}: {_after_disk_full(hook.out_dir)}')
    finally:
        del backend.remove
    if _max_over_ranks(failed is not None)[0]:
        raise failed or DiskFullError('the main process found no space left for a checkpoint')
    for path in pending:
        backend.remove(path)
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
            raise DiskFullError(f'{e}: {_after_disk_full(out_dir)}') from e.__cause__

    hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    runner.save_checkpoint = save_atomic
    for hook in hooks:
        hook._save_checkpoint_with_step = functools.partial(
            _save_step, hook._save_checkpoint_with_step, hook, after_save)
    try:
        yield
    finally:
        del runner.save_checkpoint
        for hook in hooks:
            del hook._save_checkpoint_with_step


@contextmanager
def log_disk_full_noticed(logger: logging.Logger,
                          failed: list[tuple[BaseException, str]]) -> Iterator[None]:
    """While active, a write of ``logger``'s log files that fails on a full disk is appended to
    ``failed`` as (error, file) instead of what logging does (a traceback, then training on
    without a log); other errors are handled as logging handles them."""
    handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]

    def handle_error(handler: logging.FileHandler, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if error is not None and is_disk_full(error):
            failed.append((error, handler.baseFilename))
        else:
            type(handler).handleError(handler, record)

    for handler in handlers:
        handler.handleError = functools.partial(handle_error, handler)
    try:
        yield
    finally:
        for handler in handlers:
            vars(handler).pop('handleError', None)


def _chain_text(error: BaseException | None) -> str:
    """The messages of ``error`` and of the exceptions it wraps (mmengine re-raises an error
    raised inside a save as another one)."""
    texts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return '\n'.join(texts)


def _data_loader_worker_ended(error: BaseException) -> bool:
    return 'DataLoader worker (pid' in _chain_text(error)


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
    """Safe loading, atomic checkpoints, a stop on non-finite losses and on SIGTERM/SIGINT.

    For one run (``before_run`` to ``after_run``): checkpoints are read without unpickling code
    (``trusted_checkpoints`` lists files to read with pickle anyway), written atomically and old
    ones removed only after a new one is complete, and a full disk is reported as such; a
    NaN/inf loss stops training before it is saved. While the training loop runs, SIGTERM and
    SIGINT (where the process left them at Python's default) stop it at the next iteration
    boundary (before a validation due, after one in progress), or right after a save in
    progress, and an iteration-based loop saves a checkpoint of where it stopped (see
    ``runtime.signals``); all ranks of a distributed run stop at the same iteration. Everything
    it changes is restored after the run, or when training raises.
    """

    priority = 'VERY_HIGH'  # the loss check runs before CheckpointHook saves the iteration

    def __init__(self, safe_loading: bool = True, atomic_checkpoints: bool = True,
                 finite_loss: bool = True, trusted_checkpoints: Iterable[str] = (),
                 stop_on_signals: bool = True):
        self.safe_loading = safe_loading
        self.atomic_checkpoints = atomic_checkpoints
        self.finite_loss = finite_loss
        self.trusted_checkpoints = tuple(trusted_checkpoints)
        self.stop_on_signals = stop_on_signals
        self._active = ExitStack()
        self._stop = StopRequest()
        self._training = False
        self._log_failed: list[tuple[BaseException, str]] = []

    def before_run(self, runner) -> None:
        self._active.close()  # a second run (train, then test) of the same runner
        if self.safe_loading:
            self._active.enter_context(safe_checkpoint_loading(self.trusted_checkpoints))
        if self.atomic_checkpoints:
            stale = remove_stale_temporary_files(runner.work_dir)
            if stale:
                print_log(f'removed {len(stale)} unfinished checkpoint file(s) of an earlier '
                          f'run: {", ".join(stale)}', logger='current')
            self._active.enter_context(atomic_checkpoints(runner, self._stop_after_save))
        self._log_failed = []
        self._active.enter_context(log_disk_full_noticed(runner.logger, self._log_failed))
        loop = getattr(runner, '_train_loop', None)  # built by Runner.train before before_run
        if isinstance(loop, BaseLoop):
            self._guard(runner, loop)

    def _guard(self, runner, loop: BaseLoop) -> None:
        """Run ``loop`` with the signal handlers installed, and undo everything if it raises."""
        run = loop.run

        def on_force() -> None:  # a second Ctrl-C: the save in progress will not finish
            if is_main_process():
                for folder in {runner.work_dir, *(getattr(h, 'out_dir', None) or runner.work_dir
                                                  for h in runner.hooks
                                                  if isinstance(h, CheckpointHook))}:
                    remove_stale_temporary_files(folder)

        def guarded_run():
            self._stop = StopRequest(on_force, announce=is_main_process())
            self._training = True
            try:
                if self.stop_on_signals:
                    self._active.enter_context(self._stop.installed())
                return run()
            except BaseException as e:
                if self._stop.signum and _data_loader_worker_ended(e):
                    self._stop_after_workers(runner, e)
                self._active.close()
                raise
            finally:
                self._training = False

        loop.run = guarded_run
        self._active.callback(vars(loop).pop, 'run', None)

    def after_run(self, runner) -> None:
        self._active.close()
        if self._log_failed:  # the run's last log lines (a test run's: any of them)
            raise self._log_disk_full('free some space: the run finished, but its log is '
                                      'incomplete')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """The iteration boundary: the previous iteration's hooks (lr schedule, logging, saving)
        have all run, so a checkpoint now is what a periodic one would hold. A log file that hit
        a full disk on any rank stops every rank here."""
        if self._training:
            signum, log_full = _max_over_ranks(self._stop.signum if self.stop_on_signals else 0,
                                               bool(self._log_failed))
            if log_full:
                self._active.close()
                raise self._log_disk_full(_after_disk_full(runner.work_dir))
            if signum:
                self._stop_at(runner, signum, runner.iter)

    def _log_disk_full(self, then: str) -> DiskFullError:
        """The one line for a log file write that failed on a full disk (here or on another
        rank); ``then``: what to do."""
        if not self._log_failed:
            return DiskFullError(f'no space left for the log file of another rank: {then}')
        error, path = self._log_failed[0]
        return DiskFullError(f'{disk_full_message(error, path)}: {then}')

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

    def before_val(self, runner) -> None:
        """A stop asked for before a validation due in training skips it; one asked for during
        it (``after_val``) happens after it."""
        self.before_train_iter(runner, 0)

    after_val = before_val

    def _stop_at(self, runner, signum: int, done: int) -> None:
        """Stop after ``done`` iterations: an iteration-based loop saves them first."""
        hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
        if not isinstance(runner.train_loop, EpochBasedTrainLoop) and hooks and \
                not hooks[0].by_epoch:
            hook, meta = hooks[0], dict(epoch=runner.epoch, iter=done)
            if hook.last_ckpt != hook.file_backend.join_path(hook.out_dir,
                                                             hook.filename_tmpl.format(done)):
                runner.logger.info(f'Saving checkpoint at {done} iterations')
                hook._save_checkpoint_with_step(runner, done, meta)  # may raise the stop itself
            self._stop_after_save(runner, hook, meta)
        self._active.close()
        raise self._stopped_without_saving(
            runner, signum, done, 'epoch-based training saves whole epochs only'
            if isinstance(runner.train_loop, EpochBasedTrainLoop)
            else 'the config has no iteration-based CheckpointHook')

    def _stop_after_workers(self, runner, error: BaseException) -> None:
        """The data loader workers got the signal too (SLURM signals every process of a job)
        and ended. Found by the main process fetching the next batch, this is an iteration
        boundary: save it as at any other (single-process runs; the ranks of a distributed run
        may not be at the same point). Found by torch's SIGCHLD handler before ours silenced
        it, it is anywhere: stop without saving."""
        signum = self._stop.signum
        if 'exited unexpectedly' in _chain_text(error) and get_world_size() == 1:
            self._stop_at(runner, signum, runner.iter)
        self._active.close()
        raise self._stopped_without_saving(
            runner, signum, runner.iter,
            'the data loader workers got the signal too and ended first') from error

    @staticmethod
    def _stopped_without_saving(runner, signum: int, done: int, why: str) -> TrainingStopped:
        last = latest_complete_checkpoint(runner.work_dir)
        return TrainingStopped(
            f'stopped by {signal.Signals(signum).name} at iteration {done}, without saving '
            f'({why}): ' + (f'continue with --resume from the last complete checkpoint, {last}'
                            if last else 'no checkpoint was saved yet'), signum)

    def _stop_after_save(self, runner, hook: CheckpointHook, meta: dict) -> None:
        """After a complete save: stop there if any rank got SIGTERM/SIGINT."""
        if not (self._training and self.stop_on_signals):
            return
        signum = _max_over_ranks(self._stop.signum)[0]
        if signum:
            when = (f'epoch {meta["epoch"]} (iteration {meta["iter"]})' if hook.by_epoch
                    else f'iteration {meta["iter"]}')
            self._active.close()
            raise TrainingStopped(f'stopped by {signal.Signals(signum).name} after {when}; '
                                  f'saved {hook.last_ckpt}: continue with --resume', signum)


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
