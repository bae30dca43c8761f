"""A log file write that fails on a full disk, noticed (Python's logging would print a traceback
and train on without a log) so that the run can stop with one line."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import DiskFullError
from ...files import disk_full_message, is_disk_full
from .. import patches


class LogDiskFull:
    """The log file writes of a run that failed on a full disk: ``failed`` is true once one did,
    here; ``error(then)`` is the one line to stop with."""

    def __init__(self) -> None:
        self._failed: list[tuple[BaseException, str]] = []

    @property
    def failed(self) -> bool:
        return bool(self._failed)

    @contextmanager
    def noticed(self, logger: logging.Logger) -> Iterator[None]:
        """While active, a full-disk write of ``logger``'s log files is recorded instead of
        handled by logging; other errors are handled as logging handles them."""
        self._failed.clear()

        def handle_error(handler: logging.FileHandler, record: logging.LogRecord) -> None:
            error = sys.exc_info()[1]
            if error is not None and is_disk_full(error):
                self._failed.append((error, handler.baseFilename))
            else:
                type(handler).handleError(handler, record)

        with patches.log_file_errors(logger, handle_error):
            yield

    def error(self, then: str) -> DiskFullError:
        """The one line for a log file write that failed on a full disk (here or on another
        rank); ``then``: what to do."""
        if not self._failed:
            return DiskFullError(f'no space left for the log file of another rank: {then}')
        error, path = self._failed[0]
        return DiskFullError(f'{disk_full_message(error, path)}: {then}')
