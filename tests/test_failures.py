"""Every exception that reaches a tool ends in one line (backbones/cli/failures.py): files the
operating system refuses and memory exhaustion name the file or the size (status 2), a defect
gives its type and the path of a crash report (status 1), Ctrl-C 130.

Running as root, a file's permission bits deny nothing, so EACCES, EPERM, EROFS and EIO are
built as the OSError the kernel would give; the other errnos come from real calls."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ATTO, FAMILIES, SEG_TAIL, assert_one_line_error, run_here, write_config
from mmengine.config import Config, DictAction

from backbones.cli.failures import explain, headline
from backbones.cli.main import one_line_errors
from backbones.config import build_model, load_config
from backbones.errors import DataError, TrainingStopped, note_run

REDUCE = 'reduce the batch size (train_dataloader.batch_size'


def raised(call) -> BaseException:
    try:
        call()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError('nothing raised')


def loop(tmp_path: Path) -> Path:
    (tmp_path / 'a').symlink_to(tmp_path / 'b')
    (tmp_path / 'b').symlink_to(tmp_path / 'a')
    return tmp_path / 'a'


# --- the table, one errno class at a time ------------------------------------------------------

REAL = {  # name: (the failing call on tmp_path, the path named, words of the line)
    'ELOOP': (lambda t: open(loop(t)), lambda t: t / 'a', 'too many levels of symbolic links'),
    'ENAMETOOLONG': (lambda t: open(t / ('x' * 300)), lambda t: t / ('x' * 300),
                     'file name too long'),
    'EISDIR': (lambda t: open(t), lambda t: t, 'is a folder where a file is expected'),
    'ENOTDIR': (lambda t: ((t / 'f').write_text(''), os.listdir(t / 'f' / 'sub')),
                lambda t: t / 'f' / 'sub', 'a file where a folder is expected'),
    'ENOENT': (lambda t: open(t / 'nope'), lambda t: t / 'nope', 'no such file or folder'),
}


@pytest.mark.parametrize('name', REAL)
def test_real_os_errors_name_the_file(tmp_path, name):
    call, path, words = REAL[name]
    line = explain(raised(lambda: call(tmp_path)))
    assert line.startswith(f'{path(tmp_path)}: {words}'), line
    assert line.endswith(')'), line  # how to fix it, in brackets


@pytest.mark.parametrize('number, words, fix', [
    (errno.EACCES, 'permission denied', 'permissions'),
    (errno.EPERM, 'operation not permitted', 'permissions'),
    (errno.EROFS, 'read-only file system', '--work-dir'),
    (errno.EMFILE, 'too many open files', 'ulimit -n'),
    (errno.EIO, 'input/output error', 'copy the file again'),
    (errno.ESTALE, 'stale file handle', 'remount'),
])
def test_os_errors_the_kernel_gives_name_the_file(number, words, fix):
    line = explain(OSError(number, os.strerror(number), '/data/x.png'))
    assert line.startswith(f'/data/x.png: {words}') and fix in line, line


def test_unknown_errno_gives_what_the_os_said():
    line = explain(OSError(errno.EHOSTDOWN, os.strerror(errno.EHOSTDOWN), '/mnt/x.pth'))
    assert line == f'/mnt/x.pth: {os.strerror(errno.EHOSTDOWN)}'


def test_rename_names_both_paths():
    line = explain(OSError(errno.EXDEV, 'Invalid cross-device link', '/a/x', None, '/b/x'))
    assert line.startswith('/a/x -> /b/x: on another file system'), line


def test_disk_full_and_quota():
    assert 'no space left on' in explain(OSError(errno.ENOSPC, 'No space', '/tmp/x.pth'))
    assert 'disk quota exceeded on' in explain(OSError(errno.EDQUOT, 'Quota', '/tmp/x.pth'))
    assert explain(OSError(errno.ENOSPC, 'No space left on device')).startswith(
        'no space left on the device')


def test_os_errors_without_a_file_are_defects_except_the_machines_limits():
    assert explain(OSError(errno.EINVAL, 'Invalid argument')) is None
    assert explain(ConnectionResetError(errno.ECONNRESET, 'reset')) is None
    assert 'ulimit -n' in explain(OSError(errno.EMFILE, 'Too many open files'))


def test_errno_lost_by_a_library_goes_by_class_and_pil_names_its_file():
    line = explain(FileNotFoundError('img file does not exist: /data/x.jpg'))
    assert line == 'img file does not exist: /data/x.jpg (check the path)'
    from PIL import UnidentifiedImageError
    line = explain(UnidentifiedImageError("cannot identify image file '/data/x.png'"))
    assert line.startswith('/data/x.png: not an image that can be read'), line
    assert explain(UnidentifiedImageError("cannot identify image file <_io.BytesIO at 0x1>")) \
        is None  # no file to name: the data check that reads it names it


# --- memory --------------------------------------------------------------------------------------

def test_cpu_allocator_gives_the_size():
    error = raised(lambda: torch.empty(1 << 50, dtype=torch.uint8))
    line = explain(error)
    assert line.startswith('out of CPU memory (tried to allocate 1024.0 TiB): '), line
    assert REDUCE in line and '--shape' in line and 'num_workers' in line


@pytest.mark.parametrize('error, start', [
    (MemoryError(), 'out of CPU memory: '),
    (torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total '
                            'capacity of 15.7 GiB of which 1.2 GiB is free.'),
     'out of GPU memory (tried to allocate 2.00 GiB): '),
    (RuntimeError('CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.8 GiB total)'),
     'out of GPU memory (tried to allocate 20.00 MiB): '),
])
def test_memory_shapes(error, start):
    line = explain(error)
    assert line.startswith(start) and REDUCE in line, line


def test_numpy_gives_the_size():
    line = explain(raised(lambda: np.empty((1 << 40, 1 << 10), np.float32)))
    assert line.startswith('out of CPU memory (tried to allocate 4.00 PiB)'), line


def test_killed_worker_and_shared_memory():
    line = explain(RuntimeError('DataLoader worker (pid 4242) is killed by signal: Killed. '))
    assert line.startswith('a DataLoader worker (pid 4242) was killed') and REDUCE in line
    assert '/dev/shm' in explain(RuntimeError(
        'DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that '
        'dataloader\'s workers are out of shared memory. Please try to raise your shared memory '
        'limit. This might be caused by insufficient shared memory (shm).'))


# --- what wraps an error, what a worker raised ---------------------------------------------------

def _wrapped(tmp_path: Path, suppress: bool) -> None:
    try:
        open(tmp_path / 'gone.pth', 'rb')
    except OSError as e:
        if suppress:
            raise RuntimeError('could not load') from None
        raise RuntimeError('could not load') from e


def test_causes_are_followed_unless_suppressed(tmp_path):
    line = explain(raised(lambda: _wrapped(tmp_path, suppress=False)))
    assert line.startswith(f'{tmp_path / "gone.pth"}: no such file'), line
    assert explain(raised(lambda: _wrapped(tmp_path, suppress=True))) is None


def test_implicit_context_is_followed(tmp_path):
    def handler_fails():
        try:
            open(loop(tmp_path))
        except OSError:
            raise ValueError('cannot read the data')  # noqa: B904  (as a library does)
    assert 'symlink loop' in explain(raised(handler_fails))


def test_the_outermost_known_error_wins(tmp_path):
    def data_error():
        try:
            open(tmp_path / 'x')
        except OSError as e:
            raise DataError('x is missing: run make demo-data') from e
    assert explain(raised(data_error)) == 'x is missing: run make demo-data'


class _Reads(torch.utils.data.Dataset):
    def __init__(self, path: Path, error: type | None = None):
        self.path, self.error = path, error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        if self.error:
            raise self.error('a defect in a worker\nsecond line')
        return open(self.path, 'rb').read()


def test_dataloader_worker_errors_map_as_the_workers_own(tmp_path):
    """torch re-raises a worker's error with the worker's traceback as its text (and no errno)."""
    def first(dataset):
        return next(iter(torch.utils.data.DataLoader(dataset, num_workers=1)))
    error = raised(lambda: first(_Reads(loop(tmp_path))))
    assert 'DataLoader worker' in str(error) and error.errno is None
    assert explain(error).startswith(f'{tmp_path / "a"}: too many levels of symbolic links')
    error = raised(lambda: first(_Reads(tmp_path, ZeroDivisionError)))
    assert explain(error) is None
    assert headline(error) == 'ZeroDivisionError: a defect in a worker'


def test_existing_config_shapes_stay():
    assert explain(TypeError("__init__() got an unexpected keyword argument 'max_keep_ckpt'")) \
        .startswith("config error: __init__() got an unexpected keyword argument 'max_keep_ckpt'")
    assert explain(KeyError('"Foo is not in the mmseg::model registry"')) == \
        'config error: Foo is not in the mmseg::model registry'


# --- the wrapper: status, one line, the crash report ---------------------------------------------

def _run(main, capsys) -> tuple[int, str]:
    code = raised(one_line_errors(main)).code
    return code, capsys.readouterr().err


def _crash(work_dir: Path | None):
    def main():
        if work_dir:
            note_run(str(work_dir), Config(dict(model=dict(type='InceptionNeXt'))))
        {}['a missing key']
    return main


def _report(err: str) -> Path:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: internal error: KeyError: 'a missing key'; crash report: "), err
    return Path(lines[0].split('crash report: ')[1].split(' (please')[0])


def test_defect_is_one_line_and_a_crash_report_in_the_work_dir(tmp_path, capsys):
    code, err = _run(_crash(tmp_path / 'work'), capsys)
    assert code == 1
    report = _report(err)
    assert report.parent == tmp_path / 'work' and report.name.startswith('crash_')
    text = report.read_text()
    for field in ('Traceback (most recent call last)', "KeyError: 'a missing key'",
                  'command line: ', 'folder: ', 'python: ', 'platform: ', 'torch ', 'mmcv ',
                  'mmengine ', 'mmdet ', 'mmsegmentation ', 'onnxruntime ', 'config:',
                  "type='InceptionNeXt'"):
        assert field in text, field
    assert not list(tmp_path.glob('work/.*.tmp'))  # written atomically


def test_crash_report_before_the_work_dir_is_known(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(_crash(None), capsys)
    report = _report(err)
    assert code == 1 and report.parent == Path('work_dirs', 'crash_reports')
    assert 'config:\n(not loaded)' in report.read_text()


def test_crash_report_where_the_work_dir_cannot_be_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'file').write_text('')
    _, err = _run(_crash(tmp_path / 'file' / 'work'), capsys)  # a file where a folder should be
    assert _report(err).parent == Path('work_dirs', 'crash_reports')


def test_other_ranks_are_silent(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    code, err = _run(_crash(tmp_path), capsys)
    assert code == 1 and err == ''
    assert [p.name.endswith('_rank1.txt') for p in tmp_path.glob('crash_*')] == [True]
    code, err = _run(lambda: open(tmp_path / 'nope'), capsys)
    assert code == 2 and err == ''


def test_interrupt_and_stop(capsys):
    def interrupted():
        raise KeyboardInterrupt
    assert _run(interrupted, capsys) == (130, 'stopped by SIGINT (Ctrl-C)\n')

    def stopped():
        raise TrainingStopped('stopped by SIGTERM after iteration 7', 15)
    error = raised(one_line_errors(stopped))
    assert isinstance(error, TrainingStopped) and error.code == 143
    assert capsys.readouterr().err == ''


def test_noted_work_dir_does_not_leak_into_the_next_tool(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    def noted_then_bad_input():
        note_run(str(tmp_path / 'first'))
        raise DataError('bad')
    _run(noted_then_bad_input, capsys)
    _, err = _run(_crash(None), capsys)
    assert _report(err).parent == Path('work_dirs', 'crash_reports')


# --- through the tools ---------------------------------------------------------------------------

OVERRIDES = [*ATTO.split(), *FAMILIES['upernet'][2].split()]


@pytest.fixture()
def seg_test(tmp_path, tiny_data):
    """A copy of the tiny ADE20K set, a config on it and a whole UperNet-atto model file:
    ``args(*extra)`` is tools/test.py's command line."""
    root = tmp_path / 'ade'
    shutil.copytree(tiny_data['seg'], root)
    cfg = write_config(tmp_path, FAMILIES['upernet'][0], SEG_TAIL, root=root, iters=2)
    options = {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in OVERRIDES)}
    torch.manual_seed(0)
    model = tmp_path / 'model.pth'
    torch.save({'state_dict': build_model(load_config(cfg, options)).state_dict(), 'meta': {}},
               model)

    def args(*extra: str) -> list[str]:
        return [cfg, str(model), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                *OVERRIDES, *extra]
    return root, args


@pytest.mark.slow
def test_tool_label_map_in_a_symlink_loop(tmp_path, seg_test):
    root, args = seg_test
    label = sorted((root / 'annotations' / 'validation').glob('*.png'))[0]
    label.unlink()
    (tmp_path / 'elsewhere').symlink_to(label)
    label.symlink_to(tmp_path / 'elsewhere')
    code, _, err = run_here('test.py', *args())
    assert_one_line_error(code, err, str(label), 'symlink loop')


@pytest.mark.slow
def test_tool_defect_in_a_hook_is_one_line_and_a_crash_report(tmp_path, seg_test, monkeypatch):
    _, args = seg_test
    (tmp_path / 'my_hooks.py').write_text(
        'from mmengine.hooks import Hook\n'
        'from mmengine.registry import HOOKS\n\n\n'
        '@HOOKS.register_module(force=True)\n'
        'class BrokenHook(Hook):\n'
        '    def before_test(self, runner):\n'
        '        return 1 / 0\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with open(tmp_path / 'cfg.py', 'a') as f:
        f.write("custom_imports = dict(imports=['my_hooks'])\n"
                "custom_hooks = [dict(type='BrokenHook')]\n")
    code, _, err = run_here('test.py', *args())
    lines = err.strip().splitlines()
    assert code == 1 and 'Traceback' not in err, err[-2000:]
    assert lines[-1].startswith('error: internal error: ZeroDivisionError: division by zero; '
                                f'crash report: {tmp_path / "work"}/crash_'), lines[-1]
    assert sum(x.startswith('error:') for x in lines) == 1
    report = Path(lines[-1].split('crash report: ')[1].split(' (please')[0]).read_text()
    assert 'in before_test' in report and "type='BrokenHook'" in report
