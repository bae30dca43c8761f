"""The one pre-run sequence of ``tools/train.py`` and ``tools/test.py``: the config made runnable
here, every check that needs no Runner, then the Runner."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checks.constructors import check_constructors
from ..checks.data import check_data_roots, check_num_classes
from ..checks.transforms import add_data_checks
from .adapt import adapt_to_device, add_safety_hooks
from .quiet import hide_stack_log_warnings
from .workdir import claim_log_folder, work_dir_lock


def build_runner(cfg: Config, launcher: str, loaders: Sequence[str], train: bool,
                 amp: bool = False, trusted_checkpoints: Iterable[str] = (),
                 lock: ExitStack | None = None) -> Runner:
    """Adapt ``cfg`` to this machine (``adapt_to_device``) and add ``SafeRunHook`` and the
    per-sample data checks of ``loaders``; check the constructors' arguments, the data roots and
    the heads' class counts, so that bad input fails before the Runner writes anything; then
    build the Runner, its console without the stack's known notices. With ``lock`` (training),
    the work dir's lock is entered into that stack first, so that it is held until the stack
    closes; the Runner's timestamped log folder is one no other run in the work dir uses."""
    cfg.launcher = launcher
    adapt_to_device(cfg, launcher, amp)
    add_safety_hooks(cfg, trusted_checkpoints)
    check_constructors(cfg, train=train)
    check_data_roots(cfg, loaders)
    check_num_classes(cfg, loaders)
    add_data_checks(cfg, loaders)
    took_over = lock.enter_context(work_dir_lock(cfg.work_dir)) if lock is not None else None
    claimed = claim_log_folder(cfg.work_dir)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if claimed and os.path.abspath(claimed) != os.path.abspath(runner.log_dir) and \
            os.path.isdir(claimed) and not os.listdir(claimed):
        os.rmdir(claimed)  # the Runner's clock had passed to the next second
    hide_stack_log_warnings(runner.logger)
    if took_over:
        runner.logger.warning(took_over)
    return runner
