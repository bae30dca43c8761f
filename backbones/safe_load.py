"""Checkpoint reading that never runs code from the file.

A ``.pth`` file is a pickle, and a pickle can call any Python function while it is read. Files
are read with torch's ``weights_only`` unpickler plus an explicit allowlist of the plain types that
mmengine/mmdet/mmseg training checkpoints hold besides tensors (found by saving real checkpoints of
every model family and listing their globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``), and the ``argparse.Namespace`` of
timm ``train.py`` checkpoints. A file that needs any other global is refused with
``UnsafeCheckpointError`` naming it; reading it anyway takes an explicit opt-in for that one file:
``trusted=True``, or its path listed in an active ``trusted_files(...)`` block (which
``SafeRunHook(trusted_checkpoints=[...])`` enters for its run). Nothing is trusted by default.
``.safetensors`` files hold tensors only and are read as such.

torch < 2.5 has no way to extend its weights-only allowlist; there the same allowlist (plus torch's
own) is enforced by a restricted unpickler handed to ``torch.load`` as its ``pickle_module``.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import types
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .errors import CheckpointError

# What mmengine training checkpoints (mmdet, mmseg, mmpretrain) hold besides tensors and builtins:
# the message hub's HistoryBuffer (log history as numpy arrays, its statistics as
# getattr(HistoryBuffer, 'min')...) and numpy scalars/arrays (numpy 1 and 2 spellings; their bytes
# come through _codecs.encode, which torch >= 2.4 allows by default). ``getattr`` resolves to
# ``_history_buffer_statistic``, which looks up nothing else. timm ``train.py`` checkpoints
# (``CheckpointSaver``) hold their command line as an ``argparse.Namespace`` in ``args``: an empty
# object whose ``__dict__`` is then updated with plain values (timm's own loader allows it too).
SAFE_GLOBALS = (
    'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr', '_codecs.encode',
    'argparse.Namespace',
    'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
    'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar',
    'numpy.ndarray', 'numpy.dtype',
    *(f'numpy.dtypes.{name}DType' for name in (
        'Bool', 'Int8', 'Int16', 'Int32', 'Int64', 'UInt8', 'UInt16', 'UInt32', 'UInt64',
        'Float16', 'Float32', 'Float64', 'Str', 'Bytes')),
)
TORCH_HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'safe_globals')  # torch >= 2.5
_GLOBAL_IN_MESSAGE = re.compile(r'GLOBAL ([\w.]+)')


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs a global outside the allowlist (the name is in ``.name``)."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        super().__init__(
            f'refused to load {path}: it needs {name}, which is not a tensor, a plain type or '
            f'one of the types mmengine/mmdet/mmseg/mmpretrain/timm checkpoints hold, so '
            f'unpickling it could run code from the file; only if you trust the file: python -m '
            f'backbones.convert --trust-checkpoint {path} clean.pth once and use clean.pth, or '
            f'list it in SafeRunHook(trusted_checkpoints=[...]) (tools: --trust-checkpoint)')


_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_statistic(owner: type, name: str) -> Any:
    """The only ``getattr`` a checkpoint may call: a HistoryBuffer statistics method."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if owner is HistoryBuffer and name in _STATISTICS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'Unsupported global: GLOBAL builtins.getattr, called as '
                                 f'getattr({owner!r}, {name!r})')


def _resolve(name: str) -> Any | None:
    if name == 'builtins.getattr':
        return _history_buffer_statistic
    module, _, attr = name.rpartition('.')
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _allowed() -> dict[str, Any]:
    """``{dotted name: object}`` of the allowlist entries importable here."""
    import warnings
    with warnings.catch_warnings():  # numpy 2 warns on the numpy.core spelling
        warnings.simplefilter('ignore')
        found = {name: _resolve(name) for name in SAFE_GLOBALS}
    return {name: obj for name, obj in found.items() if obj is not None}


def _restricted_pickle_module(path: str) -> types.ModuleType:
    """A ``pickle`` stand-in whose Unpickler resolves only allowlisted globals (torch < 2.5)."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = {**_get_allowed_globals(), **_allowed()}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{'builtins' if module == '__builtin__' else module}.{name}"  # protocol 2
            if full not in allowed:
                raise UnsafeCheckpointError(path, full)
            return allowed[full]

    module = types.ModuleType('restricted_pickle')
    module.Unpickler = Unpickler
    module.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    module.__dict__.update(UnpicklingError=pickle.UnpicklingError)
    return module


def _offending_global(path: str, error: Exception) -> str | None:
    """The first global of ``path`` that the allowlist lacks (named by torch where it can);
    None when ``error`` is not about a global (e.g. a truncated or non-pickle file)."""
    get_unsafe = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if get_unsafe is not None:
        try:
            names = [n for n in get_unsafe(path) if n not in SAFE_GLOBALS]
            if names:
                return names[0]
        except Exception:  # noqa: BLE001  (the load's own message is the fallback)
            pass
    match = _GLOBAL_IN_MESSAGE.search(str(error))
    return match[1] if match else None


def load_torch_file(path: str, map_location: Any = 'cpu', trusted: bool = False) -> Any:
    """``torch.load`` of a local file without unpickling code (unless ``trusted``).

    Raises ``UnsafeCheckpointError`` for a file that needs a global outside the allowlist.
    """
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location) if map_location else 'cpu')
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        if not TORCH_HAS_SAFE_GLOBALS:
            return torch.load(path, map_location=map_location, weights_only=False,
                              pickle_module=_restricted_pickle_module(path))
        pairs = [(obj, name) for name, obj in _allowed().items()]
        with torch.serialization.safe_globals(pairs):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = _offending_global(path, e)
        if name is None:
            raise  # e.g. a text file: a read error, not a refusal
        raise UnsafeCheckpointError(path, name) from None


def cached_download(url: str) -> str:
    """A URL's file in torch's hub cache (where torch and mmengine cache them), fetched once.

    ``.pth`` files keep their name (so hand-placed copies are found); ``.safetensors`` names get
    a hash of the URL, since timm's are all ``model.safetensors``.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if name.endswith('.safetensors'):
        name = f'{hashlib.sha256(url.encode()).hexdigest()[:8]}-{name}'
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', name)
    if not os.path.isfile(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, progress=False)  # via a temp file
    return cached


_trusted: Counter[str] = Counter()  # real paths of the active ``trusted_files`` blocks


@contextmanager
def trusted_files(paths: Iterable[str]) -> Iterator[None]:
    """While active, ``load_checkpoint_file`` reads the local files ``paths`` (compared by real
    path, so a symlink or a relative spelling is the same file) with pickle: only for files you
    trust. Blocks nest; each removes only what it added."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    added = [os.path.realpath(os.fspath(p)) for p in paths]
    _trusted.update(added)
    try:
        yield
    finally:
        _trusted.subtract(added)
        for path in added:
            if _trusted[path] <= 0:
                _trusted.pop(path, None)


def is_trusted_file(path: str) -> bool:
    """True for a local file listed in an active ``trusted_files`` block."""
    return '://' not in path and os.path.realpath(path) in _trusted


def load_checkpoint_file(path: str, map_location: Any = 'cpu', trusted: bool = False) -> Any:
    """A local path or an http(s) URL (downloaded into the hub cache first), read safely; with
    pickle if ``trusted`` or listed in an active ``trusted_files`` block."""
    trusted = trusted or is_trusted_file(path)
    if '://' in path:
        path = cached_download(path)
    return load_torch_file(path, map_location, trusted)
