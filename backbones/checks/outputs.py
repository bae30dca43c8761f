"""Output paths checked before a tool reads or writes anything: one rule for every file a tool
writes, applied by train, test, infer, export, convert, benchmark, demo and make_demo_data.

- An output never replaces a file the same command reads (inputs, images, label maps, annotation
  files, checkpoints, configs), compared by resolved path and by inode (symbolic and hard links);
  no ``--overwrite`` changes that.
- An output folder holds none of the command's inputs (not the images folder, nor a parent of it).
- An output never replaces a file that this run did not create unless the command's
  ``--overwrite`` flag (make_demo_data: ``--force``) is given; the refusal names the flag.
- A file never lands where a folder is, or the other way round, and the place can be written
  (a folder that exists or can be created, writable): checked before the work, leaving nothing
  behind.
- A work dir that holds the checkpoints of a run is refused for a new training: ``--resume``,
  another ``--work-dir`` or ``--overwrite`` (the old checkpoints are moved aside,
  ``runtime/workdir.py``).
"""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Iterable

from ..errors import ConfigError

OVERWRITE = '--overwrite'
LAST_CHECKPOINT = 'last_checkpoint'  # mmengine's pointer to the newest checkpoint of a work dir


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one file (links resolved, hard links by inode and device)."""
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    path, folder = osp.realpath(path), osp.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_writable(path: str, what: str = 'output', folder: bool = False) -> None:
    """``path`` (a file, or a folder if ``folder``) can be created or written: the nearest
    existing folder above it (or the folder itself) is a folder this process may write in.
    Nothing is created."""
    probe = osp.abspath(path) if folder else osp.dirname(osp.abspath(path))
    while not osp.exists(probe):
        if osp.lexists(probe):  # a dangling symbolic link where a folder would be created
            raise ConfigError(f'{what} {path}: {probe} is a broken symbolic link; give a path '
                              'in an existing folder')
        probe = osp.dirname(probe)
    if not osp.isdir(probe):
        raise ConfigError(f'{what} {path}: {probe} is a file, not a folder; give a path in a '
                          'folder')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f'{what} {path}: cannot write in {probe} (permission denied or a '
                          'read-only file system); give a writable location')


def check_output_file(out: str, inputs: Iterable[str | None], what: str = 'output',
                      overwrite: bool | None = None, flag: str = OVERWRITE) -> None:
    """``out`` is to be written as a file: refuse a folder, any of ``inputs`` itself, a place
    that cannot be written, and an existing file unless ``overwrite`` (None: the caller checks
    that later, when it knows the name it writes)."""
    if osp.isdir(out):
        raise ConfigError(f'{what} {out} is a folder; give the file to write')
    for path in inputs:
        if path and osp.exists(out) and same_file(out, path):
            raise ConfigError(f'{what} {out} is the input {path} (the same file, links '
                              'resolved); writing it would destroy the input: give another '
                              'output path')
    if overwrite is False and osp.lexists(out):
        raise ConfigError(f'{what} {out} already exists; give another path, or {flag} to '
                          'replace it')
    check_writable(out, what)


def check_output_folder(out: str, what: str = 'output folder',
                        inputs: Iterable[str | None] = (), names: Iterable[str] = (),
                        overwrite: bool = False, flag: str = OVERWRITE) -> None:
    """``out`` is to be created or filled as a folder: refuse an existing file there, a folder
    that holds one of ``inputs`` (files or folders the command reads), a place that cannot be
    written, and, unless ``overwrite``, a folder where some of ``names`` (the files the command
    will write into it, relative to ``out``) already exist; one of ``inputs`` is never replaced."""
    if osp.exists(out) and not osp.isdir(out):
        raise ConfigError(f'{what} {out} is an existing file, not a folder; give another path')
    if osp.isdir(out):
        inputs = [p for p in inputs if p]
        for path in inputs:
            if osp.exists(path) and is_inside(path, out):
                raise ConfigError(f'{what} {out} holds {path}, which this command reads; '
                                  'writing there could replace it: give a folder that holds '
                                  'none of the inputs')
        existing = [n for n in dict.fromkeys(names) if osp.lexists(osp.join(out, n))]
        for name in existing:
            target = osp.join(out, name)
            source = _input_of(target, inputs)
            if source:
                raise ConfigError(f'{what} {out}: {target} is the input {source} (the same '
                                  'file, links resolved); give another folder')
        if existing and not overwrite:
            raise ConfigError(f'{what} {out} already holds {len(existing)} of the files this '
                              f'command writes (e.g. {osp.join(out, existing[0])}); give another '
                              f'folder, or {flag} to replace them')
    check_writable(out, what, folder=True)


def _input_of(path: str, inputs: list[str]) -> str | None:
    """The input that ``path`` is: one of ``inputs``, a file below an input folder through a
    symbolic link, or a hard link of a file in an input folder (looked for only when ``path``
    has several links)."""
    for source in inputs:
        if same_file(path, source) or (osp.isdir(source) and is_inside(path, source)):
            return source
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if stat.st_nlink < 2:
        return None
    for source in inputs:
        for root, _, files in os.walk(source) if osp.isdir(source) else ():
            for name in files:
                try:
                    other = os.stat(osp.join(root, name))
                except OSError:
                    continue
                if (other.st_ino, other.st_dev) == (stat.st_ino, stat.st_dev):
                    return osp.join(root, name)
    return None


def previous_run(work_dir: str) -> list[str]:
    """The names of the checkpoints of a run in ``work_dir``: ``*.pth`` and ``last_checkpoint``
    (top level: the ``previous_*`` folders of moved runs are not counted)."""
    if not osp.isdir(work_dir):
        return []
    return sorted(n for n in os.listdir(work_dir)
                  if (n.endswith('.pth') or n == LAST_CHECKPOINT)
                  and osp.isfile(osp.join(work_dir, n)))


def check_work_dir(work_dir: str, resume: bool = False, overwrite: bool = False) -> list[str]:
    """A training's work dir: a folder that can be written, which holds no checkpoints of another
    run unless the training resumes or ``overwrite`` (then they are moved aside:
    ``backbones.runtime.workdir.move_previous_run``). Returns the names of those checkpoints."""
    check_output_folder(work_dir, 'work dir')
    found = previous_run(work_dir)
    if found and not resume and not overwrite:
        shown = ', '.join(found[:3]) + (f' and {len(found) - 3} more' if len(found) > 3 else '')
        raise ConfigError(f'work dir {work_dir} holds the checkpoints of a run ({shown}): '
                          'continue it with --resume, train into another --work-dir, or start '
                          f'over with {OVERWRITE} (moves them to {work_dir}/previous_<time>/)')
    return found
