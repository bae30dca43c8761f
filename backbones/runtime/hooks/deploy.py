"""``tools/test.py --deploy``: test the backbone in its fused inference form."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ...deploy.fuse import fuse_inception_next
from ...inception_next import InceptionNeXt
from .channels_last import backbone_of


@HOOKS.register_module()
class DeployBackboneHook(Hook):
    """Before testing (after the checkpoint is loaded), fuse the InceptionNeXt backbone."""

    def before_test_epoch(self, runner) -> None:
        backbone = backbone_of(runner)
        if not isinstance(backbone, InceptionNeXt):
            print_log('--deploy: the model has no fusable backbone; testing it unchanged',
                      logger='current', level=30)
            return
        backbone.eval()
        fuse_inception_next(backbone)
        print_log('--deploy: folded the backbone BatchNorms and layer scales', logger='current')
