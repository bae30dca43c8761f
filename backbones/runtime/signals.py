"""SIGTERM and SIGINT as requests to stop training at the next safe point (used by SafeRunHook).

While installed, the first SIGTERM or SIGINT only records the request (a save in progress is
never interrupted): the training loop asks ``signum`` at its safe points and stops there. A
second Ctrl-C, at least a second after the first, stops at once: it calls ``on_force`` (which
removes the temporary file of a save in progress) and lets SIGINT kill the process. A repeated
SIGTERM changes nothing (schedulers follow it with SIGKILL when their patience ends), and neither
does a copy of the first signal that arrives within the second (a launcher in the terminal's
process group passing on a Ctrl-C its children already got from the terminal).

After the first signal, a Python SIGCHLD handler is replaced by a no-op until the end: torch's
DataLoader raises from its handler, anywhere in the main process, when a worker ends, and SLURM
signals the workers too. A worker that is gone is then found where the main process fetches the
next batch, at an iteration boundary.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCE_AFTER_S = 1.0
_PYTHON_DEFAULTS = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}


def _ignore(signum: int, frame) -> None:
    pass


class StopRequest:
    """Records the first SIGTERM/SIGINT while ``installed()``; ``signum`` is 0 until then."""

    def __init__(self, on_force: Callable[[], None] = lambda: None, announce: bool = True):
        self.on_force = on_force
        self.announce = announce
        self.signum = 0
        self._first_at = 0.0
        self._pid = 0
        self._sigchld = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGTERM and SIGINT where the process left Python's default (a handler of the
        host's, or an ignored signal, stays as it is); restore the defaults on exit."""
        ours = []
        if threading.current_thread() is threading.main_thread():
            ours = [s for s in SIGNALS if signal.getsignal(s) is _PYTHON_DEFAULTS[s]]
        self.signum, self._pid = 0, os.getpid()
        for s in ours:
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s in ours:
                signal.signal(s, _PYTHON_DEFAULTS[s])
            if self._sigchld is not None:
                signal.signal(signal.SIGCHLD, self._sigchld)
                self._sigchld = None

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data loader worker: the main process decides when to stop
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self._first_at = signum, time.monotonic()
            if callable(signal.getsignal(signal.SIGCHLD)):
                self._sigchld = signal.signal(signal.SIGCHLD, _ignore)
            again = '; press Ctrl-C again to stop at once' if signum == signal.SIGINT else ''
            self._say(f'{name}: stopping after the current iteration or checkpoint save{again}')
        elif signum == signal.SIGINT and time.monotonic() - self._first_at >= FORCE_AFTER_S:
            self.on_force()
            self._say('stopped by a second SIGINT at once, without saving; the last complete '
                      'checkpoint is intact: continue with --resume')
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _say(self, line: str) -> None:
        if self.announce:  # os.write: a print could re-enter a write the signal interrupted
            os.write(2, f'{line}\n'.encode())
