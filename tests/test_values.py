"""The table of config values (backbones/checks/values.py): each domain accepts and refuses what it
should, the patterns find keys at any depth and list index, one line names the key; non-finite
numbers in checkpoints and images are refused."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_here

from backbones.checks.transforms import CheckImage
from backbones.checks.values import (
    NO_LIMIT,
    PROBABILITIES,
    UNSET,
    ExistingFile,
    Int,
    Items,
    Real,
    Sizes,
    check_config_values,
    matches,
    row_of,
    walk,
)
from backbones.errors import ConfigError, DataError

NAN, INF = float('nan'), float('inf')


@pytest.mark.parametrize('domain,inside,outside', [
    (Int(1), [1, 2, 10**30], [0, -1, 1.0, 2.5, True, '1', None, NAN, [1]]),
    (Int(0, 2**32 - 1), [0, 2**32 - 1], [-1, 2**32]),
    (Int(1) | NO_LIMIT, [1, -1], [0, -2, -1.0]),
    (Real(0, lo_open=True), [1e-9, 3, 1e30], [0, -1e-9, NAN, INF, -INF, False, 'x', None]),
    (Real(0, 1), [0, 0.5, 1], [-0.1, 1.1, NAN]),
    (Real(0, 1, hi_open=True), [0, 0.99], [1, 1.0]),
    (PROBABILITIES | UNSET, [0.0, 1.0, 0.5, [0.3, 0.3], (0.5, 0.5), None],
     [1, 0, 1.5, [0.6, 0.6], [], [NAN]]),
    (Items(Real(0, lo_open=True), 2, ordered=True), [(0.5, 2.0), [1, 1]],
     [(2.0, 0.5), (1,), (1, 2, 3), (0, 1), 1.0, 'ab']),
    (Sizes(Real(0, lo_open=True)), [512, 0.5, (512, 512), [(1333, 640), (1333, 800)]],
     [0, (0, 512), (-1, 512), [], [()], (NAN, 1), 'big', None]),
    (Sizes(Int(1)), [512, (512, 512)], [(512.5, 512), 0.5]),
])
def test_domain(domain, inside, outside):
    for value in inside:
        assert value in domain, value
    for value in outside:
        assert value not in domain, value


def test_domain_describes_its_range():
    assert Int(1).describe() == 'an integer >= 1'
    assert (Int(1) | NO_LIMIT).describe() == 'an integer >= 1, or -1 (no limit)'
    assert Real(0, 1, hi_open=True).describe() == 'a finite number in [0, 1)'
    assert Real(0, lo_open=True).describe() == 'a finite number > 0'
    assert Items(Real(0, 1), 2).describe() == 'a pair of values, each a finite number in [0, 1]'


def test_existing_file(tmp_path):
    (tmp_path / 'w.pth').write_bytes(b'x')
    domain = ExistingFile()
    assert str(tmp_path / 'w.pth') in domain and 'https://host/w.pth' in domain
    assert str(tmp_path / 'nope.pth') not in domain and str(tmp_path) not in domain
    assert 3 not in domain


@pytest.mark.parametrize('pattern,key,expected', [
    ('*_dataloader.batch_size', 'train_dataloader.batch_size', True),
    ('*_dataloader.batch_size', 'val_dataloader.batch_size', True),
    ('*_dataloader.batch_size', 'my_extra_dataloader.batch_size', True),
    ('*_dataloader.batch_size', 'train_dataloader.dataset.batch_size', False),
    ('**.(pipeline|*_pipeline|transforms).**.prob', 'train_dataloader.dataset.pipeline.2.prob',
     True),
    ('**.(pipeline|*_pipeline|transforms).**.prob', 'tta_pipeline.1.transforms.1.0.prob', True),
    ('**.(pipeline|*_pipeline|transforms).**.prob',  # RepeatDataset, ConcatDataset
     'train_dataloader.dataset.datasets.1.dataset.pipeline.0.prob', True),
    ('**.(pipeline|*_pipeline|transforms).**.prob', 'model.prob', False),
    ('param_scheduler.**.begin', 'param_scheduler.begin', True),  # one scheduler, a dict
    ('param_scheduler.**.begin', 'param_scheduler.1.begin', True),
    ('(default_hooks|custom_hooks).*.interval', 'custom_hooks.0.interval', True),
    ('(default_hooks|custom_hooks).*.interval', 'default_hooks.logger.x.interval', False),
])
def test_patterns(pattern, key, expected):
    assert matches(pattern, key) is expected


def test_first_row_decides():
    assert row_of('default_hooks.checkpoint.interval').domain == Int(1) | NO_LIMIT
    assert row_of('default_hooks.logger.interval').domain == Int(1)
    assert row_of('model.backbone.arch') is None


def test_walk_names_keys_as_cfg_options_does():
    tree = {'a': {'pipeline': [{'type': 'X', 'crop_size': (0, 2)}]}}
    assert [k for k, _ in walk(tree)] == ['a', 'a.pipeline', 'a.pipeline.0', 'a.pipeline.0.type',
                                         'a.pipeline.0.crop_size', 'a.pipeline.0.crop_size.0',
                                         'a.pipeline.0.crop_size.1']


@pytest.mark.parametrize('tree,message', [
    ({'train_cfg': {'val_interval': 0}},
     'config error: train_cfg.val_interval=0: expected an integer >= 1 (validation every'),
    ({'val_dataloader': {'num_workers': -2}},
     'val_dataloader.num_workers=-2: expected an integer >= 0'),
    ({'train_dataloader': {'dataset': {'pipeline': [{}, {}, {'type': 'RandomFlip',
                                                             'prob': 1.5}]}}},
     'train_dataloader.dataset.pipeline.2.prob=1.5: expected a float (1.0, not 1) in [0, 1]'),
    ({'optim_wrapper': {'optimizer': {'lr': NAN}}},
     'optim_wrapper.optimizer.lr=nan: expected a finite number > 0 (the learning rate)'),
    ({'test_pipeline': [{'type': 'RandomCrop', 'crop_size': (0, 512)}]},
     'test_pipeline.0.crop_size=(0, 512): expected an integer >= 1, or a pair of values'),
    ({'param_scheduler': [{'begin': 10, 'end': 5}]},
     'param_scheduler.0.begin=10: expected less than param_scheduler.0.end=5'),
    ({'default_hooks': {'logger': {'interval': 'often'}}},
     "default_hooks.logger.interval='often': expected an integer >= 1"),
])
def test_one_line_names_key_value_and_range(tree, message):
    with pytest.raises(ConfigError) as e:
        check_config_values(tree)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_valid_values_pass():
    check_config_values({'train_cfg': {'val_interval': 1, 'max_iters': 2},
                         'default_hooks': {'checkpoint': {'interval': -1}},
                         'param_scheduler': {'begin': 0, 'end': 5, 'factor': 1.0},
                         'randomness': {'seed': None}, 'load_from': None,
                         'model': {'test_cfg': {'rpn': {'nms_pre': -1}}}})


def test_image_with_nan_refused():
    image = np.zeros((16, 16, 3), np.float32)
    image[2, 3, 1] = math.nan
    with pytest.raises(DataError, match=r'x\.tiff holds non-finite values .* in 1 pixel values'):
        CheckImage().transform({'img': image, 'img_path': 'x.tiff'})
    CheckImage().transform({'img': np.zeros((16, 16, 3), np.float32), 'img_path': 'y.tiff'})


@pytest.mark.parametrize('mode', ['backbone', 'release'])
def test_convert_refuses_non_finite(tmp_path, atto_ckpt, mode):
    state = torch.load(atto_ckpt, weights_only=True)
    state['stages.1.blocks.0.gamma'][0] = math.inf
    if mode == 'release':
        state = {'state_dict': {f'backbone.{k}': v for k, v in state.items()},
                 'meta': {}}
        state['state_dict']['decode_head.conv_seg.weight'] = torch.zeros(2, 2, 1, 1)
    torch.save(state, tmp_path / 'diverged.pth')
    code, _, err = run_here('model_converters/convert_checkpoint.py', tmp_path / 'diverged.pth',
                            tmp_path / 'out.pth', '--mode', mode)
    key = 'stages.1.blocks.0.gamma' if mode == 'backbone' else 'backbone.stages.1.blocks.0.gamma'
    assert_one_line_error(code, err, f'{tmp_path}/diverged.pth holds non-finite values',
                          f'e.g. {key}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['diverged.pth']


def test_a_resize_needs_a_scale_or_a_scale_factor():
    """A cross-key rule of the table: either may be unset, not both (mmcv asserts it when the
    dataset is built)."""
    check_config_values({'test_pipeline': [dict(type='Resize', scale=None, scale_factor=0.5)]})
    with pytest.raises(ConfigError, match=r'^config error: test_pipeline\.0\.scale and '
                       r'test_pipeline\.0\.scale_factor are all unset'):
        check_config_values({'test_pipeline': [dict(type='Resize', scale=None)]})
