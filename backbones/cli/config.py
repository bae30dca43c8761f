"""Config loading for ``tools/*.py``: checked ``--cfg-options``, an early backbone check, work
dirs, the task of a config, ``--shape`` and building the model."""
from __future__ import annotations

import inspect
import os.path as osp
from collections.abc import Mapping, Sequence

import torch
from mmengine.config import Config

from ..errors import ConfigError, first_line
from .data_check import LOADERS
from .outputs import check_output_folder

_NUMBER = (int, float)


def check_overrides(cfg: Config, options: Mapping) -> None:
    """Reject ``--cfg-options`` keys that do not exist and values of the wrong type.

    A new key is accepted directly inside a dict with a ``type`` (a constructor argument, e.g.
    ``model.backbone.frozen_stages``): the constructor validates it when it is built. A setting
    that is ``None`` becomes a dict when keys below it are given (``optim_wrapper.clip_grad.
    max_norm=1.0`` where ``clip_grad=None``).
    """
    for key in options:
        for parent in (key.rsplit('.', n)[0] for n in range(1, key.count('.') + 1)):
            if parent in options:
                raise ConfigError(f"--cfg-options sets both '{parent}' and '{key}'; give one")
    created: set[str] = set()  # None settings turned into dicts by an earlier key
    for key, value in options.items():
        node, parts = cfg._cfg_dict, key.split('.')
        for depth, part in enumerate(parts):
            here = '.'.join(parts[:depth + 1])
            if here in created:
                break
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, Mapping):
                raise ConfigError(f"--cfg-options {key}: '{'.'.join(parts[:depth])}' is "
                                  f'{_short_repr(node)} in {cfg.filename}, not a dict, so it '
                                  f'has no key {part!r}; set the whole value in a config that '
                                  'inherits this one')
            if part not in node:
                if depth == len(parts) - 1 and 'type' in node:
                    break
                raise ConfigError(f"--cfg-options {key}: no key '{here}' in {cfg.filename}; "
                                  f'check the spelling (python tools/print_config.py CONFIG '
                                  f'shows every key)')
            if depth == len(parts) - 1:
                _check_type(key, node[part], value)
            elif node[part] is None:
                node[part] = {}  # filled in by the merge
                created.add(here)
                break
            node = node[part]


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def _check_type(key: str, old, new) -> None:
    if old is None or new is None:
        return
    number = isinstance(old, _NUMBER) and not isinstance(old, bool)
    if number and not (isinstance(new, _NUMBER) and not isinstance(new, bool)):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected a number like {old!r}')
    if isinstance(old, bool) and not isinstance(new, bool):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected True or False')
    if isinstance(old, str) and not isinstance(new, str):
        raise ConfigError(f'--cfg-options {key}={new!r}: expected a string like {old!r}')


def load_config(path: str, cfg_options: Mapping | None = None) -> Config:
    """Load a config file and apply checked ``--cfg-options``."""
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


def check_backbone(cfg: Config) -> None:
    """Build an InceptionNeXt ``model.backbone`` on the meta device (no memory, no weights), so a
    bad argument fails before a run makes its folders; then check the head widths."""
    model = cfg.get('model')
    backbone = model.get('backbone') if isinstance(model, Mapping) else None
    if not isinstance(backbone, Mapping) or backbone.get('type') != 'InceptionNeXt':
        return
    from ..inception_next import InceptionNeXt
    with torch.device('meta'):
        built = InceptionNeXt(**{k: v for k, v in backbone.items()
                                 if k not in ('type', '_scope_')})
    default_arch = inspect.signature(InceptionNeXt).parameters['arch'].default
    _check_head_widths(model, built, backbone.get('arch', default_arch))


def _check_head_widths(model: Mapping, backbone: torch.nn.Module, arch) -> None:
    """The neck's (else the heads') ``in_channels`` must be what the backbone gives, e.g. after
    ``model.backbone.arch=atto`` alone (a shape error deep in the heads otherwise)."""
    widths = [int(backbone.dims[i]) for i in backbone.out_indices]
    name = arch if isinstance(arch, str) else 'with this arch'
    if isinstance(model.get('neck'), Mapping):
        checks = [('neck', widths)]
    else:
        checks = [('decode_head', widths)]
        aux = model.get('auxiliary_head')
        index = aux.get('in_index') if isinstance(aux, Mapping) else None
        if isinstance(index, int) and -len(widths) <= index < len(widths):
            checks.append(('auxiliary_head', widths[index]))
    for key, want in checks:
        head = model.get(key)
        have = head.get('in_channels') if isinstance(head, Mapping) else None
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have is not None and type(have) is type(want) and have != want:
            raise ConfigError(f'model.{key}.in_channels is {have} but InceptionNeXt {name} gives '
                              f'{want}; add --cfg-options model.{key}.in_channels='
                              f"{str(want).replace(' ', '')}")


def default_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> str:
    """``--work-dir``, else the config's ``work_dir``, else ``work_dirs/<config name>``; refused
    if it is an existing file."""
    path = (work_dir or cfg.get('work_dir')
            or osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0]))
    check_output_folder(path, 'work dir')
    return path


def task_of(cfg: Config) -> str:
    """'seg' for mmseg configs, 'det' for mmdet configs."""
    scope = cfg.get('default_scope')
    if scope not in ('mmseg', 'mmdet'):
        raise ConfigError(f"{cfg.filename}: default_scope is {scope!r}; expected 'mmseg' or "
                          f"'mmdet' (inherit an mmseg:: or mmdet:: base config)")
    return 'seg' if scope == 'mmseg' else 'det'


def parse_shape(shape: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``--shape H W`` (or one size for a square input) as (height, width); ``default`` if None."""
    if shape is None:
        return default
    if len(shape) not in (1, 2) or min(shape) < 32:
        raise ConfigError(f'--shape {" ".join(map(str, shape))}: give H W (or one size for a '
                          'square input), each at least 32')
    return (shape[0], shape[-1])


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
