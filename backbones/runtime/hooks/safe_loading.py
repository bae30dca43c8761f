"""Checkpoints that mmengine reads (``load_from``, resume, test) read without unpickling code."""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ...safe_load import load_checkpoint_file, trusted_files
from .. import patches


@contextmanager
def safe_checkpoint_loading(trusted: Iterable[str] = ()) -> Iterator[None]:
    """While active, mmengine reads local and http(s) checkpoints through
    ``backbones.safe_load``; ``trusted`` paths load with pickle, there and wherever else
    ``backbones.safe_load`` reads them (the backbone's pretrained ``init_cfg``).

    mmengine's own loaders call ``torch.load`` with torch's default, which unpickles anything
    before torch 2.6 and refuses mmengine's own checkpoints from 2.6 on (mmengine#1655).
    """
    def load(filename: str, map_location=None, **_) -> object:
        if '://' not in filename and not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return load_checkpoint_file(filename, map_location)  # trusted: by trusted_files

    with trusted_files(trusted), patches.checkpoint_loader_scheme(('', 'http://', 'https://'),
                                                                  load):
        yield
