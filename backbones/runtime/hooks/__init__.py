"""Runner hooks of the suite, one concern per file; importing this package registers them in
mmengine's root ``HOOKS``.

``import backbones`` does not import it. The tools do; a downstream config opts in with
``custom_imports=dict(imports=['backbones', 'backbones.runtime.hooks'])`` and e.g.
``custom_hooks=[dict(type='SafeRunHook')]``.
"""
from .channels_last import ChannelsLastHook
from .deploy import DeployBackboneHook
from .random_state import ValRandomStateHook
from .safe_run import SafeRunHook

__all__ = ['ChannelsLastHook', 'DeployBackboneHook', 'SafeRunHook', 'ValRandomStateHook']
