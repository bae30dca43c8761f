"""Validation during training that leaves the training's random streams as they were.

Starting a validation draws from torch's global generator (a DataLoader iterator takes its
workers' base seed from it), so evaluating every N iterations would change the drop-path masks
of every later training step: a seeded run would give other numbers depending on how often it
validates. ``ValRandomStateHook`` saves the Python, NumPy and torch (CPU and CUDA) generator
states before each validation and restores them after, so the training is the same whatever the
``val_interval``. Importing this module registers it in mmengine's root ``HOOKS``; opt in with
``custom_imports=dict(imports=['backbones.runtime.hooks'])`` and
``custom_hooks=[dict(type='ValRandomStateHook')]`` (the demo configs do).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ValRandomStateHook(Hook):
    """Restore the random generators' states after each validation."""

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._saved: tuple | None = None

    def before_val(self, runner) -> None:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def after_val(self, runner) -> None:
        if self._saved is None:
            return
        python, numpy, cpu, cuda = self._saved
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        self._saved = None
