"""``SafeRunHook``: the suite's safety parts for one run, each in its own file of this folder."""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner.base_loop import BaseLoop

from ...safe_load import trusted_files
from ..ranks import max_over_ranks
from .atomic_checkpoints import after_disk_full, atomic_checkpoints, remove_stale_temporary_files
from .finite_loss import check_finite_loss
from .log_disk_full import LogDiskFull
from .safe_loading import safe_checkpoint_loading
from .signal_stop import SignalStop


@HOOKS.register_module()
class SafeRunHook(Hook):
    """Safe loading, atomic checkpoints, a stop on non-finite losses and on SIGTERM/SIGINT.

    For one run (``before_run`` to ``after_run``): checkpoints are read without unpickling code
    (``trusted_checkpoints`` lists files to read with pickle anyway: ``load_from``, resume, test
    checkpoints and the backbone's pretrained ``init_cfg``, which ``Runner.train`` loads after
    ``before_run``), written atomically and old
    ones removed only after a new one is complete, and a full disk (of a checkpoint or of the
    log file) is one line; a NaN/inf loss stops training before it is saved. While the training
    loop runs, SIGTERM and SIGINT (where the process left them at Python's default) stop it at
    the next iteration boundary (before a validation due, after one in progress), or right after
    a save in progress, and an iteration-based loop saves a checkpoint of where it stopped; all
    ranks of a distributed run stop at the same iteration. Everything it changes is restored
    after the run, or when training raises.
    """

    priority = 'VERY_HIGH'  # the loss check runs before CheckpointHook saves the iteration

    def __init__(self, safe_loading: bool = True, atomic_checkpoints: bool = True,
                 finite_loss: bool = True, trusted_checkpoints: Iterable[str] = (),
                 stop_on_signals: bool = True):
        self.safe_loading = safe_loading
        self.atomic_checkpoints = atomic_checkpoints
        self.finite_loss = finite_loss
        self.trusted_checkpoints = ((trusted_checkpoints,) if isinstance(trusted_checkpoints, str)
                                    else tuple(trusted_checkpoints))
        self._active = ExitStack()
        self._signals = SignalStop(self._active, enabled=stop_on_signals)
        self._log = LogDiskFull()

    def before_run(self, runner) -> None:
        self._active.close()  # a second run (train, then test) of the same runner
        self._active.enter_context(trusted_files(self.trusted_checkpoints))
        if self.safe_loading:
            self._active.enter_context(safe_checkpoint_loading())
        if self.atomic_checkpoints:
            stale = remove_stale_temporary_files(runner.work_dir)
            if stale:
                print_log(f'removed {len(stale)} unfinished checkpoint file(s) of an earlier '
                          f'run: {", ".join(stale)}', logger='current')
            self._active.enter_context(atomic_checkpoints(runner, self._signals.after_save))
        self._active.enter_context(self._log.noticed(runner.logger))
        loop = getattr(runner, '_train_loop', None)  # built by Runner.train before before_run
        if isinstance(loop, BaseLoop):
            self._signals.guard(runner, loop)

    def after_run(self, runner) -> None:
        self._active.close()
        if self._log.failed:  # the run's last log lines (a test run's: any of them)
            raise self._log.error('free some space: the run finished, but its log is '
                                  'incomplete')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """The iteration boundary: the previous iteration's hooks (lr schedule, logging, saving)
        have all run, so a checkpoint now is what a periodic one would hold. A log file that hit
        a full disk on any rank stops every rank here."""
        if self._signals.training:
            signum, log_full = max_over_ranks(self._signals.signum, self._log.failed)
            if log_full:
                self._active.close()
                raise self._log.error(after_disk_full(runner.work_dir))
            if signum:
                self._signals.stop_at(runner, signum, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.finite_loss:
            try:
                check_finite_loss(runner, outputs)
            except Exception:
                self._active.close()
                raise

    def before_val(self, runner) -> None:
        """A stop asked for before a validation due in training skips it; one asked for during
        it (``after_val``) happens after it."""
        self.before_train_iter(runner, 0)

    after_val = before_val
