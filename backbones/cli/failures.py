"""What the tools print for an exception that reaches them, from one table.

Bad input and the machine's limits (a file the operating system refuses, memory) are one line
that names the file or the size and says what to change, exit status 2. Anything else is a
defect: one line with its type and message, exit status 1, and a crash report (traceback,
command line, versions, config) written to the run's work dir for a bug report, so that the
console stays readable. A DataLoader worker's error, which torch re-raises in the main process
with the worker's traceback as its text, is mapped as the worker's own error.
"""
from __future__ import annotations

import errno
import importlib.metadata
import os
import os.path as osp
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator

from ..errors import UserError, first_line, noted_run
from ..files import disk_full_message, is_disk_full, write_atomic

BAD_INPUT, DEFECT = 2, 1
FALLBACK_REPORT_DIR = osp.join('work_dirs', 'crash_reports')  # under the current folder
VERSIONS_OF = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain',
               'timm', 'numpy', 'onnx', 'onnxruntime')

_PERMISSION = 'check its permissions and owner, or use a path this user may use'
_OPEN_FILES = 'raise the limit (ulimit -n) or use fewer DataLoader workers (num_workers)'
# errno -> (what the operating system said, in words; how to fix it). ENOSPC and EDQUOT are the
# full-disk message of backbones.files.
OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.EACCES: ('permission denied', _PERMISSION),
    errno.EPERM: ('operation not permitted', _PERMISSION),
    errno.ELOOP: ('too many levels of symbolic links (a symlink loop)',
                  'fix or remove the link'),
    errno.EROFS: ('read-only file system', 'write to a writable place instead (another '
                  '--work-dir, --out-dir or output path)'),
    errno.ENAMETOOLONG: ('file name too long', 'use a shorter name or path'),
    errno.EISDIR: ('is a folder where a file is expected', 'give a file'),
    errno.ENOTDIR: ('a file where a folder is expected (it, or a part of its path)',
                   'check the path'),
    errno.ENOENT: ('no such file or folder', 'check the path'),
    errno.EEXIST: ('already exists', 'remove it or choose another name'),
    errno.ENOTEMPTY: ('folder not empty', 'empty it or choose another folder'),
    errno.EMFILE: ('too many open files in this process', _OPEN_FILES),
    errno.ENFILE: ('too many open files on this machine', _OPEN_FILES),
    errno.EIO: ('input/output error', 'the disk or network file system failed to read or '
                'write it: check the device (dmesg), then copy the file again'),
    errno.ENXIO: ('no such device or address', 'check that its device or mount is there'),
    errno.ENODEV: ('no such device', 'check that its device or mount is there'),
    errno.ESTALE: ('stale file handle (a network file system)', 'remount it, then run again'),
    errno.EBUSY: ('device or resource busy', 'run again once it is free'),
    errno.ETXTBSY: ('text file busy', 'run again once the program using it has ended'),
    errno.EFBIG: ('file too large for its file system', 'write to another file system'),
    errno.EXDEV: ('on another file system than the target', 'use a path on one file system'),
    errno.EINVAL: ('invalid argument for this file or file system', 'check the path'),
}
# An OSError whose errno is lost (mmcv's checks, torch's re-raise of a worker's error): by class.
ERRNO_OF_CLASS: dict[type, int] = {
    FileNotFoundError: errno.ENOENT, PermissionError: errno.EACCES,
    IsADirectoryError: errno.EISDIR, NotADirectoryError: errno.ENOTDIR,
    FileExistsError: errno.EEXIST,
}
_REDUCE = ('reduce the batch size (train_dataloader.batch_size, test_dataloader.batch_size), the '
           'image size (the pipeline\'s scale or crop_size; --shape of benchmark.py, get_flops.py '
           'and export.py) or the DataLoader workers (num_workers)')

_WORKER = re.compile(r'Caught (\w+) in DataLoader worker process \d+')
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] (.*?)(?:: '(.*?)')?(?: -> '(.*)')?")
_PIL_PATH = re.compile(r"cannot identify image file '(.*)'")
_SIZES = (re.compile(r'you tried to allocate (\d+) bytes'),
          re.compile(r'[Tt]ried to allocate ([\d.]+ ?[KMGTPE]?i?B)'),
          re.compile(r'Unable to allocate ([\d.]+ ?[KMGTPE]?i?B)'))
_KILLED_WORKER = re.compile(r'DataLoader worker \(pids? ?([\d, ]+)\) is killed by signal: Killed')


def size_text(n: int) -> str:
    """``n`` bytes as ``12.3 GiB`` (the unit torch's CUDA message uses)."""
    units = ('B', 'KiB', 'MiB', 'GiB', 'TiB')
    power = 0
    while n >= 1024 ** (power + 1) and power < len(units) - 1:
        power += 1
    return f'{n} B' if power == 0 else f'{n / 1024 ** power:.1f} {units[power]}'


def worker_error(error: BaseException) -> tuple[str, str] | None:
    """(type name, message) of the error a DataLoader worker raised, from the text of torch's
    re-raise in the main process; None for an error that is not such a re-raise."""
    text = str(error).strip()
    match = _WORKER.match(text)
    if not match:
        return None
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    after = lines[frames[-1] + 1:] if frames else lines[-1:]
    last = '\n'.join(after[next((i for i, line in enumerate(after) if not line.startswith(' ')),
                                 len(after) - 1):])  # the error's line(s), below its last frame
    name, sep, message = last.partition(': ')
    if not sep or ' ' in name:  # no ``Type: message``
        return match[1], last
    return name.rpartition('.')[2], message


def _original(error: BaseException) -> BaseException:
    """The worker's own error rebuilt (an OSError with its errno and file name) where ``error``
    is torch's re-raise of it, else ``error``."""
    found = worker_error(error)
    if found is None:
        return error
    name, message = found
    number = _ERRNO_TEXT.fullmatch(message)
    if isinstance(error, OSError) and number:
        rebuilt: BaseException = OSError(int(number[1]), number[2], number[3], None, number[4])
    else:
        try:
            rebuilt = type(error)(message)
        except Exception:  # noqa: BLE001  (a constructor of other arguments: keep the text)
            rebuilt = RuntimeError(message)
    return rebuilt


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it wraps (``__cause__``, else ``__context__`` unless suppressed by
    ``raise ... from None``), each a worker's own error where it is a re-raise of one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield _original(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


# --- the rules: each takes one exception of the chain and returns the line, or None ------------

def user_error(e: BaseException) -> str | None:
    return str(e) if isinstance(e, UserError) else None


def os_error(e: BaseException) -> str | None:
    """An OSError that names its file; a full disk or too many open files also without one."""
    if not isinstance(e, OSError):
        return None
    if is_disk_full(e):
        return (disk_full_message(e, e.filename) if e.filename
                else f'no space left on the device: {first_line(e)}') + ': free some space'
    path = e.filename
    if path is None:
        pil = _PIL_PATH.search(str(e))
        if pil and not pil[1].startswith('<'):  # PIL names an in-memory file <_io.BytesIO ...>
            return (f'{pil[1]}: not an image that can be read (a corrupt or truncated file): '
                    f'replace it or remove it from the dataset')
    number = e.errno if e.errno is not None else ERRNO_OF_CLASS.get(type(e))
    if path is None:  # an errno without a file: only the machine's limits are input
        if number in (errno.EMFILE, errno.ENFILE):
            words, fix = OS_ERRORS[number]
            return f'{words}: {fix}'
        if e.errno is None and number in OS_ERRORS and str(e):  # mmcv's "file does not exist"
            return f'{first_line(e)} ({OS_ERRORS[number][1]})'
        return None
    words, fix = OS_ERRORS.get(number, (e.strerror or first_line(e), ''))
    target = f' -> {e.filename2}' if e.filename2 else ''
    return f'{os.fsdecode(path)}{target}: {words}' + (f' ({fix})' if fix else '')


def memory_error(e: BaseException) -> str | None:
    """Memory exhaustion: Python's or numpy's MemoryError, torch's CPU allocator, CUDA out of
    memory, a DataLoader worker killed by the kernel's out-of-memory killer or short of
    shared memory."""
    text = str(e)
    gpu = type(e).__name__ == 'OutOfMemoryError' or 'CUDA out of memory' in text
    cpu = isinstance(e, MemoryError) or 'DefaultCPUAllocator' in text
    if gpu or cpu:
        asked = next((m[1] for m in (p.search(text) for p in _SIZES) if m), None)
        if asked and asked.isdigit():
            asked = size_text(int(asked))
        where = 'GPU' if gpu else 'CPU'
        size = f' (tried to allocate {asked})' if asked else ''
        return f'out of {where} memory{size}: {_REDUCE}'
    killed = _KILLED_WORKER.search(text)
    if killed:
        return (f'a DataLoader worker (pid {killed[1].strip()}) was killed, most likely by the '
                f'kernel for lack of memory: {_REDUCE}')
    if 'insufficient shared memory' in text:
        return ('the DataLoader workers ran out of shared memory (/dev/shm): enlarge it (e.g. '
                'docker run --shm-size=8g) or set num_workers=0')
    return None


def config_type_error(e: BaseException) -> str | None:
    """A config key a class does not take, found when mmengine builds it."""
    if isinstance(e, TypeError) and 'unexpected keyword argument' in str(e):
        return (f'config error: {first_line(e)} (check the keys of the config and of '
                f'--cfg-options)')
    return None


def registry_key_error(e: BaseException) -> str | None:
    """A ``type=`` no registry knows."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else ''
    if 'is not in the' in text and 'registry' in text:
        return f'config error: {text.strip(chr(34)).splitlines()[0]}'
    return None


RULES: tuple[Callable[[BaseException], str | None], ...] = (
    user_error, os_error, memory_error, config_type_error, registry_key_error)


def explain(error: BaseException) -> str | None:
    """The one line (without ``error:``) for an exception that is bad input or a limit of the
    machine, found in ``error`` or what it wraps (the outermost match wins); None for a
    defect."""
    for e in chain(error):
        for rule in RULES:
            line = rule(e)
            if line is not None:
                return line
    return None


def headline(error: BaseException) -> str:
    """``Type: first line of the message``, the worker's own where ``error`` re-raises one."""
    found = worker_error(error)
    name, message = found if found else (type(error).__name__, first_line(error))
    return f'{name}: {message.strip().splitlines()[0] if message.strip() else ""}'.rstrip(': ')


def versions() -> list[str]:
    found = []
    for name in VERSIONS_OF:
        try:
            found.append(f'{name} {importlib.metadata.version(name)}')
        except importlib.metadata.PackageNotFoundError:
            found.append(f'{name} not installed')
    return found


def crash_report_text(error: BaseException) -> str:
    """The traceback (causes included), the command line, the folder, the versions, the
    platform and the config of this run, where known."""
    config = noted_run().get('config')
    config_text = '(not loaded)'
    if config is not None:
        try:
            config_text = config.pretty_text
        except Exception as e:  # noqa: BLE001  (a config yapf cannot format: keep the raw dict)
            config_text = f'(pretty_text failed: {headline(e)})\n{config!r}'
    parts = [
        f'error: internal error: {headline(error)}',
        'command line: ' + ' '.join([sys.executable, *sys.argv]),
        f'folder: {os.getcwd()}',
        f'time: {time.strftime("%Y-%m-%d %H:%M:%S %z")}',
        f'python: {sys.version.split()[0]} ({platform.python_implementation()})',
        f'platform: {platform.platform()} {platform.machine()}',
        'versions: ' + ', '.join(versions()),
        f'RANK: {os.environ.get("RANK", "(not set)")}',
        '', 'traceback:', ''.join(traceback.format_exception(error)).rstrip(),
        '', 'config:', config_text,
    ]
    return '\n'.join(parts) + '\n'


def report_folders() -> list[str]:
    """Where a crash report goes, in order of preference: the run's work dir, once a tool knows
    it; ``work_dirs/crash_reports`` under the current folder; the temporary folder."""
    work_dir = noted_run().get('work_dir')
    return [*([work_dir] if work_dir else []), FALLBACK_REPORT_DIR,
            osp.join(tempfile.gettempdir(), 'crash_reports')]


def write_crash_report(error: BaseException) -> str | None:
    """Write the crash report of ``error`` atomically to the first folder of
    ``report_folders`` that takes it; its path, or None if none did."""
    text = crash_report_text(error)
    rank = os.environ.get('RANK', '0')
    name = (f'crash_{time.strftime("%Y%m%d_%H%M%S")}_{os.getpid()}'
            f'{"" if rank == "0" else f"_rank{rank}"}.txt')

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    for folder in report_folders():
        try:
            return write_atomic(osp.join(folder, name), write)
        except (OSError, UserError):  # DiskFullError is a UserError
            continue
    return None
