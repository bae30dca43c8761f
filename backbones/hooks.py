"""Runner hooks of the suite."""
from __future__ import annotations

import torch
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from .errors import TrainingDivergedError


@HOOKS.register_module()
class DeployBackboneHook(Hook):
    """Before testing (after the checkpoint is loaded), fuse the InceptionNeXt backbone."""

    def before_test_epoch(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model = getattr(model, 'module', model)  # TTA wrappers hold the model in .module
        backbone = getattr(model, 'backbone', None)
        if not hasattr(backbone, 'fuse'):
            print_log('--deploy: the model has no fusable backbone; testing it unchanged',
                      logger='current', level=30)
            return
        backbone.eval()
        backbone.fuse()
        print_log('--deploy: folded the backbone BatchNorms and layer scales', logger='current')


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that removes old checkpoints only once the new one is complete.

    Upstream deletes the checkpoints beyond ``max_keep_ckpts`` before writing the new one; a run
    killed in between would keep nothing loadable. Writes themselves are atomic
    (``backbones.runtime``), so a killed save never leaves a partial file under a final name.
    """

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        pending: list[str] = []
        backend = self.file_backend
        backend.remove = pending.append  # defer deletions until the save has finished
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            del backend.remove
        for path in pending:
            backend.remove(path)


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop training with a clear message as soon as the loss is NaN or infinite."""

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss')
        if loss is not None and not torch.isfinite(loss).all():
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
