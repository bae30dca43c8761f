"""The suite as a guest in someone else's process: an import that changes nothing, checkpoints
that never run code, and safety that a downstream config opts into with one hook."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import (
    FAMILIES,
    ROOT,
    SEG_TAIL,
    assert_one_line_error,
    booby_trapped_checkpoint,
    run_here,
    train_args,
    write_config,
)

from backbones.safe_load import load_torch_file

SNAPSHOT = r'''
import json, os, sys, warnings
import mmcv.ops, mmengine, torch
import timm  # a dependency; importing it makes torch add its own safe globals (DTensor...)
from mmengine import registry
from mmengine.runner import checkpoint, runner


def name(obj):
    return f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", repr(obj))}'


def registries():
    found = {}

    def walk(reg, path):
        found[path] = sorted(reg._module_dict)
        for scope, child in reg._children.items():
            walk(child, f'{path}/{scope}')
    for attr in dir(registry):
        if isinstance(getattr(registry, attr), registry.Registry):
            walk(getattr(registry, attr), attr)
    return found


def snapshot():
    nms = sys.modules['mmcv.ops.nms']
    safe = getattr(torch.serialization, 'get_safe_globals', list)()
    return dict(
        schemes={k: name(v) for k, v in checkpoint.CheckpointLoader._schemes.items()},
        functions={k: id(v) for k, v in dict(
            runner_save=runner.save_checkpoint, save=checkpoint.save_checkpoint,
            load=checkpoint.load_checkpoint, torch_load=torch.load, torch_save=torch.save,
            nms=nms.nms, batched_nms=mmcv.ops.batched_nms,
            roi_align=mmcv.ops.RoIAlign.forward).items()},
        mmcv_ops=sorted(vars(mmcv.ops)), safe_globals=[str(g) for g in safe],
        registries=registries(), environ=dict(os.environ),
        warning_filters=[repr(f) for f in warnings.filters],
        torch=[str(torch.get_default_dtype()), torch.get_num_threads(),
               torch.backends.cudnn.benchmark, torch.backends.mkldnn.enabled,
               torch.are_deterministic_algorithms_enabled()],
        libraries=sorted(m for m in sys.modules if m.split('.')[0] in ('mmdet', 'mmseg')))


before = snapshot()
import backbones  # noqa: E402
after = snapshot()
print(json.dumps(dict(before=before, after=after)))
'''


def test_import_changes_nothing_but_two_registrations():
    """``import backbones`` adds InceptionNeXt and its lr-decay constructor to mmengine's root
    registries; mmengine's loaders and savers, mmcv's ops, torch, the environment, warning
    filters and every other registry entry stay as they were."""
    result = subprocess.run([sys.executable, '-c', SNAPSHOT], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.splitlines()[-1])
    before, after = state['before'], state['after']
    added = {path: sorted(set(after['registries'][path]) - set(before['registries'][path]))
             for path in after['registries']}
    assert {p: names for p, names in added.items() if names} == {
        'MODELS': ['InceptionNeXt'],
        'OPTIM_WRAPPER_CONSTRUCTORS': ['InceptionNeXtLearningRateDecayOptimizerConstructor']}
    assert after['registries'].keys() == before['registries'].keys()
    for key in before:
        if key != 'registries':
            assert after[key] == before[key], key


@pytest.fixture()
def trap(tmp_path):
    """A checkpoint whose unpickling would create ``marker``; (path, marker)."""
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'trap.pth'
    booby_trapped_checkpoint(path, marker)
    return str(path), marker


@pytest.fixture()
def seg_cfg(tmp_path, tiny_data) -> str:
    return write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                        iters=1)


@pytest.mark.parametrize('path', ['load_from', 'resume', 'pretrained', 'test', 'infer',
                                  'convert'])
def test_booby_trapped_checkpoint_is_refused_everywhere(path, trap, seg_cfg, tmp_path, capsys,
                                                       tiny_data):
    ckpt, marker = trap
    work = tmp_path / 'work'
    tool, argv = {
        'load_from': ('train.py', train_args(seg_cfg, work, f'load_from={ckpt}')),
        'resume': ('train.py', [*train_args(seg_cfg, work), '--resume', ckpt]),
        'pretrained': ('train.py', train_args(
            seg_cfg, work, "model.backbone.init_cfg.type='Pretrained'",
            f'model.backbone.init_cfg.checkpoint={ckpt}', pretrained=True)),
        'test': ('test.py', [seg_cfg, ckpt, '--work-dir', str(work),
                             *train_args(seg_cfg, work)[3:]]),
        'infer': ('infer.py', [seg_cfg, ckpt, f'{tiny_data["seg"]}/images/validation',
                               '--out-dir', str(work),
                               *train_args(seg_cfg, work)[3:]]),
        'convert': ('model_converters/convert_checkpoint.py', [ckpt, str(tmp_path / 'out.pth')]),
    }[path]
    code, _, err = run_here(tool, *argv)
    assert_one_line_error(code, err, f'refused to load {ckpt}', 'posix.system',
                          '--trust-checkpoint')
    assert not marker.exists(), 'the checkpoint ran its code'
    assert not (tmp_path / 'out.pth').exists()
    assert not list(work.rglob('*.pth')) if work.exists() else True


def test_booby_trapped_url_is_refused(http_dir, trap, capsys, tmp_path, seg_cfg):
    ckpt, marker = trap
    folder, url = http_dir
    (folder / 'trap.pth').write_bytes(open(ckpt, 'rb').read())
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    "model.backbone.init_cfg.type='Pretrained'",
                                                    f'model.backbone.init_cfg.checkpoint={url}/trap.pth',
                                                    pretrained=True))
    assert_one_line_error(code, err, 'refused to load', 'posix.system')
    assert not marker.exists()


def test_trust_checkpoint_is_an_explicit_opt_in(trap, tmp_path, capsys):
    """--trust-checkpoint reads the named file with pickle (its code runs: the user said so)."""
    ckpt, marker = trap
    code, _, err = run_here('model_converters/convert_checkpoint.py', ckpt, tmp_path / 'out.pth',
                            '--trust-checkpoint')
    assert marker.exists()
    assert code == 2 and 'no state dict of tensors' in err  # the trap holds no weights


def test_plain_mmengine_keeps_its_own_protection_after_import(trap):
    """After ``import backbones``, mmengine's own loader still refuses the file on torch >= 2.6
    (earlier torch unpickles anything there, as it would without this package)."""
    if tuple(map(int, torch.__version__.split('.')[:2])) < (2, 6):
        pytest.skip('torch < 2.6 has no weights_only default for mmengine to keep')
    ckpt, marker = trap
    script = ('import backbones\nfrom mmengine.runner.checkpoint import _load_checkpoint\n'
              f'_load_checkpoint({ckpt!r})')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and 'posix.system' in result.stderr
    assert not marker.exists()


DOWNSTREAM = '''
import argparse
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

parser = argparse.ArgumentParser()
parser.add_argument('config')
parser.add_argument('--cfg-options', nargs='+', action=DictAction)
args = parser.parse_args()
cfg = Config.fromfile(args.config)
cfg.merge_from_dict(args.cfg_options)
before = dict(CheckpointLoader._schemes)
runner = Runner.from_cfg(cfg)
try:
    runner.train()
    print('TRAINED')
finally:
    print('RESTORED' if dict(CheckpointLoader._schemes) == before else 'CHANGED')
'''


@pytest.mark.slow
def test_downstream_config_opts_in_with_one_hook(tmp_path, tiny_data, trap):
    """A project's own Runner (no tool of ours) with the README's opt-in lines: a trapped
    ``load_from`` is refused, a real mmengine checkpoint loads on this torch, atomic saving and
    safe loading are undone after the run."""
    ckpt, marker = trap
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1)
    readme = (ROOT / 'README.md').read_text()
    snippet = readme[readme.index('# mmseg: _base_'):]
    opt_in = [line for line in snippet.splitlines()[:4]
              if line.startswith(('custom_imports', 'custom_hooks'))]
    assert len(opt_in) == 2 and 'SafeRunHook' in opt_in[1]  # the README's lines, as written
    with open(cfg, 'a') as f:
        f.write('\n'.join(opt_in) + '\n')

    def run(work: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-c', DOWNSTREAM, cfg,
                               *train_args(cfg, tmp_path)[3:], f'work_dir={work}', *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    first = run(str(tmp_path / 'a'))
    assert 'TRAINED' in first.stdout and 'RESTORED' in first.stdout, first.stderr[-3000:]
    assert [p.name for p in (tmp_path / 'a').glob('*.pth')] == ['iter_1.pth']
    assert not list((tmp_path / 'a').glob('.*.tmp'))
    loaded = run(str(tmp_path / 'b'), f'load_from={tmp_path / "a" / "iter_1.pth"}')
    assert 'TRAINED' in loaded.stdout, loaded.stderr[-3000:]
    assert 'Load checkpoint from' in loaded.stdout + loaded.stderr
    refused = run(str(tmp_path / 'c'), f'load_from={ckpt}')
    assert 'TRAINED' not in refused.stdout and 'posix.system' in refused.stderr
    assert not marker.exists()


class _GetattrBeyondStatistics:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__subclasses__')


@pytest.mark.parametrize('torch_machinery', [True, False])
def test_both_loaders_refuse_code_and_read_mmengine_state(tmp_path, trap, monkeypatch,
                                                          torch_machinery):
    """torch's weights_only unpickler (torch >= 2.5) and the restricted unpickler (older torch;
    also runnable here) read what the Runner saves and refuse the rest, getattr beyond
    HistoryBuffer's statistics included."""
    from mmengine.logging import MessageHub

    from backbones import safe_load
    from backbones.errors import CheckpointError
    if torch_machinery and not safe_load.TORCH_HAS_SAFE_GLOBALS:
        pytest.skip('torch < 2.5 has no extensible weights_only allowlist')
    monkeypatch.setattr(safe_load, 'TORCH_HAS_SAFE_GLOBALS', torch_machinery)
    hub = MessageHub('guest-test')
    hub.update_scalar('train/loss', 1.5)
    hub.update_info('eta', np.float64(3.0))
    path = tmp_path / 'state.pth'
    torch.save({'message_hub': hub.state_dict(), 'state_dict': {'w': torch.ones(2)}}, path)
    loaded = load_torch_file(str(path))
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 1.5
    assert loaded['message_hub']['runtime_info']['eta'] == 3.0
    ckpt, marker = trap
    with pytest.raises(CheckpointError, match='posix.system'):
        load_torch_file(ckpt)
    assert not marker.exists()
    torch.save({'x': _GetattrBeyondStatistics()}, tmp_path / 'getattr.pth')
    with pytest.raises(CheckpointError, match='builtins.getattr'):
        load_torch_file(str(tmp_path / 'getattr.pth'))
