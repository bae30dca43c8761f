"""Checkpoints that mmengine reads (``load_from``, resume, test) read without unpickling code."""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ...safe_load import load_checkpoint_file
from .. import patches


@contextmanager
def safe_checkpoint_loading(trusted: Iterable[str] = ()) -> Iterator[None]:
    """While active, mmengine reads local and http(s) checkpoints through
    ``backbones.safe_load``; ``trusted`` paths load with pickle.

    mmengine's own loaders call ``torch.load`` with torch's default, which unpickles anything
    before torch 2.6 and refuses mmengine's own checkpoints from 2.6 on (mmengine#1655).
    """
    trusted_paths = {osp.realpath(p) for p in trusted}

    def load(filename: str, map_location=None, **_) -> object:
        if '://' not in filename and not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        is_trusted = '://' not in filename and osp.realpath(filename) in trusted_paths
        return load_checkpoint_file(filename, map_location, trusted=is_trusted)

    with patches.checkpoint_loader_scheme(('', 'http://', 'https://'), load):
        yield
