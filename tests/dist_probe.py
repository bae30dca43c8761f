"""A hook for the distributed test: records what each rank trained on and its final weights."""
from __future__ import annotations

import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    def __init__(self) -> None:
        self.samples: list[list[str]] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.samples.append([s.img_path for s in data_batch['data_samples']])

    def after_run(self, runner) -> None:
        rank = get_rank()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{rank}_state.pth'))
        with open(osp.join(runner.work_dir, f'rank{rank}_samples.json'), 'w') as f:
            json.dump(self.samples, f)
