"""Nothing lost: ``--overwrite`` moves a finished run aside and trains, the work dir's lock
refuses a live owner and takes a dead one's over, outputs are checked before the work (a
read-only folder), and an input is never replaced, links resolved. The refusals of ordinary
actions (a second training, painting into the images folder...) are rows of test_bad_input.py."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import FAMILIES, SEG_TAIL, assert_one_line_error, run_here, train_args, write_config

from backbones.checks.outputs import check_output_file, check_output_folder, check_writable
from backbones.errors import ConfigError
from backbones.runtime.workdir import LOCK_FILE, work_dir_lock


@pytest.fixture()
def cfg(tmp_path, tiny_data) -> str:
    (tmp_path / 'cfg').mkdir()
    return write_config(tmp_path / 'cfg', FAMILIES['upernet'][0], SEG_TAIL, root=tiny_data['seg'],
                        iters=1)


def _train(cfg: str, work: Path, *extra: str) -> tuple[int, str, str]:
    return run_here('train.py', *train_args(cfg, work), *extra)


def test_overwrite_moves_the_old_checkpoints_aside_and_trains(cfg, tmp_path):
    work = tmp_path / 'work'
    code, _, err = _train(cfg, work)
    assert code == 0, err[-2000:]
    old = {name: (work / name).read_bytes() for name in ('iter_1.pth', 'last_checkpoint')}
    code, out, err = _train(cfg, work, '--overwrite')
    assert code == 0, err[-2000:]
    [previous] = work.glob('previous_*')
    assert {name: (previous / name).read_bytes() for name in old} == old
    assert (work / 'iter_1.pth').is_file()
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_1.pth')
    assert f'moved the previous run\'s checkpoints (iter_1.pth, last_checkpoint) aside to ' \
           f'{previous}/' in out + err
    assert not (work / LOCK_FILE).exists()


def test_overwrite_with_load_from_the_old_run_reads_it_where_it_was_moved(cfg, tmp_path):
    """Starting over from the earlier run's own checkpoint: it is checked where it lies, moved
    aside with the rest, and the new run loads it from there."""
    work = tmp_path / 'work'
    code, _, err = _train(cfg, work)
    assert code == 0, err[-2000:]
    code, out, err = _train(cfg, work, f'load_from={work}/iter_1.pth', '--overwrite')
    assert code == 0, err[-2000:]
    [previous] = work.glob('previous_*')
    assert f'Load checkpoint from {previous}/iter_1.pth' in out + err


def _dead_pid() -> int:
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_a_dead_owners_lock_is_taken_over(cfg, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    pid = _dead_pid()
    (work / LOCK_FILE).write_text(f'{pid} {socket.gethostname()}\n')
    code, out, err = _train(cfg, work)
    assert code == 0, err[-2000:]
    assert f'took over the lock {work}/{LOCK_FILE} of a training that is no longer running ' \
           f'(PID {pid} on {socket.gethostname()})' in out + err
    assert not (work / LOCK_FILE).exists()  # released at the end


def test_the_lock_is_released_on_errors_and_stops(tmp_path):
    for error in (ConfigError('bad'), SystemExit(143)):  # TrainingStopped is a SystemExit
        with pytest.raises(type(error)), work_dir_lock(str(tmp_path)):
            assert (tmp_path / LOCK_FILE).read_text() == f'{os.getpid()} {socket.gethostname()}\n'
            raise error
        assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_owners_lock_refuses(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f'{os.getppid()} {socket.gethostname()}\n')
    with pytest.raises(ConfigError, match='is in use by another training'):
        with work_dir_lock(str(tmp_path)):
            pass
    (tmp_path / LOCK_FILE).write_text(f'{os.getppid()} another-host\n')  # cannot tell: refuse
    with pytest.raises(ConfigError, match='on host another-host'):
        with work_dir_lock(str(tmp_path)):
            pass


def test_only_the_main_process_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    with work_dir_lock(str(tmp_path / 'work')):
        assert not (tmp_path / 'work').exists()


def test_export_into_a_read_only_folder_fails_before_the_work(tmp_path, tiny_data, monkeypatch):
    """One line at the start, nothing written. As root a 0o555 folder is writable, so the test
    then shows the tool what an ordinary user's os.access says."""
    read_only = tmp_path / 'read_only'
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode, **kw: False if Path(p) == read_only
                            else real(p, mode, **kw))
    try:
        (tmp_path / 'cfg').mkdir()
        cfg = write_config(tmp_path / 'cfg', FAMILIES['upernet'][0], SEG_TAIL,
                           root=tiny_data['seg'], iters=1)
        code, _, err = run_here('deployment/export.py', cfg, tmp_path / 'no_model_needed.pth',
                                read_only / 'x.onnx')
        assert_one_line_error(code, err, f'OUT {read_only}/x.onnx: cannot write in {read_only}')
        assert not list(read_only.iterdir())
    finally:
        read_only.chmod(0o755)


def test_inputs_are_never_replaced_even_with_overwrite(tmp_path):
    """A hard link of an input inside an output folder, under a name the tool writes, and a
    symbolic link as the output file: refused with or without --overwrite."""
    data = tmp_path / 'data'
    data.mkdir()
    image = data / 'a.png'
    image.write_bytes(b'image')
    out = tmp_path / 'out'
    out.mkdir()
    os.link(image, out / 'a.png')
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match='is the input'):
            check_output_folder(str(out), '--out-dir', [str(data)], ['a.png'], overwrite)
    (tmp_path / 'link.pth').symlink_to(image)
    with pytest.raises(ConfigError, match='is the input'):
        check_output_file(str(tmp_path / 'link.pth'), [str(image)], 'OUT', overwrite=True)
    check_output_folder(str(out), '--out-dir', [str(data)], ['b.png'])  # a new name is fine
    assert image.read_bytes() == b'image'


def test_writable_checks_leave_nothing_behind(tmp_path):
    check_writable(str(tmp_path / 'a' / 'b' / 'x.onnx'), 'OUT')
    check_writable(str(tmp_path / 'new_folder'), '--out', folder=True)
    assert not list(tmp_path.iterdir())
