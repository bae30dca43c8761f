"""Runner hooks of the suite."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


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
