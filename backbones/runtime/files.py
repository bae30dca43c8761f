"""Atomic file writing: a failure or a kill never leaves a partial file under a final name."""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import tempfile
from collections.abc import Callable


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(dst: str, write: Callable[[str], None],
                 final_name: Callable[[str], str] | None = None) -> str:
    """Write through ``write(tmp)`` into a temporary file next to ``dst``, flush it to disk, then
    rename it to ``final_name(sha256)`` or ``dst``. A failure removes the temporary file and
    leaves any earlier ``dst`` as it was. Returns the final path."""
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
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return final
