"""Output paths checked before a tool reads or writes anything: an output never replaces one of
the inputs (symlinks and hard links resolved) and a file never lands where a folder is, or the
other way round."""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterable

from ..errors import ConfigError


def check_output_file(out: str, inputs: Iterable[str | None], what: str = 'output') -> None:
    """``out`` is to be written as a file: refuse a folder and any of ``inputs`` itself."""
    if osp.isdir(out):
        raise ConfigError(f'{what} {out} is a folder; give the file to write')
    for path in inputs:
        if path and osp.exists(out) and osp.exists(path) and osp.samefile(out, path):
            raise ConfigError(f'{what} {out} is the input {path} (the same file, links '
                              'resolved); writing it would destroy the input: give another '
                              'output path')


def check_output_folder(out: str, what: str = 'output folder') -> None:
    """``out`` is to be created or filled as a folder: refuse an existing file there."""
    if osp.exists(out) and not osp.isdir(out):
        raise ConfigError(f'{what} {out} is an existing file, not a folder; give another path')
