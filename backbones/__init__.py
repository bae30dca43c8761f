"""InceptionNeXt backbones for MMDetection and MMSegmentation.

Importing the package (``custom_imports=dict(imports=['backbones'])``) registers the backbone, the
learning-rate decay constructor and the runtime fixes in mmengine's root registries, so they build
under the ``mmdet`` and the ``mmseg`` default scope alike; neither library is imported here.
"""
from . import hooks, runtime  # noqa: F401  (registers the loader, hooks, BF16AmpOptimWrapper)
from .checkpoint import load_pretrained
from .errors import CheckpointError, ConfigError, DataError, UserError
from .inception_next import ARCH_SETTINGS, InceptionNeXt
from .layer_decay import InceptionNeXtLearningRateDecayOptimizerConstructor

__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'ConfigError', 'DataError', 'InceptionNeXt',
           'InceptionNeXtLearningRateDecayOptimizerConstructor', 'UserError', 'load_pretrained']
