"""The tools' entry-point wrapper: bad input (a full disk included) ends with one ``error:`` line
and exit status 2; the stack's known deprecation notices stay off the console
(``runtime/quiet.py``). A training stopped by SIGTERM/SIGINT ends as ``SafeRunHook`` ends it, in
any process: one ``stopped by`` line and the shell's status for the signal (143, 130)."""
from __future__ import annotations

import functools
import os
import sys
from argparse import ArgumentParser
from collections.abc import Callable, Sequence

from ..errors import ConfigError, UserError, first_line
from ..files import disk_full_message, is_disk_full
from ..runtime.quiet import stack_warnings_hidden


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
    """Run ``main`` with the stack's known warnings hidden; bad input ends with ``error: ...``
    on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            with stack_warnings_hidden():
                main()
        except UserError as e:
            _fail(str(e))
        except OSError as e:  # a full disk outside the checkpoint writer (logs, results)
            if not is_disk_full(e):
                raise
            _fail(disk_full_message(e, e.filename) if e.filename else
                  f'no space left on the device: {first_line(e)}')
        except TypeError as e:
            if 'unexpected keyword argument' not in str(e):
                raise
            _fail(f'config error: {first_line(e)} (check the keys of the config and '
                  f'of --cfg-options)')
        except KeyError as e:
            if 'is not in the' not in str(e) or 'registry' not in str(e):
                raise
            _fail(f'config error: {str(e).strip(chr(34)).splitlines()[0]}')

    return wrapper


def _say(line: str) -> None:
    if os.environ.get('RANK', '0') == '0':
        print(line, file=sys.stderr)


def _fail(message: str) -> None:
    _say(f'error: {message}')
    sys.exit(2)
