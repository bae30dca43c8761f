"""Every patch of a live mmengine or mmcv object the suite makes, in one place.

Each patch replaces one attribute for the time of a ``with`` block and restores it on exit, so
nothing outlives the run that asked for it. They reach into internals that mmengine and mmcv do
not document; each was checked against mmengine 0.10.0 and 0.10.7 and mmcv 2.1.0 (the stacks of
``requirements/compat.txt`` and ``requirements/lock.txt``). A new mmengine or mmcv release is
checked here first. The one addition outside this module replaces nothing: the opt-in
``import backbones.ops.roi_align`` adds the name ``SparseRoIAlign`` to ``mmcv.ops``, where mmdet
looks RoI layer types up.
"""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from mmengine.runner.checkpoint import CheckpointLoader

CHECKED_AGAINST = {'mmengine': ('0.10.0', '0.10.7'), 'mmcv': ('2.1.0',)}

_ABSENT = object()


@contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    """``obj.name = value`` while active; on exit the instance attribute it shadowed is put back,
    or removed if there was none (the class attribute shows through again)."""
    before = vars(obj).get(name, _ABSENT)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if before is _ABSENT:
            delattr(obj, name)
        else:
            setattr(obj, name, before)


@contextmanager
def checkpoint_loader_scheme(prefixes: tuple[str, ...], load: Callable) -> Iterator[None]:
    """``CheckpointLoader`` (class-level ``_schemes``: URL prefix -> loader) reads the given
    prefixes with ``load``; the loader ``load_checkpoint`` and ``Runner.load_checkpoint`` use for
    ``load_from``, ``resume`` and test checkpoints."""
    saved = CheckpointLoader._schemes.copy()
    CheckpointLoader.register_scheme(prefixes=prefixes, loader=load, force=True)
    try:
        yield
    finally:
        CheckpointLoader._schemes = saved


def runner_save_checkpoint(runner, save: Callable) -> Callable:
    """``runner.save_checkpoint`` (called by ``CheckpointHook`` with ``out_dir, filename``)."""
    return patched(runner, 'save_checkpoint', save)


def checkpoint_hook_save_step(hook, save_step: Callable) -> Callable:
    """``CheckpointHook._save_checkpoint_with_step(runner, step, meta)``: saves, then removes the
    checkpoints beyond ``max_keep_ckpts`` with ``hook.file_backend.remove``."""
    return patched(hook, '_save_checkpoint_with_step', save_step)


def file_backend_remove(backend, remove: Callable) -> Callable:
    """``CheckpointHook.file_backend.remove(path)``, the call that deletes old checkpoints."""
    return patched(backend, 'remove', remove)


def train_loop_run(loop, run: Callable) -> Callable:
    """``runner.train_loop.run()``, built by ``Runner.train`` before the ``before_run`` hooks."""
    return patched(loop, 'run', run)


@contextmanager
def log_file_errors(logger: logging.Logger,
                    handle_error: Callable[[logging.FileHandler, logging.LogRecord], None]
                    ) -> Iterator[None]:
    """``handleError`` of the file handlers of mmengine's ``MMLogger`` (the run's log file):
    called by logging, with the exception current, when a write fails."""
    with ExitStack() as stack:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                stack.enter_context(patched(handler, 'handleError',
                                            functools.partial(handle_error, handler)))
        yield


@contextmanager
def mmcv_nms_and_roi_align(wrap_nms: Callable, wrap_roi_align_forward: Callable
                           ) -> Iterator[None]:
    """mmcv's ``nms`` (looked up in ``mmcv.ops.nms`` by ``batched_nms``) and
    ``RoIAlign.forward``, each replaced by a wrapper of itself."""
    from mmcv.ops import RoIAlign
    nms_module = sys.modules['mmcv.ops.nms']  # `mmcv.ops.nms` the attribute is the function
    with patched(nms_module, 'nms', wrap_nms(nms_module.nms)), \
            patched(RoIAlign, 'forward', wrap_roi_align_forward(RoIAlign.forward)):
        yield


def model_test_step(model, test_step: Callable) -> Callable:
    """``model.test_step``, mmengine's ``BaseModel`` entry point of ``runner.test()``."""
    return patched(model, 'test_step', test_step)

