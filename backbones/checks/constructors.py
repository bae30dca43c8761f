"""Constructor arguments of a config checked before a run starts.

mmengine builds hooks, optimizers, schedulers, datasets and evaluators only when a run reaches
them, and some pass ``**kwargs`` on: a typo in ``default_hooks.checkpoint`` surfaced at the first
save, thousands of iterations in. Here every such dict is checked against what its class (and
the classes its ``**kwargs`` reach) accepts, and the optimizer is built on a dummy parameter so
that torch's own value checks (``lr=-1``) run too. Nothing is built that a run needs.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Mapping

import torch
from mmengine.config import Config

from ..errors import ConfigError
from .data import LOADERS

# classes whose **kwargs are passed to a method rather than to their base class
_KWARGS_SINKS = {'CheckpointHook': ('mmengine.runner', 'Runner', 'save_checkpoint')}
# keys of a dict that the Runner takes out before it builds the class
_NOT_FOR_THE_CLASS = {'optim_wrapper': {'constructor', 'paramwise_cfg'}}


def check_constructors(cfg: Config, train: bool) -> None:
    """Raise ``ConfigError`` (one line, naming the config key) for an argument that no
    constructor on its path accepts, or an optimizer that torch refuses (values are checked
    against their domains when the config is loaded: ``checks/values.py``). ``train``: also
    the training-only parts (optimizer, schedulers, hooks)."""
    from mmengine.registry import (
        DATASETS,
        HOOKS,
        METRICS,
        OPTIM_WRAPPERS,
        OPTIMIZERS,
        PARAM_SCHEDULERS,
    )
    scope = cfg.get('default_scope')
    checks = [(DATASETS, f'{name}.dataset', (cfg.get(name) or {}).get('dataset'))
              for name in LOADERS if isinstance(cfg.get(name), Mapping)]
    checks += [(METRICS, key, item) for key, item in _items(cfg, 'val_evaluator', 'test_evaluator')]
    if train:
        checks += [(HOOKS, key, item) for key, item in _items(cfg, 'default_hooks', 'custom_hooks')]
        checks += [(PARAM_SCHEDULERS, key, item) for key, item in _items(cfg, 'param_scheduler')]
        checks.append((OPTIM_WRAPPERS, 'optim_wrapper', cfg.get('optim_wrapper')))
    for registry, key, item in checks:
        if isinstance(item, Mapping) and 'type' in item:
            with registry.switch_scope_and_registry(scope) as scoped:
                _check_arguments(scoped, key, item)
    if train and isinstance(cfg.get('optim_wrapper'), Mapping):
        _build_optimizer(OPTIMIZERS, scope, cfg.optim_wrapper.get('optimizer'))


def _items(cfg: Config, *names: str) -> Iterator[tuple[str, Mapping]]:
    """(config key, dict) of each hook, scheduler or metric under ``names`` (dicts or lists)."""
    for name in names:
        node = cfg.get(name)
        entries = (node.items() if isinstance(node, Mapping) and 'type' not in node
                   else enumerate(node) if isinstance(node, (list, tuple)) else [('', node)])
        for sub, item in entries:
            if isinstance(item, Mapping):
                yield (f'{name}.{sub}' if sub != '' else name), item


def _check_arguments(registry, key: str, item: Mapping) -> None:
    cls = item['type'] if isinstance(item['type'], type) else registry.get(item['type'])
    if cls is None:
        return  # the Runner reports an unknown type with the registry's own message
    accepted = _accepted(cls)
    if accepted is None:
        return  # **kwargs with no known destination: nothing to check against
    unknown = sorted(set(item) - accepted - _NOT_FOR_THE_CLASS.get(key, set())
                     - {'type', '_scope_'})
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"it takes {', '.join(sorted(accepted))}"
        raise ConfigError(f"{key}: {cls.__name__} takes no argument '{unknown[0]}' ({hint}); fix "
                          'the config or --cfg-options')


def _accepted(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts: its ``__init__``'s, and where it takes
    ``**kwargs``, those of the next ``__init__`` up the MRO (or of the method they go to)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        if klass is object:
            return names
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        names.discard('self')
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
        if klass.__name__ in _KWARGS_SINKS:
            module, owner, method = _KWARGS_SINKS[klass.__name__]
            sink = getattr(getattr(__import__(module, fromlist=[owner]), owner), method)
            return names | set(inspect.signature(sink).parameters) - {'self'}
    return None


def _build_optimizer(registry, scope: str | None, optimizer) -> None:
    """Build the optimizer on one dummy parameter: torch checks lr, betas, eps and weight
    decay in its constructor."""
    if not isinstance(optimizer, Mapping) or 'type' not in optimizer:
        return
    with registry.switch_scope_and_registry(scope) as scoped:
        try:
            scoped.build({**optimizer, 'params': [torch.nn.Parameter(torch.zeros(1))]})
        except (ValueError, TypeError) as e:
            raise ConfigError(f'optim_wrapper.optimizer ({optimizer["type"]}): '
                              f'{str(e).splitlines()[0]}; fix it in the config or with '
                              '--cfg-options optim_wrapper.optimizer.KEY=VALUE') from None
