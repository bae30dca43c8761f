"""The backbone in someone else's project: configs written exactly as the README's snippets, run
from a folder outside this repository by MMSegmentation's and MMDetection's own tools/train.py
and tools/test.py (the copies their packages ship under ``.mim/tools``), on torch >= 2.6 too,
whose default refuses mmengine's own checkpoints without the snippets' ``SafeRunHook`` line."""
from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DET_TAIL, SEG_TAIL, create_timm_inception_next, write_readme_config

pytestmark = pytest.mark.slow

# what the project's run config adds to the README snippet: the demo data and a short schedule
RUN_TAIL = {
    'mmseg': SEG_TAIL,
    'mmdet': DET_TAIL + 'model = dict(test_cfg=dict(rcnn=dict(score_thr=0.0)))\n'
             'train_cfg = dict(max_epochs=1, val_interval=10)  # test.py evaluates\n',
}
FIRST_CHECKPOINT = {'mmseg': 'iter_2.pth', 'mmdet': 'epoch_1.pth'}
LONGER = {'mmseg': 'train_cfg.max_iters=3', 'mmdet': 'train_cfg.max_epochs=2'}
RESUMED = {'mmseg': 'iter_3.pth', 'mmdet': 'epoch_2.pth'}
METRIC = {'mmseg': 'mIoU', 'mmdet': 'coco/bbox_mAP'}


def upstream_tool(library: str, name: str) -> str:
    path = Path(importlib.import_module(library).__file__).parent / '.mim' / 'tools' / name
    assert path.is_file(), f'{library} ships no {path}'
    return str(path)


def make_project(tmp_path: Path, library: str, data_root: str) -> Path:
    """A user's project folder: the README snippet, a run config that inherits it with the demo
    data, and the ImageNet checkpoint at the path the snippet names (timm's tiny, random)."""
    project = tmp_path / 'project'
    (project / 'checkpoints').mkdir(parents=True)
    write_readme_config(project, library)
    torch.save(create_timm_inception_next('tiny').state_dict(),
               project / 'checkpoints' / 'inceptionnext_tiny.pth')
    (project / 'run.py').write_text(f"_base_ = ['./{library}_project.py']\n"
                                    + RUN_TAIL[library].format(root=data_root, iters=2))
    return project


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.parametrize('library', ['mmseg', 'mmdet'])
def test_readme_snippet_trains_tests_and_resumes_with_the_upstream_tools(tmp_path, tiny_data,
                                                                         library):
    data = tiny_data['seg' if library == 'mmseg' else 'det']
    project = make_project(tmp_path, library, data)
    assert not str(project).startswith(str(Path(__file__).resolve().parents[1]))
    train, test = upstream_tool(library, 'train.py'), upstream_tool(library, 'test.py')
    trained = run(project, train, 'run.py', '--work-dir', 'work')
    log = trained.stdout + trained.stderr
    assert 'Load pretrained' in log or 'loaded' in log.lower(), log[-3000:]
    first = project / 'work' / FIRST_CHECKPOINT[library]
    assert first.is_file()
    tested = run(project, test, 'run.py', str(first), '--work-dir', 'test_work')
    assert METRIC[library] in tested.stdout + tested.stderr
    resumed = run(project, train, 'run.py', '--work-dir', 'work', '--resume',
                  '--cfg-options', LONGER[library])
    assert f'Load checkpoint from {first}' in resumed.stdout + resumed.stderr or \
        'resumed' in (resumed.stdout + resumed.stderr).lower()
    assert (project / 'work' / RESUMED[library]).is_file()
    state = torch.load(project / 'work' / RESUMED[library], map_location='cpu',
                       weights_only=False)
    assert state['meta']['iter'] == (3 if library == 'mmseg' else 4)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['Ctrl-C', 'SIGTERM'])
def test_a_signal_under_the_upstream_train_py_ends_with_one_line(tmp_path, tiny_data, signum):
    """With the snippet's SafeRunHook, mmseg's own train.py stops after the iteration in
    progress, saves it, prints where and how to resume, and exits 130/143 without a traceback
    (the stop is a SystemExit the hook raises after printing its line)."""
    project = make_project(tmp_path, 'mmseg', tiny_data['seg'])
    proc = subprocess.Popen(
        [sys.executable, upstream_tool('mmseg', 'train.py'), 'run.py', '--work-dir', 'work',
         '--cfg-options', 'train_cfg.max_iters=1000', 'default_hooks.checkpoint.interval=1000'],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r'Iter\(train\) \[\s*2/1000\]', line):
            break
    os.killpg(proc.pid, signum)  # as a terminal's Ctrl-C or a scheduler's kill reaches it
    log = ''.join(lines) + proc.communicate(timeout=300)[0]
    stopped = [x for x in log.splitlines() if x.startswith('stopped by')]
    assert proc.returncode == 128 + signum and 'Traceback' not in log, log[-4000:]
    assert len(stopped) == 1, log[-4000:]
    match = re.fullmatch(rf'stopped by {signal.Signals(signum).name} after iteration (\d+); '
                         rf'saved (.+): continue with --resume', stopped[0])
    assert match, stopped[0]
    saved = project / match[2]
    assert saved.name == f'iter_{match[1]}.pth'
    state = torch.load(saved, map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == int(match[1])
