"""``--cfg-options`` checked against the config they change: keys that exist, values of the
type they replace."""
from __future__ import annotations

from collections.abc import Mapping

from mmengine.config import Config

from ..errors import ConfigError

_NUMBER = (int, float)


def check_overrides(cfg: Config, options: Mapping) -> None:
    """Reject ``--cfg-options`` keys that do not exist and values of the wrong type.

    A new key is accepted directly inside a dict with a ``type`` (a constructor argument, e.g.
    ``model.backbone.frozen_stages``): the constructor validates it when it is built. A setting
    that is ``None`` becomes a dict when keys below it are given (``optim_wrapper.clip_grad.
    max_norm=1.0`` where ``clip_grad=None``).
    """
    for key in options:
        for parent in (key.rsplit('.', n)[0] for n in range(1, key.count('.') + 1)):
            if parent in options:
                raise ConfigError(f"--cfg-options sets both '{parent}' and '{key}'; give one")
    created: set[str] = set()  # None settings turned into dicts by an earlier key
    for key, value in options.items():
        node, parts = cfg._cfg_dict, key.split('.')
        for depth, part in enumerate(parts):
            here = '.'.join(parts[:depth + 1])
            if here in created:
                break
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, Mapping):
                raise ConfigError(f"--cfg-options {key}: '{'.'.join(parts[:depth])}' is "
                                  f'{_short_repr(node)} in {cfg.filename}, not a dict, so it '
                                  f'has no key {part!r}; set the whole value in a config that '
                                  'inherits this one')
            if part not in node:
                if depth == len(parts) - 1 and 'type' in node:
                    break
                raise ConfigError(f"--cfg-options {key}: no key '{here}' in {cfg.filename}; "
                                  'check the spelling (python tools/analysis_tools/'
                                  'print_config.py CONFIG shows every key)')
            if depth == len(parts) - 1:
                _check_type(key, node[part], value)
            elif node[part] is None:
                node[part] = {}  # filled in by the merge
                created.add(here)
                break
            node = node[part]


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def _check_type(key: str, old, new) -> None:
    if isinstance(new, Mapping) and not isinstance(old, Mapping):  # mmengine merges dicts only
        raise ConfigError(f'--cfg-options {key}={_short_repr(new)}: {key} is '
                          f'{_short_repr(old)}, not a dict, so a dict cannot replace it; set '
                          f'its keys one by one ({key}.KEY=VALUE)')
    if old is None or new is None:
        return
    number = isinstance(old, _NUMBER) and not isinstance(old, bool)
    if number and not (isinstance(new, _NUMBER) and not isinstance(new, bool)):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected a number like {old!r}')
    if isinstance(old, bool) and not isinstance(new, bool):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected True or False')
    if isinstance(old, str) and not isinstance(new, str):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected a string like {old!r}')
