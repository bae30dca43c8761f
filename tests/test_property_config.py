"""Property: any value given through ``--cfg-options`` to a key of the value table either is
refused by ``load_config`` with one ``UserError`` line naming the key, or lies inside its
domain and the parts of mmengine, mmdet and mmseg that read it build without error (no training).

Keys are those of the table as they occur in an atto UperNet and an atto Mask R-CNN config of
configs/; values are random ints (zero, negative, huge), floats (NaN, inf), strings, None,
lists and dicts. The normal run is bounded and seeded; ``pytest -m long`` runs many more."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from contextlib import contextmanager

import pytest
import torch
from helpers import ROOT, assert_one_line_error, run_here, run_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.config import Config

from backbones.checks.values import row_of, walk
from backbones.config import load_config
from backbones.errors import UserError

ATTO_MODELS = {
    'seg': ('configs/upernet_inceptionnext_t_ade20k.py',
            "dict(backbone=dict(arch='atto', init_cfg=None), decode_head=dict(in_channels=[40, "
            "80, 160, 320], channels=32), auxiliary_head=dict(in_channels=160, channels=16))"),
    'det': ('configs/mask_rcnn/mask-rcnn_inceptionnext-t_fpn_1x_coco.py',
            "dict(backbone=dict(arch='atto', init_cfg=None), neck=dict(in_channels=[40, 80, 160, "
            "320]))"),
}
# the top-level model parts built when one of their keys changes, and the registry of each
_MODEL_PARTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head',
                'data_preprocessor')


@pytest.fixture(scope='module')
def configs(tmp_path_factory) -> dict[str, tuple[str, Config]]:
    """``{task: (path, parsed config)}`` of the atto configs."""
    folder = tmp_path_factory.mktemp('property_configs')
    out = {}
    for task, (base, model) in ATTO_MODELS.items():
        path = folder / f'{task}.py'
        path.write_text(f"_base_ = ['{ROOT / base}']\nmodel = {model}\n")
        out[task] = (str(path), Config.fromfile(str(path)))
    return out


@contextmanager
def parsed_once(configs: dict):
    """``Config.fromfile`` answered from the parsed configs (a deep copy each time): the property
    is about what ``load_config`` does after parsing, at a tenth of the time."""
    cached = {path: cfg for path, cfg in configs.values()}
    original = Config.fromfile
    Config.fromfile = staticmethod(lambda path, *a, **k: copy.deepcopy(cached[str(path)]))
    try:
        yield
    finally:
        Config.fromfile = original


def table_keys(configs: dict) -> list[tuple[str, str]]:
    """``(task, key)`` of every key of the configs that a row of the table matches."""
    return [(task, key) for task, (_, cfg) in configs.items()
            for key, _ in walk(cfg._cfg_dict) if row_of(key) is not None]


_SPECIAL = [0, -1, 1, 2, 0.5, 1.5, -0.5, 1e-12, 2**31, 2**63, 10**30, float('nan'), float('inf'),
            float('-inf'), None, True, False, '', 'abc', '1', [], (0, 512), [0.5, 2.0], (2.0, 0.5),
            [0.6, 0.6], [[1333, 800]], {'a': 1}]
_SCALAR = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=4), st.none(), st.booleans())
VALUES = st.one_of(st.sampled_from(_SPECIAL), _SCALAR,
                   st.lists(st.one_of(st.integers(-2, 2000), st.floats(-2, 3), st.just(
                       float('nan'))), max_size=3).flatmap(
                       lambda xs: st.sampled_from([xs, tuple(xs)])))


def node_at(cfg: Config, key: str):
    node = cfg._cfg_dict
    for part in key.split('.'):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node


def build_readers(cfg: Config, key: str) -> None:
    """Build what reads ``key`` at the start of a run: the DataLoader, the transforms of its
    pipeline, the schedulers on a dummy optimizer, the optim wrapper on an atto backbone, the
    hook, the log processor, or the model part."""
    from mmengine.registry import (
        HOOKS,
        LOG_PROCESSORS,
        MODELS,
        PARAM_SCHEDULERS,
        TASK_UTILS,
        TRANSFORMS,
    )
    scope = cfg.default_scope
    parts = key.split('.')

    def build(registry, item: Mapping, **extra):
        with registry.switch_scope_and_registry(scope) as scoped:
            return scoped.build({**item, **extra})

    if parts[0].endswith('_dataloader') and len(parts) == 2:
        loader = cfg[parts[0]]
        torch.utils.data.DataLoader(
            list(range(4)), batch_size=loader.batch_size, num_workers=loader.num_workers,
            persistent_workers=loader.get('persistent_workers', False) and loader.num_workers > 0,
            prefetch_factor=loader.get('prefetch_factor'))
    elif 'pipeline' in key or 'transforms' in key:
        at = max(i for i, p in enumerate(parts) if p == 'pipeline' or p.endswith('_pipeline'))
        for step in node_at(cfg, '.'.join(parts[:at + 1])):
            build(TRANSFORMS, step)
    elif parts[0] == 'param_scheduler':
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        schedulers = cfg.param_scheduler
        for item in schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]:
            build(PARAM_SCHEDULERS, item, optimizer=optimizer)
    elif parts[0] == 'optim_wrapper':
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import DefaultScope
        holder = torch.nn.Module()
        holder.backbone = build(MODELS, cfg.model.backbone)
        with DefaultScope.overwrite_default_scope(scope):
            build_optim_wrapper(holder, copy.deepcopy(cfg.optim_wrapper))
    elif parts[0] in ('default_hooks', 'custom_hooks') and parts[1] != 'visualization':
        build(HOOKS, node_at(cfg, '.'.join(parts[:2])))
    elif parts[0] == 'log_processor':
        build(LOG_PROCESSORS, {'type': 'LogProcessor', **cfg.log_processor})
    elif parts[0] == 'model' and parts[1] in _MODEL_PARTS:
        build(MODELS, cfg.model[parts[1]])
    elif parts[0] == 'model' and parts[1] == 'train_cfg':
        for depth in range(len(parts) - 1, 1, -1):  # the assigner or sampler holding it
            if parts[depth - 1] in ('assigner', 'sampler'):
                build(TASK_UTILS, node_at(cfg, '.'.join(parts[:depth])))


def check_property(configs: dict, task: str, key: str, value) -> None:
    path = configs[task][0]
    row = row_of(key)
    try:
        cfg = load_config(path, {key: value})
    except UserError as e:
        message = str(e)
        assert '\n' not in message and key in message, (key, value, message)
        return
    assert node_at(cfg, key) in row.domain, (key, value)
    build_readers(cfg, key)


def run_property(configs: dict, max_examples: int) -> None:
    """``check_property`` for drawn keys and values, seeded (the same examples every run)."""
    @settings(derandomize=True, max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(task_key=st.sampled_from(table_keys(configs)), value=VALUES)
    def run(task_key: tuple[str, str], value) -> None:
        with parsed_once(configs):
            check_property(configs, *task_key, value)
    run()


def test_random_values_refused_in_one_line_or_built(configs):
    run_property(configs, max_examples=100)


@pytest.mark.long
def test_random_values_refused_in_one_line_or_built_long(configs):
    run_property(configs, max_examples=2000)


def test_every_table_key_of_the_configs_builds(configs):
    """The configs' own values are inside the table and build: the property's accepted side."""
    loaded = {task: load_config(path) for task, (path, _) in configs.items()}
    for task, key in table_keys(configs):
        build_readers(loaded[task], key)


@pytest.mark.parametrize('override,fragment', [
    ('train_cfg.val_interval=0', 'train_cfg.val_interval=0: expected an integer >= 1'),
    ('default_hooks.logger.interval=-1', 'default_hooks.logger.interval=-1: expected an integer'),
    ('train_dataloader.dataset.pipeline.2.crop_size=(0,64)',
     'train_dataloader.dataset.pipeline.2.crop_size=(0, 64): expected an integer >= 1'),
])
def test_train_cli_one_line(seg_cfg, tmp_path, override, fragment):
    code, _, err = run_here('train.py', seg_cfg, '--work-dir', tmp_path / 'work',
                            '--cfg-options', override)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / 'work').exists()


def test_train_cli_one_line_in_a_new_process(tmp_path):
    """The RandomFlip of the real UperNet pipeline (the error comes before any data is read)."""
    result = run_tool('tools/train.py', ATTO_MODELS['seg'][0], '--work-dir', tmp_path / 'work',
                      '--cfg-options', 'train_dataloader.dataset.pipeline.4.prob=1.5')
    assert_one_line_error(result.returncode, result.stderr,
                          'train_dataloader.dataset.pipeline.4.prob=1.5: expected a float (1.0, '
                          'not 1) in [0, 1]')
    assert not (tmp_path / 'work').exists()
