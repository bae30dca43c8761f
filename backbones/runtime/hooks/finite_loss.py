"""A NaN/inf loss stops training before the iteration is saved, saying how to go on."""
from __future__ import annotations

import torch
from mmengine.runner import EpochBasedTrainLoop

from ...errors import TrainingDivergedError


def check_finite_loss(runner, outputs: dict | None) -> None:
    """Raise ``TrainingDivergedError`` if the iteration's loss is not finite."""
    loss = (outputs or {}).get('loss')
    if loss is None or torch.isfinite(loss).all():
        return
    clip = ('optim_wrapper.clip_grad.max_norm=1.0'
            if 'clip_grad' in runner.cfg.get('optim_wrapper', {})
            else 'add clip_grad=dict(max_norm=1.0) to optim_wrapper in the config')
    name = 'epoch' if isinstance(runner.train_loop, EpochBasedTrainLoop) else 'iter'
    raise TrainingDivergedError(
        f'the loss became {loss.item()} at iteration {runner.iter + 1}: lower the lr '
        f'(--cfg-options optim_wrapper.optimizer.lr=...), enable gradient clipping '
        f'({clip}) or check the data, then resume with --resume {runner.work_dir}/'
        f'{name}_N.pth (the checkpoints are complete, but the latest may already hold '
        'diverging weights: pick one saved before the loss grew)')
