"""InceptionNeXt backbones for MMDetection and MMSegmentation.

Importing the package (``custom_imports=dict(imports=['backbones'])``) registers the backbone and
the learning-rate decay constructor in mmengine's root registries, so they build under the
``mmdet`` and the ``mmseg`` default scope alike, and changes nothing else: neither library is
imported, no other library is patched. Opt-ins: ``backbones.runtime.hooks`` (``SafeRunHook``: safe
checkpoint loading, atomic checkpoints, a non-finite loss stop; ``ChannelsLastHook``,
``ValRandomStateHook``), ``backbones.checks.transforms`` (per-sample data checks) and
``backbones.ops.roi_align``.
"""
from .checkpoint import load_pretrained
from .errors import CheckpointError, ConfigError, DataError, UserError
from .inception_next import ARCH_SETTINGS, InceptionNeXt
from .layer_decay import InceptionNeXtLearningRateDecayOptimizerConstructor

__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'ConfigError', 'DataError', 'InceptionNeXt',
           'InceptionNeXtLearningRateDecayOptimizerConstructor', 'UserError', 'load_pretrained']
