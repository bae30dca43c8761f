"""The command-line tools, each run as a subprocess from the repository root on tiny inputs."""
from __future__ import annotations

import hashlib
import os
import re
import runpy
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, assert_one_line_error, run_here, run_tool_here
from PIL import Image

from backbones import InceptionNeXt

UPERNET_T = 'configs/upernet_inceptionnext_t_ade20k.py'
MASK_RCNN_T = 'configs/mask_rcnn/mask-rcnn_inceptionnext-t_fpn_1x_coco.py'
TINY_UPERNET = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
                'model.decode_head.in_channels': [40, 80, 160, 320],
                'model.auxiliary_head.in_channels': 160, 'model.decode_head.channels': 32,
                'model.auxiliary_head.channels': 16}


def cfg_options(options: dict) -> list[str]:
    def fmt(v):
        return '[' + ','.join(map(str, v)) + ']' if isinstance(v, list) else str(v)
    return ['--cfg-options', *(f'{k}={fmt(v)}' for k, v in options.items())]


def table(stdout: str) -> dict[str, tuple[float, str]]:
    """Rows of get_flops.py's table: name -> (params in M, FLOPs in G or '-')."""
    rows = re.findall(r'^(\w[\w +]*?)\s+([\d.]+)\s+([\d.]+|-)$', stdout, re.M)
    return {name: (float(p), f) for name, p, f in rows}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith('.tmp')]


# --- get_flops.py -----------------------------------------------------------------------------

@pytest.mark.slow
def test_get_flops_upernet_t_full_size():
    proc = run_tool_here('tools/analysis_tools/get_flops.py', UPERNET_T, '--shape', '64', '64')
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    assert 'input:  1x3x64x64' in proc.stdout
    assert rows['backbone'][0] == pytest.approx(23.98, abs=0.01)  # InceptionNeXt-T + out norms
    assert rows['model'][0] == pytest.approx(55.5, abs=0.2)  # inference model, no aux head
    assert rows['model + auxiliary head'][0] == pytest.approx(56, abs=0.5)  # the paper's 56 M
    assert 0 < float(rows['backbone'][1]) < float(rows['model'][1])
    # FLOPs grow with the pixel count: the paper's 933 G at 512x2048 is 256 times 64x64
    assert float(rows['model'][1]) * 256 == pytest.approx(933, rel=0.03)


@pytest.mark.slow
def test_get_flops_mask_rcnn_atto_pads_to_divisor():
    proc = run_tool_here('tools/analysis_tools/get_flops.py', MASK_RCNN_T, '--shape', '60', '90',
                         *cfg_options({'model.backbone.arch': 'atto',
                                       'model.neck.in_channels': [40, 80, 160, 320],
                                       'model.test_cfg.rpn.max_per_img': 50}))
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    assert 'input:  1x3x64x96 (padded from 60x90)' in proc.stdout
    assert rows['backbone'][0] == pytest.approx(2.89, abs=0.01)
    assert 15 < rows['model'][0] < 30  # FPN + RPN + RoI heads (~20 M) around the atto backbone
    assert 'model + auxiliary head' not in rows


# --- convert_checkpoint.py --------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_convert_timm_checkpoint(tmp_path, timm_atto, suffix):
    src = tmp_path / f'atto{suffix}'
    if suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(timm_atto.state_dict(), str(src))
    else:
        torch.save(timm_atto.state_dict(), src)
    dst = tmp_path / 'out' / 'atto_backbone.pth'
    proc = run_tool_here('tools/model_converters/convert_checkpoint.py', src, dst)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(dst)
    assert 'InceptionNeXt-atto' in proc.stdout
    state = torch.load(dst, map_location='cpu', weights_only=True)
    assert state and not [k for k in state if k.startswith('head.')]
    InceptionNeXt('atto', out_norm_cfg=None).load_state_dict(state, strict=True)
    ref = timm_atto.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in state.items())
    assert no_temp_files(dst.parent)


@pytest.mark.parametrize('case', ['missing', 'not-a-checkpoint'])
def test_convert_bad_input_is_one_line_error(tmp_path, case):
    src = tmp_path / 'in.pth'
    if case == 'not-a-checkpoint':
        src.write_text('not a checkpoint\n')
    dst = tmp_path / 'out.pth'
    proc = run_tool_here('tools/model_converters/convert_checkpoint.py', src, dst)
    assert_one_line_error(proc.returncode, proc.stderr, str(src))
    assert not dst.exists() and no_temp_files(tmp_path)


def test_convert_release_drops_optimizer_and_names_by_hash(tmp_path, timm_atto):
    backbone = {f'backbone.{k}': v for k, v in timm_atto.state_dict().items()
                if not k.startswith('head.')}
    state = {**backbone, 'decode_head.conv_seg.weight': torch.randn(150, 32, 1, 1),
             'decode_head.conv_seg.bias': torch.zeros(150)}
    src = tmp_path / 'iter_160000.pth'
    torch.save({'meta': {'iter': 160000, 'cfg': 'data_root = "/secret"', 'seed': 0,
                         'dataset_meta': {'classes': ('wall', 'building')}},
                'state_dict': state, 'optimizer': {'state': {0: torch.zeros(3)}},
                'message_hub': {'log_scalars': {}}, 'param_schedulers': []}, src)
    dst = tmp_path / 'release' / 'upernet_atto.pth'
    proc = run_tool_here('tools/model_converters/convert_checkpoint.py', src, dst)
    assert proc.returncode == 0, proc.stderr
    final = Path(proc.stdout.strip().splitlines()[-1])
    m = re.fullmatch(r'upernet_atto-([0-9a-f]{8})\.pth', final.name)
    assert m and final.parent == dst.parent and not dst.exists()
    assert hashlib.sha256(final.read_bytes()).hexdigest()[:8] == m.group(1)
    out = torch.load(final, map_location='cpu', weights_only=False)
    assert set(out) == {'state_dict', 'meta'}
    assert out['meta'] == {'iter': 160000, 'dataset_meta': {'classes': ('wall', 'building')}}
    assert out['state_dict'].keys() == state.keys()
    assert all(torch.equal(out['state_dict'][k], v) for k, v in state.items())
    assert no_temp_files(dst.parent)
    again = run_tool_here('tools/model_converters/convert_checkpoint.py', src,
                          tmp_path / 'again' / 'upernet_atto.pth')
    assert Path(again.stdout.strip().splitlines()[-1]).name == final.name  # reproducible name


# --- infer.py ---------------------------------------------------------------------------------

def random_checkpoint(folder: Path, config: str, options: dict) -> Path:
    """The config's model with random weights, saved as mmengine saves checkpoints."""
    from backbones.config import build_model, load_config
    torch.manual_seed(0)
    model = build_model(load_config(str(ROOT / config), options))
    path = folder / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def seg_checkpoint(tmp_path_factory) -> Path:
    """A tiny UperNet-atto with random weights."""
    return random_checkpoint(tmp_path_factory.mktemp('seg'), UPERNET_T, TINY_UPERNET)


@pytest.mark.slow
def test_infer_seg_deploy_writes_pngs(tmp_path, seg_checkpoint):
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a.jpg', 'b.png'):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / name)
    out_dir = tmp_path / 'vis'
    proc = run_tool_here('tools/infer.py', UPERNET_T, seg_checkpoint, images, '--out-dir', out_dir,
                         '--deploy', *cfg_options(TINY_UPERNET))
    assert proc.returncode == 0, proc.stderr
    for name in ('a', 'b'):
        png = out_dir / f'{name}.png'
        assert f'{images / name}' in proc.stdout and f'-> {png}' in proc.stdout
        with Image.open(png) as im:
            assert im.format == 'PNG' and im.size == (64, 64)


@pytest.mark.slow
def test_infer_det_writes_pngs(tmp_path):
    options = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
               'model.neck.in_channels': [40, 80, 160, 320],
               'model.test_cfg.rcnn.score_thr': 0.0}  # random weights: draw whatever it finds
    checkpoint = random_checkpoint(tmp_path, MASK_RCNN_T, options)
    image = tmp_path / 'street.jpg'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    proc = run_tool_here('tools/infer.py', MASK_RCNN_T, checkpoint, image, '--out-dir',
                         tmp_path / 'vis', '--score-thr', '0', *cfg_options(options))
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / 'vis' / 'street.png'
    assert f'-> {png}' in proc.stdout
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size == (80, 48)
        drawn = np.asarray(im.convert('RGB'))
    assert (drawn != np.asarray(Image.open(image).convert('RGB'))).any()  # boxes/masks drawn


@pytest.mark.parametrize('missing', ['image', 'checkpoint', 'config'])
def test_infer_missing_input_is_one_line_error(tmp_path, seg_checkpoint, missing):
    """In-process (the CLI itself runs above): ``main()`` exits 2 with one ``error:`` line."""
    image = tmp_path / 'a.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = {'config': UPERNET_T, 'checkpoint': seg_checkpoint, 'image': image}
    args[missing] = tmp_path / f'nope_{missing}'
    code, _, err = run_here('infer.py', args['config'], args['checkpoint'], args['image'],
                            '--out-dir', tmp_path / 'vis', *cfg_options(TINY_UPERNET))
    assert_one_line_error(code, err, f'nope_{missing}')
    assert not (tmp_path / 'vis').exists()


# --- print_config.py and the shell launchers --------------------------------------------------

def test_print_config():
    proc = run_tool_here('tools/analysis_tools/print_config.py', UPERNET_T, '--cfg-options',
                         'model.backbone.arch=small')
    assert proc.returncode == 0, proc.stderr
    assert "type='InceptionNeXt'" in proc.stdout and "arch='small'" in proc.stdout
    assert "type='UPerHead'" in proc.stdout


def test_print_config_bad_key():
    code, _, err = run_here('analysis_tools/print_config.py', UPERNET_T, '--cfg-options',
                            'model.backbon.arch=atto')
    assert_one_line_error(code, err, 'model.backbon')



def test_demo_config_changes_lists_every_difference(tmp_path):
    config_changes = runpy.run_path(str(ROOT / 'tools' / 'demo.py'))['config_changes']
    (tmp_path / 'base.py').write_text("a = dict(b=1, c='unset')\nd = [dict(e=2)]\n")
    (tmp_path / 'demo.py').write_text("_base_ = ['base.py']\na = dict(b=3)\nd = [dict(e=2)]\n"
                                      "del_c = 1\n")
    assert config_changes(str(tmp_path / 'base.py'), str(tmp_path / 'demo.py')) == [
        'a.b: 1 -> 3', 'del_c: unset -> 1']
    (tmp_path / 'demo.py').write_text("a = dict(b=1)\nd = [dict(e=2)]\n")  # no _base_: c missing
    assert config_changes(str(tmp_path / 'base.py'), str(tmp_path / 'demo.py')) == [
        "a.c: 'unset' -> unset"]
    (tmp_path / 'base.py').write_text('f = None\n')
    (tmp_path / 'demo.py').write_text("_base_ = ['base.py']\nf = dict(_delete_=True, g=1)\n")
    assert config_changes(str(tmp_path / 'base.py'), str(tmp_path / 'demo.py')) == [
        'f: None -> dict', 'f.g: unset -> 1']


@pytest.fixture()
def fake_bin(tmp_path) -> Path:
    """A ``python`` and an ``srun`` that print their arguments, one per line."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    for name in ('python', 'srun'):
        (folder / name).write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$(basename "$0")" '
                                   '"$@"\n')
        (folder / name).chmod(0o755)
    return folder


def run_script(script: str, *args: str, env: dict) -> list[str]:
    proc = subprocess.run(['bash', f'tools/{script}', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_launch_scripts(fake_bin):
    for script in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh'):
        assert os.access(ROOT / 'tools' / script, os.X_OK), script
    env = {'PYTHON': str(fake_bin / 'python'), 'PORT': '29999', 'NNODES': '2'}
    argv = run_script('dist_train.sh', UPERNET_T, '4', '--amp', env=env)
    assert argv[:3] == ['python', '-m', 'torch.distributed.run']
    assert {'--nnodes=2', '--nproc_per_node=4', '--master_port=29999'} <= set(argv)
    assert argv[-5:] == ['tools/train.py', UPERNET_T, '--launcher', 'pytorch', '--amp']
    argv = run_script('dist_test.sh', UPERNET_T, 'ckpt.pth', '2', '--deploy', env=env)
    assert argv[-6:] == ['tools/test.py', UPERNET_T, 'ckpt.pth', '--launcher', 'pytorch',
                         '--deploy']
    env = {'PATH': f'{fake_bin}:{os.environ["PATH"]}', 'PYTHON': 'python', 'GPUS': '16',
           'SRUN_ARGS': '--quotatype=auto --time=1:00:00'}
    argv = run_script('slurm_train.sh', 'part', 'job', UPERNET_T, 'work_dirs/x', '--amp',
                      env=env)
    assert argv[0] == 'srun' and {'-p', 'part', '--job-name=job', '--ntasks=16',
                                  '--quotatype=auto', '--time=1:00:00'} <= set(argv)
    assert argv[-6:] == [UPERNET_T, '--work-dir', 'work_dirs/x', '--launcher', 'slurm',
                         '--amp']
    assert '--gres=gpu:8' in argv
    argv = run_script('slurm_train.sh', 'part', 'job', UPERNET_T, '--amp', env=env)
    assert '--work-dir' not in argv and argv[-3:] == ['--launcher', 'slurm', '--amp']
    argv = run_script('slurm_train.sh', 'part', 'job', UPERNET_T, env={**env, 'GRES': ''})
    assert not any(a.startswith('--gres') for a in argv)  # CPU-only nodes
    usage = subprocess.run(['bash', 'tools/dist_train.sh'], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
    assert usage.returncode == 2 and 'usage:' in usage.stderr


def test_setup_stops_before_filling_the_disk(tmp_path):
    """A new .venv on a disk with 1 GB free: one line, exit 1, nothing created."""
    (tmp_path / 'scripts').mkdir()
    (tmp_path / 'scripts' / 'setup_env.sh').write_text(
        (ROOT / 'scripts' / 'setup_env.sh').read_text())
    (tmp_path / 'setup.cfg').write_text('')
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'df').write_text('#!/usr/bin/env bash\necho "Filesystem 1024-blocks Used Available '
                             'Capacity Mounted on"\necho "/dev/x 9999999 8951424 1048576 90% /"\n')
    (fake / 'df').chmod(0o755)
    proc = subprocess.run(['bash', str(tmp_path / 'scripts' / 'setup_env.sh')], capture_output=True,
                          text=True, timeout=30,
                          env={**os.environ, 'PATH': f'{fake}:{os.environ["PATH"]}'})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f'[setup] error: 1 GB free on the disk of {tmp_path}; a new .venv needs about 8 GB: '
        'free some space and run make setup again')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bin', 'scripts', 'setup.cfg']
