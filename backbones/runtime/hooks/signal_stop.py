"""SIGTERM/SIGINT during training: stop at the next iteration boundary, or right after a save in
progress, with a checkpoint of where it stopped where the schedule allows one; every rank of a
distributed run stops at the same iteration (``runtime.signals`` records the request)."""
from __future__ import annotations

import signal
import sys
from contextlib import ExitStack

from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.runner import EpochBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop

from ...errors import TrainingStopped
from .. import patches
from ..ranks import max_over_ranks
from ..signals import StopRequest
from .atomic_checkpoints import latest_complete_checkpoint, remove_stale_temporary_files


def _chain_text(error: BaseException | None) -> str:
    """The messages of ``error`` and of the exceptions it wraps (mmengine re-raises an error
    raised inside a save as another one)."""
    texts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return '\n'.join(texts)


def _stopped(line: str, signum: int) -> TrainingStopped:
    """The stop, its line printed first (by the main process): whoever owns the process, the
    console ends with where the checkpoint is and how to go on."""
    if is_main_process():
        print(line, file=sys.stderr, flush=True)
    return TrainingStopped(line, signum)


def _checkpoint_hooks(runner) -> list[CheckpointHook]:
    return [h for h in runner.hooks if isinstance(h, CheckpointHook)]


class SignalStop:
    """The signal part of ``SafeRunHook``. ``active`` is the hook's stack of everything it
    changed for the run, closed before a stop is raised and when training raises."""

    def __init__(self, active: ExitStack, enabled: bool = True):
        self.active = active
        self.enabled = enabled
        self.request = StopRequest()
        self.training = False

    def guard(self, runner, loop: BaseLoop) -> None:
        """Run ``loop`` with the signal handlers installed; if it raises, undo everything."""
        run = loop.run

        def on_force() -> None:  # a second Ctrl-C: the save in progress will not finish
            if is_main_process():
                for folder in {runner.work_dir, *(getattr(h, 'out_dir', None) or runner.work_dir
                                                  for h in _checkpoint_hooks(runner))}:
                    remove_stale_temporary_files(folder)

        def guarded_run():
            self.request = StopRequest(on_force, announce=is_main_process())
            self.training = True
            try:
                if self.enabled:
                    self.active.enter_context(self.request.installed())
                return run()
            except BaseException as e:
                if self.request.signum and 'DataLoader worker (pid' in _chain_text(e):
                    self._stop_after_workers(runner, e)
                self.active.close()
                raise
            finally:
                self.training = False

        self.active.enter_context(patches.train_loop_run(loop, guarded_run))

    @property
    def signum(self) -> int:
        """The signal asked for here (0: none), to be reduced over the ranks by the caller."""
        return self.request.signum if self.enabled else 0

    def stop_at(self, runner, signum: int, done: int) -> None:
        """Stop after ``done`` iterations: an iteration-based loop saves them first."""
        hooks = _checkpoint_hooks(runner)
        epochs = isinstance(runner.train_loop, EpochBasedTrainLoop)
        if not epochs and hooks and not hooks[0].by_epoch:
            hook, meta = hooks[0], dict(epoch=runner.epoch, iter=done)
            if hook.last_ckpt != hook.file_backend.join_path(hook.out_dir,
                                                             hook.filename_tmpl.format(done)):
                runner.logger.info(f'Saving checkpoint at {done} iterations')
                hook._save_checkpoint_with_step(runner, done, meta)  # may raise the stop itself
            self.after_save(runner, hook, meta)
        self.active.close()
        raise self._stopped_without_saving(
            runner, signum, done, 'epoch-based training saves whole epochs only' if epochs
            else 'the config has no iteration-based CheckpointHook')

    def after_save(self, runner, hook: CheckpointHook, meta: dict) -> None:
        """After a complete save: stop there if any rank got SIGTERM/SIGINT."""
        if not (self.training and self.enabled):
            return
        signum = max_over_ranks(self.request.signum)[0]
        if signum:
            when = (f'epoch {meta["epoch"]} (iteration {meta["iter"]})' if hook.by_epoch
                    else f'iteration {meta["iter"]}')
            self.active.close()
            raise _stopped(f'stopped by {signal.Signals(signum).name} after {when}; saved '
                           f'{hook.last_ckpt}: continue with --resume', signum)

    def _stop_after_workers(self, runner, error: BaseException) -> None:
        """The data loader workers got the signal too (SLURM signals every process of a job)
        and ended. Found by the main process fetching the next batch, this is an iteration
        boundary: save it as at any other (single-process runs; the ranks of a distributed run
        may not be at the same point). Found by torch's SIGCHLD handler before ours silenced
        it, it is anywhere: stop without saving."""
        signum = self.request.signum
        if 'exited unexpectedly' in _chain_text(error) and get_world_size() == 1:
            self.stop_at(runner, signum, runner.iter)
        self.active.close()
        raise self._stopped_without_saving(
            runner, signum, runner.iter,
            'the data loader workers got the signal too and ended first') from error

    @staticmethod
    def _stopped_without_saving(runner, signum: int, done: int, why: str) -> TrainingStopped:
        last = latest_complete_checkpoint(runner.work_dir)
        return _stopped(
            f'stopped by {signal.Signals(signum).name} at iteration {done}, without saving '
            f'({why}): ' + (f'continue with --resume from the last complete checkpoint, {last}'
                            if last else 'no checkpoint was saved yet'), signum)
