"""Faults lose nothing: a diverging loss stops the run, a full disk (a checkpoint or log write
that fails) is one line with the last checkpoint intact, SIGINT/SIGTERM stop training at the next
boundary (a second Ctrl-C at once), and after a stop or a SIGKILL --resume continues."""
from __future__ import annotations

import errno
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    ROOT,
    SEG_TAIL,
    assert_one_line_error,
    forget_mmengine_instances,
    last_metrics,
    run_here,
    train_args,
    write_config,
)
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from backbones.config import load_config
from backbones.runtime.hooks.atomic_checkpoints import latest_complete_checkpoint


def test_non_finite_loss_stops_training(seg_cfg, tmp_path, capsys):
    code, _, err = run_here('train.py', *train_args(seg_cfg, tmp_path / 'work',
                                                    'train_cfg.max_iters=6',
                                                    'optim_wrapper.optimizer.lr=1e30'))
    assert_one_line_error(code, err, 'the loss became', 'lower the lr', 'may already hold')
    advice = re.search(r'\((optim_wrapper\.clip_grad[^)]*)\)', err).group(1)
    key, value = advice.split('=')  # the advice works as a --cfg-options override
    assert load_config(seg_cfg, {key: float(value)}).optim_wrapper.clip_grad.max_norm == 1.0


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path: str, room: int):
        self.file, self.room = open(path, 'wb'), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


@pytest.mark.parametrize('writer', ['file write', 'torch.save'])
def test_a_save_that_fails_midway_keeps_the_last_checkpoint(tmp_path, writer):
    """SafeRunHook's atomic saving: a save that dies midway on a full disk (an OSError from the
    file, or the RuntimeError "enforce fail ... unexpected pos" torch.save raises around it)
    says so in one line, leaves no partial file, the last checkpoint intact, and the runner as
    it was after the run."""
    from backbones.errors import DiskFullError
    from backbones.runtime.hooks.atomic_checkpoints import atomic_checkpoints

    class Runner:
        hooks: list = []
        model = torch.nn.Linear(1024, 1024)  # 4 MiB of weights
        fail = False

        def save_checkpoint(self, out_dir: str, filename: str) -> None:
            state = {'w': torch.zeros(3) if self.fail else torch.ones(3),
                     'model': self.model.state_dict()}
            path = os.path.join(out_dir, filename)
            if not self.fail:
                torch.save(state, path)
            elif writer == 'torch.save':
                with _FullDisk(path, room=1 << 20) as f:
                    torch.save(state, f)
            else:
                with _FullDisk(path, room=1 << 20) as f:
                    f.write(b'x' * (1 << 20))
                    f.write(b'x')

    runner = Runner()
    with atomic_checkpoints(runner):
        runner.save_checkpoint(str(tmp_path), 'iter_1.pth')
        runner.fail = True
        with pytest.raises(DiskFullError) as error:
            runner.save_checkpoint(str(tmp_path), 'iter_2.pth')
    message = str(error.value)
    assert re.fullmatch(r'no space left on .+ \(mounted on /.*\) for .+/iter_2\.pth '
                        r'\(needed ~5 MB\): free some space, then continue with --resume '
                        r'\(the last complete checkpoint, .+/iter_1\.pth, is intact\)', message)
    assert 'save_checkpoint' not in vars(runner)  # the wrapper is gone after the run
    assert [p.name for p in tmp_path.iterdir()] == ['iter_1.pth']  # no partial file left
    assert torch.equal(torch.load(tmp_path / 'iter_1.pth', weights_only=True)['w'], torch.ones(3))


@pytest.mark.parametrize('free_mb', [0, 10_000])
def test_torch_writing_a_path_fails_as_a_full_disk_only_where_the_disk_is_full(tmp_path,
                                                                                monkeypatch,
                                                                                free_mb):
    """torch.save to a path writes in C++, whose error ("unexpected pos") names no errno; a
    failed write (here: past RLIMIT_FSIZE) counts as a full disk only where the file system is
    nearly full."""
    import resource
    from collections import namedtuple

    from backbones import files
    from backbones.errors import DiskFullError
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(files.shutil, 'disk_usage',
                        lambda path: usage(1 << 40, 1 << 40, free_mb << 20))
    assert signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN  # Python's default: EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        expected = DiskFullError if free_mb == 0 else RuntimeError
        with pytest.raises(expected, match='no space left on' if free_mb == 0 else
                           'unexpected pos|failed writing'):
            files.write_atomic(str(tmp_path / 'big.pth'),
                               lambda tmp: torch.save({'w': torch.zeros(1 << 20)}, tmp))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


@HOOKS.register_module()
class SignalAtHook(Hook):
    """Sends ``signum`` to this process during iteration ``at`` (1-based) or, with
    ``during_save``, while the checkpoint of iteration ``at`` is being saved."""

    priority = 'LOWEST'

    def __init__(self, signum: int, at: int, during_save: bool = False):
        self.signum, self.at, self.during_save = signum, at, during_save

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.during_save and runner.iter + 1 == self.at:
            self._send()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.during_save and checkpoint['meta']['iter'] == self.at:
            self._send()

    def _send(self) -> None:
        handler = signal.getsignal(self.signum)
        assert handler not in (signal.SIG_DFL, signal.default_int_handler), 'no stop handler'
        os.kill(os.getpid(), self.signum)


def _assert_stopped(code: int, err: str, signum: int, done: int, work: Path) -> None:
    """Exit 128 + signum, one ``stopped by`` line, ``iter_<done>.pth`` complete, no temporary
    file, and Python's own handlers back."""
    name = signal.Signals(signum).name
    lines = [x for x in err.splitlines() if x.startswith('stopped by')]
    assert code == 128 + signum, err[-3000:]
    assert 'Traceback' not in err and 'error:' not in err and len(lines) == 1, err[-3000:]
    assert lines[0] == (f'stopped by {name} after iteration {done}; saved {work}/iter_{done}.pth: '
                        'continue with --resume')
    assert not list(work.rglob('*.tmp'))
    state = torch.load(work / f'iter_{done}.pth', map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == done and {'optimizer', 'param_schedulers'} <= state.keys()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _assert_resumes(cfg: str, work: Path, done: int) -> None:
    """``--resume`` continues from ``iter_<done>.pth`` and trains the next iteration only."""
    forget_mmengine_instances()  # the visualizer of the first run would take this run's logs
    code, _, err = run_here('train.py', *train_args(cfg, work, f'train_cfg.max_iters={done + 1}',
                                                    'train_cfg.val_begin=100'), '--resume')
    assert code == 0, err[-3000:]
    train_logs, _ = last_metrics(work)
    assert [x['iter'] for x in train_logs if 'loss' in x] == [done + 1]
    assert torch.load(work / f'iter_{done + 1}.pth', map_location='cpu',
                      weights_only=False)['meta']['iter'] == done + 1


@pytest.mark.parametrize('signum,at,during_save', [(signal.SIGINT, 2, False),
                                                   (signal.SIGTERM, 2, True)],
                         ids=['SIGINT during an iteration', 'SIGTERM during a save'])
def test_a_signal_stops_at_the_next_boundary_and_resume_continues(tmp_path, tiny_data, signum,
                                                                  at, during_save):
    """SIGINT/SIGTERM (sent to this process: the tools run in it) stop training after the
    iteration in progress (saving it: the periodic interval is 6) or right after the save in
    progress (before the validation due after it), exit 130/143 with one line, and --resume
    continues from there."""
    tail = SEG_TAIL + (f'custom_hooks = [dict(type={SignalAtHook.__name__!r}, signum={int(signum)},'
                       f' at={at}, during_save={during_save})]\n')
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], tail, root=tiny_data['seg'], iters=6)
    work = tmp_path / 'work'
    code, out, err = run_here('train.py', *train_args(  # a validation due after iteration `at`
        cfg, work, f'default_hooks.checkpoint.interval={1 if during_save else 6}',
        f'train_cfg.val_interval={at}'))
    _assert_stopped(code, err, signum, at, work)
    assert 'Iter(val)' not in out + err
    assert not (work / f'iter_{at + 1}.pth').exists()
    _assert_resumes(cfg, work, at)


@pytest.mark.slow
@pytest.mark.parametrize('at,during_save,line', [
    (1, False, 'stopped by SIGTERM at iteration 1, without saving (epoch-based training saves '
               'whole epochs only): no checkpoint was saved yet'),
    (2, True, 'stopped by SIGTERM after epoch 1 (iteration 2); saved {work}/epoch_1.pth: '
              'continue with --resume')], ids=['mid-epoch', 'during the epoch save'])
def test_a_signal_stops_an_epoch_based_run(tmp_path, tiny_data, at, during_save, line):
    """Mask R-CNN's epoch-based loop (2 iterations an epoch): a stop mid-epoch saves nothing
    (mmengine would restart the epoch from its first batch) and says so; one during the epoch's
    save stops right after it."""
    base, tail, overrides = FAMILIES['mask_rcnn']
    tail += (f'custom_hooks = [dict(type={SignalAtHook.__name__!r}, signum={int(signal.SIGTERM)},'
             f' at={at}, during_save={during_save})]\n')
    cfg = write_config(tmp_path, base, tail, root=tiny_data['det'])
    work = tmp_path / 'work'
    code, _, err = run_here('train.py', cfg, '--work-dir', work, '--cfg-options', *ATTO.split(),
                            *overrides.split(), 'train_cfg.max_epochs=2')
    lines = [x for x in err.splitlines() if x.startswith('stopped by')]
    assert code == 143 and lines == [line.format(work=work)], err[-3000:]
    assert sorted(p.name for p in work.glob('*.pth')) == (['epoch_1.pth'] if during_save else [])
    assert not list(work.rglob('*.tmp'))


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_data, monkeypatch,
                                                               capsys):
    """A checkpoint write that hits ENOSPC midway (as mmengine's file backend writes it): one
    line naming the file system and the space a checkpoint needs, exit 2, no partial file,
    the last checkpoint intact, and --resume continues from it."""
    put = LocalBackend.put

    def put_on_a_full_disk(self, obj: bytes, filepath) -> None:
        if 'iter_2.pth' not in str(filepath):
            return put(self, obj, filepath)
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalBackend, 'put', put_on_a_full_disk)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'], iters=3)
    work = tmp_path / 'work'
    code, _, err = run_here('train.py', *train_args(cfg, work,
                                                    'default_hooks.checkpoint.interval=1',
                                                    'default_hooks.checkpoint.max_keep_ckpts=1'))
    assert_one_line_error(code, err, 'no space left on ', f'for {work}/iter_2.pth (needed ~',
                          f'the last complete checkpoint, {work}/iter_1.pth, is intact')
    needed = int(re.search(r'needed ~(\d+) MB', err).group(1))
    size = (work / 'iter_1.pth').stat().st_size / 2**20
    assert size / 2 < needed < size * 2, (needed, size)
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert not list(work.rglob('*.tmp'))
    monkeypatch.undo()
    _assert_resumes(cfg, work, 1)


def test_a_full_disk_while_logging_is_one_line(tmp_path, tiny_data, monkeypatch):
    """Logging swallows a failed write (a traceback on stderr, then training on without a
    log): SafeRunHook turns ENOSPC in the log file into the full-disk line at the end of the
    iteration, with the last checkpoint intact."""
    emit = logging.FileHandler.emit
    work = tmp_path / 'work'

    def emit_on_a_full_disk(self, record) -> None:  # from iteration 2 on, or a test's progress
        if not (work / 'iter_1.pth').is_file() or (
                (work / 'iter_2.pth').is_file() and 'Iter(test)' not in record.getMessage()):
            return emit(self, record)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            self.handleError(record)

    monkeypatch.setattr(logging.FileHandler, 'emit', emit_on_a_full_disk)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'], iters=3)
    code, _, err = run_here('train.py', *train_args(cfg, work, 'default_hooks.checkpoint.interval=1'
                                                    ))
    # iteration 2's log lines fail; iteration 2's save follows them; iteration 3 stops first
    assert_one_line_error(code, err, 'no space left on ', '.log: free some space',
                          f'the last complete checkpoint, {work}/iter_2.pth, is intact')
    assert 'Logging error' not in err
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth', 'iter_2.pth']
    code, _, err = run_here('test.py', cfg, work / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                            *train_args(cfg, work)[3:])
    assert_one_line_error(code, err, 'no space left on ', '.log: free some space: the run '
                          'finished, but its log is incomplete')
    assert 'Logging error' not in err


def _popen_train(cfg: str, work: Path, *extra: str, **popen) -> subprocess.Popen:
    """tools/train.py in a new process, with Python's own SIGINT handling (a shell may have
    started this one with SIGINT ignored, which its children inherit)."""
    return subprocess.Popen(
        [sys.executable, 'tools/train.py', *train_args(cfg, work, *extra)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _read_until(proc: subprocess.Popen, pattern: str) -> str:
    """``proc``'s output up to the first line matching ``pattern`` (all of it if none does)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            break
    return ''.join(lines)


@pytest.mark.slow
def test_sigterm_from_outside_stops_the_tool_cleanly(tmp_path, tiny_data):
    """``kill -TERM`` from another process while tools/train.py trains (checkpoint interval
    1000): exit status 143, one line, the iteration it stopped after saved complete, no
    temporary file (SIGINT takes the same path: see the in-process test above)."""
    signum = signal.SIGTERM
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work = tmp_path / 'work'
    proc = _popen_train(cfg, work)
    log = _read_until(proc, r'Iter\(train\) \[\s*2/1000\]')
    proc.send_signal(signum)
    log += proc.communicate(timeout=300)[0]
    stopped = re.search(r'^stopped by \w+ after iteration (\d+)', log, re.MULTILINE)
    assert stopped, log[-3000:]
    done = int(stopped.group(1))
    assert done >= 2
    _assert_stopped(proc.returncode, log, signum, done, work)
    assert [p.name for p in work.glob('*.pth')] == [f'iter_{done}.pth']


@pytest.mark.slow
def test_sigterm_to_every_process_with_data_loader_workers(tmp_path, tiny_data):
    """SIGTERM to the whole process group, data loader workers included (what SLURM does when it
    ends a job): still one line and exit 143, no temporary file; when the workers end before the
    next iteration boundary the run stops without saving and names the last complete
    checkpoint."""
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work = tmp_path / 'work'
    proc = _popen_train(cfg, work, 'default_hooks.checkpoint.interval=1',
                        'train_dataloader.num_workers=2',
                        'train_dataloader.persistent_workers=True', start_new_session=True)
    log = _read_until(proc, r'Iter\(train\) \[\s*2/1000\]')
    os.killpg(proc.pid, signal.SIGTERM)
    log += proc.communicate(timeout=300)[0]
    lines = [x for x in log.splitlines() if x.startswith('stopped by')]
    assert proc.returncode == 143 and len(lines) == 1 and 'Traceback' not in log, log[-3000:]
    assert re.fullmatch(r'stopped by SIGTERM (after iteration \d+; saved .+|at iteration \d+, '
                        r'without saving \(the data loader workers got the signal too and ended '
                        r'first\): continue with --resume from the last complete checkpoint, '
                        r'.+\.pth)', lines[0]), lines[0]
    assert not list(work.rglob('*.tmp'))
    torch.load(latest_complete_checkpoint(str(work)), map_location='cpu', weights_only=False)


SECOND_CTRL_C = r'''
import os, signal, sys, time
from backbones.runtime.signals import StopRequest

def host_handler(signum, frame):
    print('host handler', flush=True)

signal.signal(signal.SIGHUP, host_handler)
stop = StopRequest(on_force=lambda: open(sys.argv[1], 'w').close())
with stop.installed():
    assert signal.getsignal(signal.SIGHUP) is host_handler
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM never forces
    os.kill(os.getpid(), signal.SIGINT)  # within a second of the first: a copy, ignored
    time.sleep(0.2)
    print(f'recorded {stop.signum}', flush=True)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
    time.sleep(10)
print('still running', flush=True)
'''


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """A second Ctrl-C a second after the first kills the process by SIGINT (removing the
    temporary file of a save in progress); repeated SIGTERMs and a copy of the first signal
    change nothing."""
    marker = tmp_path / 'temporary_files_removed'
    result = subprocess.run([sys.executable, '-c', SECOND_CTRL_C, str(marker)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f'recorded {int(signal.SIGTERM)}']
    assert marker.exists()
    assert 'SIGTERM: stopping after the current iteration or checkpoint save' in result.stderr
    assert 'stopped by a second SIGINT at once' in result.stderr


@pytest.mark.slow
def test_sigkill_leaves_loadable_checkpoint_and_resume_continues(tmp_path, tiny_data):
    """Kill -9 twice at random moments (one right after a resume), then resume once more."""
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                       iters=1000)
    work_dir = tmp_path / 'work'
    args = [sys.executable, 'tools/train.py', *train_args(
        cfg, work_dir, 'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=1')]
    rng = np.random.default_rng(0)
    saved = 0
    for attempt in range(2):
        proc = subprocess.Popen(args + ['--resume'] * attempt, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while _latest_iter(work_dir) <= saved and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.5)))  # somewhere in the next iterations and saves
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        finals = list(work_dir.glob('*.pth'))
        assert finals, 'no checkpoint survived'
        for path in finals:  # every file under a final name is complete
            torch.load(path, map_location='cpu', weights_only=False)
        last = latest_complete_checkpoint(str(work_dir))
        saved = torch.load(last, map_location='cpu', weights_only=False)['meta']['iter']
        assert saved >= 1
    result = subprocess.run(args + [f'train_cfg.max_iters={saved + 1}', '--resume'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {saved}' in result.stdout + result.stderr
    assert (work_dir / f'iter_{saved + 1}.pth').is_file()


def _latest_iter(work_dir: Path) -> int:
    return max((int(p.stem.split('_')[1]) for p in work_dir.glob('iter_*.pth')), default=0)
