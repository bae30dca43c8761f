"""A training's hold on its work dir: one training at a time (a lock file holding the PID and
host of its main process), the checkpoints of an earlier run moved aside for ``--overwrite``,
and a log folder (mmengine's ``WORK_DIR/<timestamp>/``) that no other run shares."""
from __future__ import annotations

import os
import os.path as osp
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ConfigError

LOCK_FILE = 'train.lock'


def _is_main_process() -> bool:
    """RANK 0, or no RANK (a single process): launchers set RANK for each process."""
    return os.environ.get('RANK', '0') == '0'


def _owner(path: str) -> tuple[int, str] | None:
    """(PID, host) written in the lock file ``path``; None if unreadable or malformed."""
    try:
        with open(path) as f:
            pid, host = f.read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _running_here(pid: int) -> bool:
    if pid == os.getpid():  # a lock of this very process left by an earlier in-process run
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed run its parent has not reaped yet (a zombie) is not running
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


@contextmanager
def work_dir_lock(work_dir: str) -> Iterator[str | None]:
    """Hold ``WORK_DIR/train.lock`` for the time of the block (main process only; removed on
    exit, errors and signal stops included). A lock of a live process refuses the run with one
    line; one whose PID is not running on this host (a killed run) is taken over. Yields a line
    for the log when it took a lock over, else None."""
    if not _is_main_process():
        yield None
        return
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, LOCK_FILE)
    host, note = socket.gethostname(), None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is not None and (owner[1] != host or _running_here(owner[0])):
                where = 'on this machine' if owner[1] == host else f'on host {owner[1]}'
                raise ConfigError(
                    f'work dir {work_dir} is in use by another training (PID {owner[0]} '
                    f'{where}, lock {path}): wait for it to end or train into another '
                    '--work-dir; if no such run is left, delete the lock file') from None
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            note = (f'took over the lock {path} of a training that is no longer running'
                    + (f' (PID {owner[0]} on {owner[1]})' if owner else ' (unreadable lock)'))
            continue
        with os.fdopen(fd, 'w') as f:
            f.write(f'{os.getpid()} {host}\n')
        break
    else:
        raise ConfigError(f'work dir {work_dir}: could not take the lock {path} (other runs '
                          'keep taking it): train into another --work-dir')
    try:
        yield note
    finally:
        if _owner(path) == (os.getpid(), host):
            os.remove(path)


def previous_run_folder(work_dir: str) -> str:
    """A new name ``work_dir/previous_<timestamp>[_n]`` for ``--overwrite`` to move an earlier
    run's checkpoints into (not created yet: nothing is written before every check passed)."""
    stamp, n = time.strftime('%Y%m%d_%H%M%S'), 0
    while osp.exists(dest := osp.join(work_dir, f'previous_{stamp}' + (f'_{n}' if n else ''))):
        n += 1
    return dest


def move_previous_run(work_dir: str, names: list[str], dest: str) -> bool:
    """Move ``names`` (the checkpoints of an earlier run, ``last_checkpoint`` included) from
    ``work_dir`` into the new folder ``dest``; False if nothing was there to move. Main process
    only."""
    names = [n for n in names if osp.isfile(osp.join(work_dir, n))]
    if not names or not _is_main_process():
        return False
    os.makedirs(dest)
    for name in names:
        os.replace(osp.join(work_dir, name), osp.join(dest, name))
    return True


def claim_log_folder(work_dir: str) -> str | None:
    """Create the timestamped folder mmengine's Runner is about to log into, if no other run
    has (a run started in the same second in this work dir): else wait for the next second.
    Returns the folder created (to remove if the Runner chose another and left it empty)."""
    if not _is_main_process():
        return None
    os.makedirs(work_dir, exist_ok=True)
    while True:
        folder = osp.join(work_dir, time.strftime('%Y%m%d_%H%M%S'))
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            time.sleep(1.05 - time.time() % 1)
