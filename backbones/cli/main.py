"""The tools' entry-point wrapper: bad input ends with one ``error:`` line and exit status 2, and
the stack's known deprecation notices stay off the console (``quiet.py``)."""
from __future__ import annotations

import functools
import os
import sys
from argparse import ArgumentParser
from collections.abc import Callable

from ..errors import UserError, first_line
from .quiet import stack_warnings_hidden


def add_runner_args(parser: ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``: the flags of every tool that runs
    a config through the Runner, spelt as in mmdet/mmseg."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.drop_path_rate=0.1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def one_line_errors(main: Callable[[], None]) -> Callable[[], None]:
    """Run ``main`` with the stack's known warnings hidden; bad input ends with ``error: ...`` on
    stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            with stack_warnings_hidden():
                main()
        except UserError as e:
            _fail(str(e))
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


def _fail(message: str) -> None:
    rank = os.environ.get('RANK', '0')
    if rank == '0':
        print(f'error: {message}', file=sys.stderr)
    sys.exit(2)
