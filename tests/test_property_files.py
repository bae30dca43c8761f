"""Damaged files and file-system faults through the tools, drawn by hypothesis. The property:
exit status 0 with a valid result (painted images, a converted checkpoint, a metric), or exit
status 2 with exactly one ``error:`` line and no traceback; and no file that existed before the
run changed (only new files, under the outputs and the work dir).

The default run is seeded and small (file-system faults through infer.py and the converter);
``pytest -m long`` runs many more examples, byte flips and truncations of checkpoints, images,
label maps and COCO files included, through test.py too. Running as root, a folder cannot be made
unreadable, so the faults are the ones root meets too: a folder replaced by a file and the
reverse, a symlink loop, a dangling symlink, an empty file."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import (
    ATTO,
    DET_TAIL,
    FAMILIES,
    SEG_TAIL,
    assert_one_line_error,
    run_here,
    write_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.config import DictAction
from PIL import Image

from backbones.config import build_model, load_config
from backbones.safe_load import load_checkpoint_file

FAULTS = ('replaced_by_file', 'replaced_by_folder', 'symlink_loop', 'dangling_symlink',
          'empty_file')
SEG_OVERRIDES = [*ATTO.split(), *FAMILIES['upernet'][2].split()]
DET_OVERRIDES = [*ATTO.split(), *FAMILIES['mask_rcnn'][2].split()]
QUICK = settings(derandomize=True, max_examples=20, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _options(overrides: list[str]) -> dict:
    return {k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in overrides)}


def _model_file(folder: Path, cfg: str, overrides: list[str]) -> Path:
    """The config's whole model with random weights, as training saves it."""
    torch.manual_seed(0)
    path = folder / 'model.pth'
    torch.save({'state_dict': build_model(load_config(cfg, _options(overrides))).state_dict(),
                'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def originals(tmp_path_factory, tiny_data, atto_ckpt) -> dict[str, Path]:
    """What each example copies: the tiny data sets, configs on them (data roots to fill in),
    the atto backbone checkpoint and a whole UperNet-atto model file."""
    folder = tmp_path_factory.mktemp('originals')
    for name in ('seg', 'det'):
        (folder / name).mkdir()
    seg = write_config(folder / 'seg', FAMILIES['upernet'][0], SEG_TAIL, root='SEG_ROOT', iters=2)
    det = write_config(folder / 'det', FAMILIES['mask_rcnn'][0], DET_TAIL, root='DET_ROOT')
    images = folder / 'images'
    shutil.copytree(Path(tiny_data['seg']) / 'images' / 'validation', images)
    return dict(seg_data=Path(tiny_data['seg']), det_data=Path(tiny_data['det']),
                seg_cfg=Path(seg), det_cfg=Path(det), images=images, backbone=Path(atto_ckpt),
                seg_model=_model_file(folder / 'seg', seg, SEG_OVERRIDES))


# --- a run: copy, damage, run, check -----------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed) and what it is: a file's hash, a link's
    target, a folder."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if path.is_symlink():
                found[str(path)] = 'link ' + os.readlink(path)
            elif path.is_dir():
                found[str(path)] = 'folder'
            else:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def damage(path: Path, fault: str) -> None:
    """Apply a file-system fault to ``path`` (a file or a folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if fault == 'replaced_by_file':
        path.write_text('not what was here\n')
    elif fault == 'replaced_by_folder':
        path.mkdir()
        (path / 'note.txt').write_text('a folder where a file was\n')
    elif fault == 'symlink_loop':
        other = path.with_name(path.name + '.loop')
        other.symlink_to(path)
        path.symlink_to(other)
    elif fault == 'dangling_symlink':
        path.symlink_to(path.with_name(path.name + '.gone'))
    elif fault == 'empty_file':
        path.write_bytes(b'')


def corrupt(path: Path, truncate: float | None, flips: list[tuple[float, int]]) -> None:
    """Cut ``path`` to a fraction of its bytes, or xor bytes at fractions of its length."""
    data = bytearray(path.read_bytes())
    if truncate is not None:
        data = data[:int(len(data) * truncate)]
    for where, mask in flips:
        if data:
            data[min(int(len(data) * where), len(data) - 1)] ^= mask
    path.write_bytes(bytes(data))


def holds(example: Path, tool: str, args: list[str], outputs: list[Path],
          valid: Callable[[str, str], None]) -> None:
    """Run ``tool`` and check the property (see the module's docstring)."""
    before = snapshot(example)
    code, out, err = run_here(tool, *map(str, args))
    after = snapshot(example)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, (changed, err[-2000:])
    new = [p for p in after if p not in before]
    assert all(any(Path(p).is_relative_to(o) for o in outputs) for p in new), (new, outputs)
    if code == 0:
        valid(out, err)
    else:
        assert_one_line_error(code, err)


def _painted(out: str, _err: str) -> None:
    written = [line.split(' -> ')[1] for line in out.splitlines() if ' -> ' in line]
    assert written, out
    for png in written:
        with Image.open(png) as im:
            assert im.format == 'PNG' and im.size == (64, 64)


def _converted(out: str, _err: str) -> None:
    state = load_checkpoint_file(out.strip().splitlines()[-1])
    assert any(k.startswith('stages.') for k in state), list(state)[:5]


def _metric(name: str) -> Callable[[str, str], None]:
    def valid(out: str, err: str) -> None:
        assert name in out + err, (out + err)[-2000:]
    return valid


def example_folder(originals: dict[str, Path]) -> Path:
    return Path(tempfile.mkdtemp(dir=originals['images'].parent))


def infer_run(originals, damage_one: Callable[[dict[str, Path]], None]) -> None:
    """infer.py (UperNet-atto) on copies of two images, a model file and the config."""
    ex = example_folder(originals)
    paths = dict(config=ex / 'cfg.py', checkpoint=ex / 'model.pth', images=ex / 'images',
                 out=ex / 'out')
    shutil.copy(originals['seg_cfg'], paths['config'])
    shutil.copy(originals['seg_model'], paths['checkpoint'])
    shutil.copytree(originals['images'], paths['images'])
    paths['out'].mkdir()
    paths['image'] = sorted(paths['images'].iterdir())[0]
    damage_one(paths)
    holds(ex, 'infer.py', [paths['config'], paths['checkpoint'], paths['images'], '--out-dir',
                           paths['out'], '--cfg-options', *SEG_OVERRIDES],
          [paths['out']], _painted)
    shutil.rmtree(ex)


def convert_run(originals, damage_one: Callable[[dict[str, Path]], None]) -> None:
    """The converter on a copy of the atto backbone checkpoint."""
    ex = example_folder(originals)
    paths = dict(src=ex / 'atto.pth', out=ex / 'out')
    shutil.copy(originals['backbone'], paths['src'])
    paths['out'].mkdir()
    damage_one(paths)
    holds(ex, 'model_converters/convert_checkpoint.py', [paths['src'], paths['out'] / 'b.pth'],
          [paths['out']], _converted)
    shutil.rmtree(ex)


# --- file-system faults: the default run --------------------------------------------------------

INFER_TARGETS = ('config', 'checkpoint', 'images', 'image', 'out')
CONVERT_TARGETS = ('src', 'out')
file_faults = st.one_of(
    st.tuples(st.just('infer'), st.sampled_from(INFER_TARGETS), st.sampled_from(FAULTS)),
    st.tuples(st.just('convert'), st.sampled_from(CONVERT_TARGETS), st.sampled_from(FAULTS)))


def run_file_fault(originals, case: tuple[str, str, str]) -> None:
    tool, target, fault = case
    run = infer_run if tool == 'infer' else convert_run
    run(originals, lambda paths: damage(paths[target], fault))


@pytest.mark.slow
@QUICK
@given(case=file_faults)
def test_file_faults(originals, case):
    run_file_fault(originals, case)


@pytest.mark.long
@pytest.mark.slow
@LONG
@given(case=file_faults)
def test_file_faults_long(originals, case):
    run_file_fault(originals, case)


# --- damaged bytes: the long run ----------------------------------------------------------------

damaged_bytes = st.tuples(
    st.one_of(st.none(), st.floats(0, 1)),
    st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))


def seg_test_run(originals, target: str, truncate, flips) -> None:
    """test.py (UperNet-atto) on a copy of the tiny ADE20K set, an image or a label map of it
    damaged."""
    ex = example_folder(originals)
    root = ex / 'ade'
    shutil.copytree(originals['seg_data'], root)
    cfg = ex / 'cfg.py'
    cfg.write_text(originals['seg_cfg'].read_text().replace('SEG_ROOT', str(root)))
    folder = 'images' if target == 'image' else 'annotations'
    corrupt(sorted((root / folder / 'validation').iterdir())[0], truncate, flips)
    holds(ex, 'test.py', [cfg, originals['seg_model'], '--work-dir', ex / 'work',
                          '--cfg-options', *SEG_OVERRIDES], [ex / 'work'], _metric('mIoU'))
    shutil.rmtree(ex)


def det_test_run(originals, det_model: Path, truncate, flips) -> None:
    """test.py (Mask R-CNN-atto) on a copy of the tiny COCO set, its val JSON damaged."""
    ex = example_folder(originals)
    root = ex / 'coco'
    shutil.copytree(originals['det_data'], root)
    cfg = ex / 'cfg.py'
    cfg.write_text(originals['det_cfg'].read_text().replace('DET_ROOT', str(root)))
    corrupt(root / 'annotations' / 'instances_val2017.json', truncate, flips)
    holds(ex, 'test.py', [cfg, det_model, '--work-dir', ex / 'work', '--cfg-options',
                          *DET_OVERRIDES], [ex / 'work'], _metric('coco/bbox_mAP'))
    shutil.rmtree(ex)


@pytest.mark.long
@pytest.mark.slow
@LONG
@given(target=st.sampled_from(['infer_checkpoint', 'infer_image', 'convert_src']),
       damaged=damaged_bytes)
def test_damaged_bytes_infer_and_convert(originals, target, damaged):
    tool, _, name = target.partition('_')
    run = infer_run if tool == 'infer' else convert_run
    run(originals, lambda paths: corrupt(paths[name], *damaged))


@pytest.mark.long
@pytest.mark.slow
@settings(LONG, max_examples=40)
@given(target=st.sampled_from(['image', 'label_map']), damaged=damaged_bytes)
def test_damaged_bytes_seg_test(originals, target, damaged):
    seg_test_run(originals, target, *damaged)


@pytest.fixture(scope='module')
def det_model(originals) -> Path:
    """A whole Mask R-CNN-atto model file."""
    return _model_file(originals['det_cfg'].parent, str(originals['det_cfg']), DET_OVERRIDES)


@pytest.mark.long
@pytest.mark.slow
@settings(LONG, max_examples=30)
@given(damaged=damaged_bytes)
def test_damaged_coco_json(originals, det_model, damaged):
    det_test_run(originals, det_model, *damaged)
