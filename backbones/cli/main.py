"""The tools' entry-point wrapper: bad input (a full disk included) ends with one ``error:`` line
and exit status 2; a training stopped by SIGTERM/SIGINT with one ``stopped by`` line and the
shell's status for the signal (143, 130)."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from ..errors import TrainingStopped, UserError, first_line
from ..runtime.files import disk_full_message, is_disk_full


def one_line_errors(main: Callable[[], None]) -> Callable[[], None]:
    """Run ``main``; bad input ends with ``error: ...`` on stderr and exit status 2, a stop on
    a signal with ``stopped by ...`` and 128 + the signal's number."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except UserError as e:
            _fail(str(e))
        except TrainingStopped as e:
            _say(str(e))
            sys.exit(e.exit_status)
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
