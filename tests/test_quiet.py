"""A quiet, useful console: the stack's known warnings hidden by the tools (and only those),
validation that leaves training unchanged, the demo's curves and the TensorBoard override."""
from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

import pytest
from helpers import ATTO, FAMILIES, last_metrics, run_tool, run_tool_here, write_config
from mmengine.config import DictAction
from PIL import Image

from backbones.config import load_config
from backbones.demo.curves import DPI, FIGSIZE, draw_curves
from backbones.runtime.quiet import stack_warnings_hidden, warning_hidden_from

WARNING_LINE = re.compile(r'\w*Warning\b')


def _warn_from(module: str, message: str) -> None:
    warnings.warn_explicit(message, UserWarning, f'{module.replace(".", "/")}.py', 1,
                           module=module)


def test_only_the_stacks_known_warnings_are_hidden_and_only_inside():
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with stack_warnings_hidden():
            _warn_from('mmseg.models.builder', '``build_loss`` would be deprecated soon, ...')
            _warn_from('mmseg.models.losses.cross_entropy_loss',
                       'Default ``avg_non_ignore`` is False, if you would like ...')
            _warn_from('my_project.losses', '``build_loss`` would be deprecated soon')
            _warn_from('mmseg.models.builder', 'something the user should see')
        _warn_from('mmseg.models.builder', '``build_loss`` would be deprecated soon, again')
    assert [str(w.message) for w in caught] == [
        '``build_loss`` would be deprecated soon', 'something the user should see',
        '``build_loss`` would be deprecated soon, again']
    assert warnings.filters == before


def test_warning_hidden_from_a_call_that_resets_the_filters():
    """Like mmdet's init_detector without a checkpoint: the call's simplefilter('once') would
    override any filter, so the one message is dropped after the call and the rest re-emitted;
    the call's filter change ends with it."""
    def init_detector_like() -> None:
        warnings.simplefilter('once')
        warnings.warn('checkpoint is None, use COCO classes by default.', stacklevel=1)
        warnings.warn('a warning the user should see', stacklevel=1)

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with warning_hidden_from('checkpoint is None'):
            init_detector_like()
        assert warnings.filters[0][0] == 'always'
    assert [str(w.message) for w in caught] == ['a warning the user should see']
    assert warnings.filters == before


def _tiny_upernet(tmp_path: Path, tiny_data, iters: int, tail: str = '') -> tuple[str, list[str]]:
    base, seg_tail, overrides = FAMILIES['upernet']
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp_path, base, seg_tail + tail, root=tiny_data['seg'], iters=iters)
    return cfg, [*ATTO.split(), *overrides.split()]


@pytest.mark.slow
def test_train_console_shows_progress_without_stack_warnings(tmp_path, tiny_data):
    cfg, overrides = _tiny_upernet(tmp_path, tiny_data, iters=2)
    work_dir = tmp_path / 'work'
    result = run_tool('tools/train.py', cfg, '--work-dir', str(work_dir), '--cfg-options',
                      *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not WARNING_LINE.search(result.stderr), result.stderr[-3000:]
    assert re.search(r'Iter\(train\) \[1/2\].*eta: ', result.stdout), result.stdout[-3000:]
    assert 'mmengine - WARNING' not in result.stdout, result.stdout[-3000:]
    log = next(work_dir.glob('*/*.log')).read_text()
    assert '"FileClient" will be deprecated' in log  # the log file keeps every line


def _losses_and_miou(work_dir: Path) -> tuple[list[float], float]:
    train, val = last_metrics(work_dir)
    return [x['loss'] for x in train if 'loss' in x], val[-1]['mIoU']


@pytest.mark.slow
def test_validating_often_leaves_training_unchanged(tmp_path, tiny_data):
    """Drop path and the validation pipeline's RandomCrop draw random numbers: without
    ValRandomStateHook, validating after every iteration changes the later losses."""
    seed = 'randomness = dict(seed=0)\n'
    hook = seed + ("custom_imports = dict(imports=['backbones', "
                   "'backbones.runtime.hooks'])\n"
                   "custom_hooks = [dict(type='ValRandomStateHook')]\n")
    runs = {}
    for name, tail, interval in (('end', seed, 4), ('often', hook, 1), ('unkept', seed, 1)):
        cfg, overrides = _tiny_upernet(tmp_path / name, tiny_data, iters=4, tail=tail)
        result = run_tool_here('tools/train.py', cfg, '--work-dir', str(tmp_path / name / 'work'),
                               '--cfg-options', *overrides, f'train_cfg.val_interval={interval}')
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = _losses_and_miou(tmp_path / name / 'work')
    assert len(runs['end'][0]) == 4
    assert runs['often'] == runs['end']
    assert runs['unkept'][0][1:] != runs['end'][0][1:]


@pytest.mark.parametrize('by_epoch', [False, True])
def test_curves_png(tmp_path, by_epoch):
    lines = [dict(loss=5.0 / i, iter=10 * i, step=10 * i, **({'epoch': i} if by_epoch else {}))
             for i in range(1, 6)]
    lines += [{'mIoU': 10.0 * i, 'aAcc': 50.0, 'step': i if by_epoch else 10 * i}
              for i in (2, 4, 5)]
    scalars = tmp_path / 'scalars.json'
    scalars.write_text(''.join(json.dumps(x) + '\n' for x in lines))
    out = draw_curves(str(scalars), str(tmp_path / 'out' / 'curves.png'), ['mIoU'])
    assert Path(out).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    image = Image.open(out)
    assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI) == (1000, 400)
    # the curves are drawn: the right half has more than a few non-white pixels in colour
    right = image.convert('RGB').crop((500, 0, 1000, 400))
    coloured = sum(1 for r, g, b in right.getdata() if max(r, g, b) - min(r, g, b) > 60)
    assert coloured > 200


TENSORBOARD = 'visualizer.vis_backends=[LocalVisBackend,TensorboardVisBackend]'


def test_tensorboard_override_passes_the_config_check():
    """The README's override, parsed as tools/train.py parses it."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(['--cfg-options', TENSORBOARD]).cfg_options
    cfg = load_config('configs/upernet_inceptionnext_t_ade20k.py', options)
    assert cfg.visualizer.vis_backends == [dict(type='LocalVisBackend'),
                                           dict(type='TensorboardVisBackend')]


@pytest.mark.slow
def test_tensorboard_override_writes_event_files(tmp_path, tiny_data):
    pytest.importorskip('tensorboard', reason='pip install tensorboard (the dev extra has it)')
    cfg, overrides = _tiny_upernet(tmp_path, tiny_data, iters=1)
    work_dir = tmp_path / 'work'
    result = run_tool_here('tools/train.py', cfg, '--work-dir', str(work_dir), '--cfg-options',
                           *overrides, TENSORBOARD)
    assert result.returncode == 0, result.stderr[-3000:]
    events = list(work_dir.glob('*/vis_data/events.out.tfevents.*'))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert list(work_dir.glob('*/vis_data/scalars.json'))  # the local backend still writes
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {'loss', 'mIoU'} <= set(accumulator.Tags()['scalars'])
