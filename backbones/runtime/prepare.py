"""The one pre-run sequence of ``tools/train.py`` and ``tools/test.py``: the config made runnable
here, every check that needs no Runner, then the Runner."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checks.constructors import check_constructors
from ..checks.data import check_data_roots, check_num_classes
from ..checks.transforms import add_data_checks
from .adapt import adapt_to_device, add_safety_hooks
from .quiet import hide_stack_log_warnings


def build_runner(cfg: Config, launcher: str, loaders: Sequence[str], train: bool,
                 amp: bool = False, trusted_checkpoints: Iterable[str] = ()) -> Runner:
    """Adapt ``cfg`` to this machine (``adapt_to_device``) and add ``SafeRunHook`` and the
    per-sample data checks of ``loaders``; check the constructors' arguments, the data roots and
    the heads' class counts, so that bad input fails before the Runner writes anything; then
    build the Runner, its console without the stack's known notices."""
    cfg.launcher = launcher
    adapt_to_device(cfg, launcher, amp)
    add_safety_hooks(cfg, trusted_checkpoints)
    check_constructors(cfg, train=train)
    check_data_roots(cfg, loaders)
    check_num_classes(cfg, loaders)
    add_data_checks(cfg, loaders)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    hide_stack_log_warnings(runner.logger)
    return runner
