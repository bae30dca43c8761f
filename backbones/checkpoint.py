"""Reading ImageNet/timm/mmdet/mmseg checkpoints into an InceptionNeXt backbone, verified.

Nothing is loaded silently: a missing or unreadable file, a file in which no key matches or a shape
mismatch raises ``CheckpointError``; what did load, and what did not, is logged.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .errors import CheckpointError, first_line
from .safe_load import load_checkpoint_file

WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_ema', 'state_dict_ema')
HEAD_PREFIX = 'head.'
_TIMM_FEATURES_KEY = re.compile(r'^(stem|stages)_(\d+)\.')
_BLOCK_KEY = re.compile(r'(?:^|\.)stages\.(\d+)\.blocks\.(\d+)\.')


def read_checkpoint(path: str, trusted: bool = False) -> dict:
    """Read a ``.pth``/``.bin``/``.safetensors`` file or URL without unpickling code (unless
    ``trusted``), with one-line errors."""
    is_url = '://' in path
    if not is_url and not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path} (fix the path, e.g. '
                              f'--cfg-options model.backbone.init_cfg.checkpoint=FILE.pth)')
    try:
        return load_checkpoint_file(path, 'cpu', trusted)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (any reader failure becomes one clear line)
        reason = first_line(e)
        hint = ('download it by hand and point init_cfg.checkpoint at the local file'
                if is_url else 'the file is truncated, corrupt or not a PyTorch checkpoint')
        raise CheckpointError(f'cannot read checkpoint {path}: {reason} ({hint})') from None


def extract_state_dict(checkpoint: Mapping, source: str, prefix: str | None = None) -> dict:
    """Unwrap ``state_dict``/``model`` wrappers, ``module.``/``backbone.`` prefixes, timm keys."""
    state = checkpoint
    while isinstance(state, Mapping) and not _has_tensors(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not _has_tensors(state):
        raise CheckpointError(f'{source} holds no state dict of tensors (top-level keys: '
                              f'{sorted(map(str, checkpoint))[:6]}); expected an ImageNet '
                              f'InceptionNeXt checkpoint')
    state = {_strip(k, 'module.'): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    elif any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    return {_TIMM_FEATURES_KEY.sub(r'\1.\2.', k): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str, prefix: str | None = None) -> dict:
    """Load ``path`` into ``model`` after checking names and shapes; returns a loading report."""
    state = extract_state_dict(read_checkpoint(path), path, prefix)
    own = model.state_dict()
    head = [k for k in state if k.startswith(HEAD_PREFIX)]
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    matched = check_fit(own, state, path, 'the InceptionNeXt backbone of this arch',
                        'use the ImageNet checkpoint of the same size as model.backbone.arch')
    new_norms = [k for k in own if re.match(r'norm\d\.', k) and k not in state]
    missing = [k for k in own if k not in state and k not in new_norms
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    print_log(f'InceptionNeXt: loaded {len(matched)} tensors from {path}; dropped the '
              f'classification head ({len(head)} tensors); new output norms '
              f'({len(new_norms)} tensors) keep their initialisation', logger='current')
    for what, keys in (('missing from the checkpoint', missing), ('unexpected', unexpected)):
        if keys:
            print_log(f'InceptionNeXt: {len(keys)} tensors {what}: {_short(keys)}',
                      logger='current', level=30)
    return dict(loaded=matched, head=head, new_norms=new_norms, missing=missing,
                unexpected=unexpected)


def fit_model_checkpoint(model: nn.Module, path: str,
                         trusted: bool = False) -> tuple[dict, dict]:
    """Read a whole-model checkpoint (mmdet/mmseg, from training) and check it against ``model``
    (wrappers and TTA models unwrapped): returns ``(checkpoint, state to load)``.

    Raises ``CheckpointError`` if the file is unreadable, a shape differs, or it does not cover
    every tensor of the model: a checkpoint of another model family can match the backbone's keys
    alone, and its heads would silently stay random.
    """
    checkpoint, state, own = _model_checkpoint(
        model, path, trusted, f'{path} holds no state dict of tensors; expected a checkpoint '
        'saved by training this config (e.g. work_dirs/NAME/iter_N.pth)')
    matched = check_fit(own, state, path, 'the model of the config',
                        'is it a checkpoint of this config (same arch and heads)?')
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    if missing:
        parts = sorted({k.split('.')[0] for k in missing})
        raise CheckpointError(f'{path} does not cover the model of the config: {len(missing)} of '
                              f'its {len(own)} tensors are not in the file ({", ".join(parts)}; '
                              f'e.g. {missing[0]}): is it a checkpoint of another model? Give '
                              'one saved by training this config')
    return checkpoint, {k: state[k] for k in matched}


def _model_checkpoint(model: nn.Module, path: str, trusted: bool,
                      no_tensors: str) -> tuple[dict, dict, dict]:
    """``(checkpoint, its state dict's tensors, model's state dict)`` of a whole-model
    checkpoint, ``module.`` prefixes stripped and wrappers and TTA models unwrapped; raises
    ``CheckpointError(no_tensors)`` for a file without a state dict of tensors."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    checkpoint = read_checkpoint(path, trusted)
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not _has_tensors(state):
        raise CheckpointError(no_tensors)
    state = {_strip(k, 'module.'): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return checkpoint, state, model.state_dict()


def check_fit(own: Mapping, state: Mapping, path: str, target: str, hint: str) -> list[str]:
    """Keys of ``state`` that ``own`` has; raises if none match, a shape differs or a stage has
    another number of blocks (tiny weights into small fit every shape)."""
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(f'no key of {path} matches {target} (first keys: '
                              f'{list(state)[:3]}); {hint}')
    mismatched = [k for k in matched if state[k].shape != own[k].shape]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f'{path} does not fit {target}: {len(mismatched)} shape mismatches, e.g. {k} is '
            f'{tuple(state[k].shape)} in the checkpoint but {tuple(own[k].shape)} in the model; '
            f'{hint}')
    check_finite(state, matched, path)
    ours, theirs = blocks_per_stage(own), blocks_per_stage(state)
    common = sorted(set(ours) & set(theirs))
    if any(ours[i] != theirs[i] for i in common):
        raise CheckpointError(
            f'{path} does not fit {target}: its stages {common} have '
            f'{[theirs[i] for i in common]} blocks, the model\'s {[ours[i] for i in common]} '
            f'(a checkpoint of another depth); {hint}')
    return matched


def check_finite(state: Mapping, keys: Iterable[str] | None, path: str) -> None:
    """Raise if a floating-point tensor of ``state[keys]`` (every key when None) holds NaN or
    inf (a diverged run's checkpoint): the one check of every checkpoint a tool reads, test,
    infer, export, convert and training's pretrained, ``load_from`` and ``--resume`` files."""
    bad = [k for k in (state if keys is None else keys)
           if isinstance(state[k], torch.Tensor) and state[k].is_floating_point()
           and not bool(torch.isfinite(state[k]).all())]
    if bad:
        raise CheckpointError(f'{path} holds non-finite values (NaN or inf) in {len(bad)} tensors, '
                              f'e.g. {bad[0]}: it was saved by a diverged run; give a checkpoint '
                              'saved before the loss grew')


def fit_some_weights(model: nn.Module, path: str, what: str = 'load_from',
                     trusted: bool = False) -> list[str]:
    """A checkpoint to start training from (``load_from``): it exists, holds tensors, at least
    one key fits the model (others, e.g. a head of another class count, may not: mmengine loads
    what fits) and every tensor that fits is finite. Returns the keys that fit."""
    if '://' not in path and not os.path.isfile(path):
        raise CheckpointError(f'{what} {path}: checkpoint not found (fix the path, or drop '
                              f'{what})')
    _, state, own = _model_checkpoint(
        model, path, trusted, f'{what} {path} holds no state dict of tensors (an empty or '
        'non-checkpoint file); give a checkpoint of this model')
    matched = [k for k in state if k in own and state[k].shape == own[k].shape]
    if not matched:
        raise CheckpointError(f'{what} {path}: no key of it fits the model of the config (first '
                              f'keys: {list(state)[:3]}); is it a checkpoint of this model?')
    check_finite(state, matched, path)
    return matched


def blocks_per_stage(state: Mapping) -> dict[int, int]:
    """``{stage: number of blocks}`` read from ``stages.I.blocks.J.`` keys (any prefix)."""
    blocks: dict[int, int] = {}
    for key in state:
        m = _BLOCK_KEY.search(key)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    return blocks


def _has_tensors(d: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _short(keys: list[str], n: int = 8) -> str:
    return ', '.join(keys[:n]) + (f', ... ({len(keys) - n} more)' if len(keys) > n else '')
