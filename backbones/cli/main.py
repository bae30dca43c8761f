"""The tools' entry-point wrapper: bad input and the machine's limits (files the operating system
refuses, a full disk, memory) end with one ``error:`` line and exit status 2, a defect with one
line, a crash report and exit status 1 (``failures.py``); the stack's known deprecation notices
stay off the console (``runtime/quiet.py``). A training stopped by SIGTERM/SIGINT ends as
``SafeRunHook`` ends it, in any process: one ``stopped by`` line and the shell's status for the
signal (143, 130)."""
from __future__ import annotations

import functools
import os
import sys
import traceback
from argparse import ArgumentParser
from collections.abc import Callable, Sequence

from ..errors import ConfigError, forget_run
from ..runtime.quiet import stack_warnings_hidden
from .failures import BAD_INPUT, DEFECT, explain, headline, write_crash_report

INTERRUPTED = 130  # the shell's status for SIGINT


def add_cfg_options(parser: ArgumentParser) -> None:
    """``--cfg-options KEY=VALUE ...``: every tool that reads a config takes it, as upstream."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.drop_path_rate=0.1')


def add_runner_args(parser: ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``: the flags of every tool that runs
    a config through the Runner, spelt as in mmdet/mmseg."""
    add_cfg_options(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_shape(shape: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``--shape H W`` (or one size for a square input) as (height, width); ``default`` if None."""
    if shape is None:
        return default
    if len(shape) not in (1, 2) or min(shape) < 32:
        raise ConfigError(f'--shape {" ".join(map(str, shape))}: give H W (or one size for a '
                          'square input), each at least 32')
    return (shape[0], shape[-1])



def one_line_errors(main: Callable[[], None]) -> Callable[[], None]:
    """Run ``main`` with the stack's known warnings hidden. Every exception ends in one line on
    stderr (``failures.py`` has the table): bad input and the machine's limits ``error: ...``
    and exit status 2; a defect ``error: internal error: ...`` with the path of its crash report
    and exit status 1; Ctrl-C 130. ``SystemExit`` (``TrainingStopped`` too) passes unchanged."""

    @functools.wraps(main)
    def wrapper() -> None:
        forget_run()
        try:
            with stack_warnings_hidden():
                main()
        except KeyboardInterrupt:  # outside training (SafeRunHook stops that at an iteration)
            _say('stopped by SIGINT (Ctrl-C)')
            sys.exit(INTERRUPTED)
        except Exception as e:
            line = explain(e)
            if line is not None:
                _fail(line)
            report = write_crash_report(e)
            where = f'crash report: {report}' if report else 'no crash report could be written'
            _say(f'error: internal error: {headline(e)}; {where} (please include it in a bug '
                 f'report)')
            if report is None and os.environ.get('RANK', '0') == '0':
                traceback.print_exception(e)
            sys.exit(DEFECT)
        finally:
            forget_run()

    return wrapper


def _say(line: str) -> None:
    if os.environ.get('RANK', '0') == '0':
        print(line, file=sys.stderr)


def _fail(message: str) -> None:
    _say(f'error: {message}')
    sys.exit(BAD_INPUT)
