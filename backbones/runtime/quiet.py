"""What the tools keep off the console: the stack's known, harmless deprecation notices.

mmseg, mmdet and mmengine warn about their own internals on every run (``build_loss``, the
``reduce_zero_label`` key of their own ADE20K pipeline, ``FileClient`` in mmengine's own hooks),
which a user can do nothing about. The tools (our own processes) hide exactly these, matched by
message and module; any other warning, a user's included, still shows. ``import backbones``
changes no filter: this applies only inside a tool's ``main`` (``one_line_errors``) and to the
console of a tool's Runner (the log file keeps every line).
"""
from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (message regex, category, module regex) of Python warnings raised by the stack on every run
STACK_WARNINGS = (
    (r'``build_loss`` would be deprecated soon', UserWarning, r'mmseg\.models\.builder'),
    (r'Default ``avg_non_ignore`` is False', UserWarning,
     r'mmseg\.models\.losses\.cross_entropy_loss'),
    (r'`reduce_zero_label` will be deprecated', UserWarning, r'mmseg\.datasets\.transforms'),
    (r'The draw is False', UserWarning, r'mm(seg|det)\.engine\.hooks\.visualization_hook'),
    # a predicted box or mask drawn partly outside its image (mmengine clips it)
    (r'Warning: The (bbox|polygon) is out of bounds', UserWarning,
     r'mmengine\.visualization\.visualizer'),
)
# starts of messages that mmengine logs as warnings about its own internals on every run
STACK_LOG_WARNINGS = (
    'The prefix is not set in metric class IoUMetric',  # mmseg's metric
    'The prefix is not set in metric class DumpDetResults',  # mmdet's, of tools/test.py --out
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)


@contextmanager
def stack_warnings_hidden() -> Iterator[None]:
    """Hide the warnings of ``STACK_WARNINGS`` while active; the filters are restored after."""
    with warnings.catch_warnings():
        for message, category, module in STACK_WARNINGS:
            warnings.filterwarnings('ignore', message, category, module)
        yield


@contextmanager
def warning_hidden_from(message: str) -> Iterator[None]:
    """Hide warnings whose message starts with ``message`` from a call that resets the filters
    itself (mmdet's ``init_detector`` calls ``simplefilter('once')``, which overrides every
    filter set before): every warning of the call is recorded, the others are re-emitted after
    it, and the call's filter changes end with it."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        if not str(w.message).startswith(message):
            module = next((name for name, m in list(sys.modules.items())
                           if getattr(m, '__file__', None) == w.filename), None)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, module)


class _StackLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING
                    and str(record.msg).startswith(STACK_LOG_WARNINGS))


def hide_stack_log_warnings(logger: logging.Logger) -> None:
    """Keep ``STACK_LOG_WARNINGS`` off the console handlers of ``logger`` (a Runner's
    ``MMLogger``); its log file still records them."""
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler and not any(
                isinstance(f, _StackLogFilter) for f in handler.filters):
            handler.addFilter(_StackLogFilter())
