"""Config loading for the tools: checked ``--cfg-options`` and backbone, work dirs, the task of a
config and building its model."""
from __future__ import annotations

import os.path as osp
from collections.abc import Mapping

import torch
from mmengine.config import Config

from .checks.data import LOADERS
from .checks.model import check_backbone
from .checks.outputs import check_output_folder
from .checks.overrides import check_overrides
from .checks.values import check_config_values
from .errors import ConfigError, first_line, note_run


def load_config(path: str, cfg_options: Mapping | None = None) -> Config:
    """Load a config file, apply checked ``--cfg-options`` and check the merged values against
    their domains (``checks/values.py``) and the backbone's arguments."""
    if not osp.isfile(path):
        raise ConfigError(f'config file not found: {path} (configs live under configs/, e.g. '
                          f'configs/upernet_inceptionnext_t_ade20k.py)')
    try:
        cfg = Config.fromfile(path)
    except ImportError as e:  # mmengine lists sys.path over many lines; the cause says what
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # down to the import that failed
        raise ConfigError(f'cannot import the custom_imports of config {path}: '
                          f'{type(cause).__name__}: {first_line(cause)}; make the module '
                          'importable (pip install -e . or PYTHONPATH)') from None
    except Exception as e:  # noqa: BLE001  (a config that does not parse is bad input)
        raise ConfigError(f'cannot parse config {path}: {type(e).__name__}: '
                          f'{first_line(e)}') from None
    if not isinstance(cfg.get('model'), Mapping):
        raise ConfigError(f'config {path} defines no model (an empty or partial file?); a config '
                          "defines model, usually by inheriting one: _base_ = ['...']")
    if cfg_options:
        check_overrides(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
        _vis_backends_by_name(cfg)
    _fit_worker_settings(cfg)
    check_config_values(cfg)
    check_backbone(cfg)
    return cfg


def _vis_backends_by_name(cfg: Config) -> None:
    """A visualizer backend given by name is ``dict(type=name)``, so that one override adds
    TensorBoard: ``visualizer.vis_backends=[LocalVisBackend,TensorboardVisBackend]``
    (``--cfg-options`` cannot spell a list of dicts)."""
    visualizer = cfg.get('visualizer')
    backends = visualizer.get('vis_backends') if isinstance(visualizer, Mapping) else None
    if isinstance(backends, (list, tuple)) and any(isinstance(b, str) for b in backends):
        visualizer['vis_backends'] = [dict(type=b) if isinstance(b, str) else b
                                      for b in backends]


def _fit_worker_settings(cfg: Config) -> None:
    """``persistent_workers`` needs worker processes: off where ``num_workers=0`` (an override)."""
    for name in LOADERS:
        loader = cfg.get(name)
        if isinstance(loader, Mapping) and loader.get('num_workers') == 0:
            loader['persistent_workers'] = False


def default_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> str:
    """``--work-dir``, else the config's ``work_dir``, else ``work_dirs/<config name>``; refused
    if it is an existing file. Noted as where a crash report of the tools goes."""
    path = (work_dir or cfg.get('work_dir')
            or osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0]))
    check_output_folder(path, 'work dir')
    note_run(path, cfg)
    return path


def task_of(cfg: Config) -> str:
    """'seg' for mmseg configs, 'det' for mmdet configs."""
    scope = cfg.get('default_scope')
    if scope not in ('mmseg', 'mmdet'):
        raise ConfigError(f"{cfg.filename}: default_scope is {scope!r}; expected 'mmseg' or "
                          f"'mmdet' (inherit an mmseg:: or mmdet:: base config)")
    return 'seg' if scope == 'mmseg' else 'det'


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model in eval mode, without pretrained weights (they come from a checkpoint,
    or a tool wants random ones) and with SyncBN reverted to BatchNorm for a single process."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    cfg.model.pop('pretrained', None)
    cfg.model.pop('init_cfg', None)
    if isinstance(cfg.model.get('backbone'), Mapping):
        cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.eval()  # not chained: some train() overrides (mmpretrain's ConvNeXt) return None
    return model
