"""Atomic file writing: a failure or a kill never leaves a partial file under a final name, and a
full disk is reported as such."""
from __future__ import annotations

import errno
import hashlib
import math
import os
import os.path as osp
import shutil
import tempfile
from collections.abc import Callable

from .errors import DiskFullError

# What torch's zip writer raises when a write fails: for a Python file object the OSError is the
# exception's __context__; for a path (C++ fwrite) the errno is lost.
_TORCH_WRITE_FAILED = ('unexpected pos', 'failed writing file', 'file write failed')
_NEARLY_FULL = 16 << 20  # bytes free below which a torch write failure is put down to the disk


def is_disk_full(error: BaseException, folder: str | None = None) -> bool:
    """Whether ``error``, or an exception it wraps, says the disk or the user's quota is full.

    torch's writer hides the OSError of a failed write behind ``RuntimeError: [enforce fail at
    inline_container.cc] . unexpected pos``; without an OSError to look at, such an error counts
    as a full disk when ``folder``'s file system has less than 16 MiB free.
    """
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, DiskFullError) or (isinstance(e, OSError)
                                            and e.errno in (errno.ENOSPC, errno.EDQUOT))
           for e in chain):
        return True
    if folder and any(isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED)
                      for e in chain):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


def file_system_of(path: str) -> str:
    """``DEVICE (mounted on MOUNT POINT)`` of the file system holding ``path`` (or the mount
    point alone where /proc/self/mounts does not say)."""
    path = osp.realpath(path)
    while not osp.exists(path):
        path = osp.dirname(path)
    while not osp.ismount(path):
        path = osp.dirname(path)
    device = None
    try:
        with open('/proc/self/mounts') as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and fields[1].encode().decode('unicode_escape') == path:
                    device = fields[0]  # the last mount on a point is the visible one
    except OSError:
        pass
    return f'{device} (mounted on {path})' if device else path


def disk_full_message(error: BaseException, path: str, needed_bytes: int | None = None) -> str:
    """``no space left on DEVICE (mounted on M) for PATH (needed ~N MB)``, or ``disk quota
    exceeded on ...`` when the user's quota is what is full."""
    quota = any(isinstance(e, OSError) and e.errno == errno.EDQUOT
                for e in (error, error.__cause__, error.__context__))
    what = 'disk quota exceeded on' if quota else 'no space left on'
    needed = f' (needed ~{max(1, math.ceil(needed_bytes / 2**20))} MB)' if needed_bytes else ''
    return f'{what} {file_system_of(osp.dirname(osp.abspath(path)))} for {path}{needed}'


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(dst: str, write: Callable[[str], None],
                 final_name: Callable[[str], str] | None = None,
                 needed_bytes: Callable[[], int] | None = None) -> str:
    """Write through ``write(tmp)`` into a temporary file next to ``dst``, flush it to disk, then
    rename it to ``final_name(sha256)`` or ``dst``. A failure removes the temporary file and
    leaves any earlier ``dst`` as it was; a full disk raises ``DiskFullError`` (its message gives
    ``needed_bytes()``, the size estimate, where given). Returns the final path."""
    folder = osp.dirname(osp.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(dst)}.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        final = final_name(sha256(tmp)) if final_name else dst
        os.replace(tmp, final)
    except Exception as e:
        if isinstance(e, DiskFullError) or not is_disk_full(e, folder):
            raise
        raise DiskFullError(disk_full_message(e, dst, needed_bytes and needed_bytes())) from e
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return final
