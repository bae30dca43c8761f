"""The suite as a guest in someone else's process: an import that changes nothing, checkpoints
that never run code, and safety that a downstream config opts into with one hook."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

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
        libraries=sorted(m for m in sys.modules
                         if m.split('.')[0] in ('mmdet', 'mmseg', 'timm', 'torchvision')))


before = snapshot()
import backbones  # noqa: E402
after = snapshot()
print(json.dumps(dict(before=before, after=after)))
'''


def test_import_changes_nothing_but_two_registrations():
    """``import backbones`` adds InceptionNeXt and its lr-decay constructor to mmengine's root
    registries; mmengine's loaders and savers, mmcv's ops, torch (its safe globals included),
    the environment, warning filters and every other registry entry stay as they were, and
    neither timm nor torchvision is imported (timm comes when a model is built)."""
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


def way_out(path: str) -> tuple[str, ...]:
    """What a refusal must name: the ways out that exist after ``pip install`` (no tools/)."""
    return (f'python -m backbones.convert --trust-checkpoint {path} clean.pth',
            'SafeRunHook(trusted_checkpoints=[...])', '--trust-checkpoint')


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
                          *way_out(ckpt))
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


class _RunsCodeBesideWeights:
    """Unpickling this calls ``os.system``; saved beside real weights, so that a trusted read
    loads them and shows, by ``marker``, that it was read with pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _init_pretrained(path: str) -> None:
    from backbones import InceptionNeXt
    InceptionNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def test_trusted_checkpoints_reach_the_pretrained_init_cfg(trap, tmp_path):
    """The backbone's ``init_cfg`` refuses the trap with the wheel's ways out; while a
    ``SafeRunHook(trusted_checkpoints=[...])`` run is active (``before_run``, which
    ``Runner.train`` calls before ``init_weights``) the listed file, named by any path to it,
    loads with pickle there too; after the run it is refused again."""
    from mmengine.logging import MMLogger

    from backbones import CheckpointError
    from backbones.runtime.hooks import SafeRunHook
    ckpt, marker = trap
    with pytest.raises(CheckpointError) as refused:
        _init_pretrained(ckpt)
    message = str(refused.value)
    assert '\n' not in message and 'posix.system' in message
    assert all(part in message for part in way_out(ckpt))
    assert not marker.exists()
    link = tmp_path / 'link.pth'
    link.symlink_to(ckpt)
    hook = SafeRunHook(trusted_checkpoints=[str(link)], atomic_checkpoints=False)
    runner = SimpleNamespace(work_dir=str(tmp_path), logger=MMLogger.get_instance('guest-trust'))
    hook.before_run(runner)
    try:
        with pytest.raises(CheckpointError, match='holds no state dict'):  # read: no weights
            _init_pretrained(ckpt)
        assert marker.exists(), 'the trusted file was not read with pickle'
    finally:
        hook.after_run(runner)
    marker.unlink()
    with pytest.raises(CheckpointError, match='refused to load'):
        _init_pretrained(ckpt)
    assert not marker.exists()


def test_trusted_files_is_scoped_and_nests(trap):
    from backbones.safe_load import is_trusted_file, trusted_files
    ckpt, _ = trap
    assert not is_trusted_file(ckpt)  # nothing by default
    with trusted_files([ckpt]):
        with trusted_files(ckpt):  # one path given as a string
            assert is_trusted_file(ckpt)
        assert is_trusted_file(ckpt)  # the inner block removed only its own entry
    assert not is_trusted_file(ckpt)
    assert not is_trusted_file(f'http://127.0.0.1:9/{ckpt}')


@pytest.mark.parametrize('torch_machinery', [True, False])
def test_timm_train_checkpoint_reads_on_both_loaders(tmp_path, monkeypatch, torch_machinery):
    """timm ``train.py``'s ``args`` (an ``argparse.Namespace``) is read by either loader, with
    its values; anything it would hold beyond plain values is still refused."""
    import argparse

    from backbones import safe_load
    from backbones.errors import CheckpointError
    if torch_machinery and not safe_load.TORCH_HAS_SAFE_GLOBALS:
        pytest.skip('torch < 2.5 has no extensible weights_only allowlist')
    monkeypatch.setattr(safe_load, 'TORCH_HAS_SAFE_GLOBALS', torch_machinery)
    args = argparse.Namespace(model='inception_next_atto', lr=4e-3, input_size=[3, 224, 224],
                              mean=None, model_kwargs={'drop_path_rate': 0.1})
    path = tmp_path / 'last.pth.tar'
    torch.save({'epoch': 3, 'arch': 'inception_next_atto', 'args': args, 'version': 2,
                'metric': 80.1, 'optimizer': {'state': {0: {'step': torch.tensor(1.0)}},
                                              'param_groups': [{'lr': 4e-3, 'params': [0]}]},
                'state_dict': {'w': torch.ones(2)}, 'state_dict_ema': {'w': torch.ones(2)}},
               path)
    loaded = load_torch_file(str(path))
    assert isinstance(loaded['args'], argparse.Namespace) and vars(loaded['args']) == vars(args)
    marker = tmp_path / 'code_ran'
    torch.save({'args': argparse.Namespace(hidden=_RunsCodeBesideWeights(marker))},
               tmp_path / 'namespace_trap.pth')
    with pytest.raises(CheckpointError, match='posix.system'):
        load_torch_file(str(tmp_path / 'namespace_trap.pth'))
    assert not marker.exists()


def test_installed_converter_runs_outside_the_repository(tmp_path, trap, timm_atto):
    """``python -m backbones.convert`` (what a ``pip install`` has: no tools/) converts a timm
    train.py checkpoint from any folder, and refuses the trap naming itself as the way out."""
    from test_checkpoint import timm_train_checkpoint

    from backbones import InceptionNeXt
    folder = tmp_path / 'elsewhere'
    folder.mkdir()
    src = timm_train_checkpoint(folder, timm_atto)

    def convert(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'backbones.convert', *args], cwd=folder,
                              capture_output=True, text=True, timeout=300)

    done = convert(src, 'clean.pth')
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == 'clean.pth'
    state = torch.load(folder / 'clean.pth', map_location='cpu', weights_only=True)
    InceptionNeXt('atto', out_norm_cfg=None).load_state_dict(state, strict=True)
    ref = timm_atto.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in state.items())
    ckpt, marker = trap
    refused = convert(ckpt, 'out.pth')
    assert_one_line_error(refused.returncode, refused.stderr, f'refused to load {ckpt}',
                          'posix.system', *way_out(ckpt))
    assert not marker.exists() and not (folder / 'out.pth').exists()
    usage = convert('--help')
    assert usage.returncode == 0 and usage.stdout.startswith('usage: python -m backbones.convert')


def _trap_with_weights(path, marker, state: dict) -> str:
    torch.save({'state_dict': state, 'payload': _RunsCodeBesideWeights(marker)}, path)
    return str(path)


@pytest.mark.slow
def test_downstream_trust_reaches_init_cfg_and_load_from(tmp_path, tiny_data, trap, timm_atto):
    """A project's own Runner with the one config line
    ``custom_hooks = [dict(type='SafeRunHook', trusted_checkpoints=[...])]``: the listed
    pretrained ``init_cfg`` file and ``load_from`` file load with pickle (their code runs: the
    user said so); without the list the same run is refused before any code runs."""
    ckpt, load_marker = trap
    init_marker = tmp_path / 'init_code_ran'
    pretrained = _trap_with_weights(tmp_path / 'timm_pretrained.pth', init_marker,
                                    timm_atto.state_dict())
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1)
    base = open(cfg).read() + ("custom_imports = dict(imports=['backbones', "
                               "'backbones.runtime.hooks'], allow_failed_imports=False)\n")

    def run(work: str, trusted: list[str]) -> subprocess.CompletedProcess:
        with open(cfg, 'w') as f:
            f.write(base + f"custom_hooks = [dict(type='SafeRunHook', "
                           f"trusted_checkpoints={trusted!r})]\n")
        return subprocess.run(
            [sys.executable, '-c', DOWNSTREAM, cfg,
             *train_args(cfg, tmp_path, pretrained=True)[3:],
             "model.backbone.init_cfg.type='Pretrained'",
             f'model.backbone.init_cfg.checkpoint={pretrained}', f'load_from={ckpt}',
             f'work_dir={work}'], cwd=tmp_path, capture_output=True, text=True, timeout=600)

    refused = run(str(tmp_path / 'a'), [])
    assert 'TRAINED' not in refused.stdout and 'posix.system' in refused.stderr
    assert 'python -m backbones.convert --trust-checkpoint' in refused.stderr
    assert not init_marker.exists() and not load_marker.exists()
    trusted = run(str(tmp_path / 'b'), [pretrained, ckpt])
    assert 'TRAINED' in trusted.stdout and 'RESTORED' in trusted.stdout, trusted.stderr[-3000:]
    assert init_marker.exists() and load_marker.exists()
    assert 'InceptionNeXt: loaded' in trusted.stdout + trusted.stderr
