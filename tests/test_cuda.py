"""What must hold on a GPU: parity with timm, with_cp, fuse, channels_last, AMP fp16 training of
UperNet and Mask R-CNN, two-process nccl training. Every test skips without CUDA.

    pytest tests/test_cuda.py                  # on CUDA (scripts/gpu_check.sh runs this)
    pytest tests/test_cuda.py --device cpu     # the same tests on the CPU, to check the tests

TF32 is switched off so that float32 results can be compared with tight tolerances.
"""
from __future__ import annotations

import json

import pytest
import torch
from helpers import (
    ATTO,
    FAMILIES,
    SEG_TAIL,
    create_timm_inception_next,
    last_metrics,
    randomize_bn_and_layer_scale_,
    run_tool,
    timm_stage_outputs,
    write_config,
)

from backbones import InceptionNeXt
from backbones.deploy.fuse import fuse_inception_next
from backbones.runtime.layout import channels_last_inside


@pytest.fixture(scope='module')
def device(request) -> torch.device:
    name = request.config.getoption('--device')
    if name.startswith('cuda') and not torch.cuda.is_available():
        pytest.skip('no CUDA device here (--device cpu runs these tests on the CPU)')
    return torch.device(name)


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / a.float().norm()).item()


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('arch', ['atto', 'tiny'])
def test_parity_with_timm(device, arch, channels_last):
    torch.manual_seed(1)
    ref = randomize_bn_and_layer_scale_(create_timm_inception_next(arch), seed=1).eval().to(device)
    model = InceptionNeXt(arch, out_norm_cfg=None).eval()
    if channels_last:
        channels_last_inside(model)
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and all(k.startswith('head.') for k in unexpected)
    model.to(device)
    x = torch.randn(2, 3, 64, 96, device=device)
    with torch.no_grad():
        expected = timm_stage_outputs(ref, x)
        outs = model(x)
    for a, b in zip(expected, outs):
        assert b.device.type == device.type and b.is_contiguous()  # NCHW in, NCHW out
        assert _rel(a, b) < 1e-5


def test_with_cp_same_outputs_and_gradients(device):
    torch.manual_seed(0)
    plain = InceptionNeXt('atto', layer_scale_init_value=1.0).train().to(device)
    ckpt = InceptionNeXt('atto', layer_scale_init_value=1.0, with_cp=True).train().to(device)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, device=device)
    out_plain, out_cp = plain(x), ckpt(x)
    sum(o.square().mean() for o in out_plain).backward()
    sum(o.square().mean() for o in out_cp).backward()
    for a, b in zip(out_plain, out_cp):
        assert _rel(a.detach(), b.detach()) < 1e-5
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert _rel(p.grad, q.grad) < 1e-4, name


@pytest.mark.parametrize('channels_last', [False, True])
def test_fuse_matches_unfused(device, channels_last):
    torch.manual_seed(0)
    model = randomize_bn_and_layer_scale_(InceptionNeXt('tiny')).eval().to(device)
    x = torch.randn(2, 3, 64, 96, device=device)
    with torch.no_grad():
        ref = model(x)
        fused = fuse_inception_next(model)
        if channels_last:  # model and input
            fused = fused.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        out = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for a, b in zip(ref, out):
        assert _rel(a, b) < 1e-5


def test_channels_last_input_gives_channels_last_maps(device):
    torch.manual_seed(0)
    model = randomize_bn_and_layer_scale_(InceptionNeXt('atto')).eval().to(device)
    channels_last_inside(model)
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        outs = model(x)
        outs_cl = model(x.contiguous(memory_format=torch.channels_last))
    for out, out_cl in zip(outs, outs_cl):
        assert out.is_contiguous() and out_cl.is_contiguous(memory_format=torch.channels_last)
        assert _rel(out, out_cl) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize('family', ['upernet', 'mask_rcnn'])
def test_amp_training_steps(device, tmp_path, tiny_data, family):
    """tools/train.py --amp: fp16 autocast with a dynamic loss scale on CUDA (bf16 on the CPU),
    three iterations with finite losses and a checkpoint."""
    base, tail, overrides = FAMILIES[family]
    cfg = write_config(tmp_path, base, tail, root=tiny_data['seg' if tail is SEG_TAIL else 'det'],
                       iters=3)
    work_dir = tmp_path / 'work'
    result = run_tool('tools/train.py', cfg, '--amp', '--work-dir', str(work_dir),
                      '--cfg-options', *ATTO.split(), *overrides.split(),
                      env={'CUDA_VISIBLE_DEVICES': '0' if device.type == 'cuda' else ''})
    assert result.returncode == 0, result.stderr[-3000:]
    wrapper = 'AmpOptimWrapper' if device.type == 'cuda' else 'BF16AmpOptimWrapper'
    assert f"type='{wrapper}'" in (work_dir / 'cfg.py').read_text()  # the Runner's dump
    train_logs, _ = last_metrics(work_dir)
    losses = [x['loss'] for x in train_logs if 'loss' in x]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert list(work_dir.glob('*.pth')), 'no checkpoint saved'


@pytest.mark.slow
def test_two_process_nccl_training(device, tmp_path, tiny_data):
    """Two GPUs, nccl, SyncBN in the heads (as the configs ask): each rank trains on other images
    and both end with the same weights (the backbone's BatchNorm statistics stay per rank)."""
    if device.type != 'cuda' or torch.cuda.device_count() < 2:
        pytest.skip(f'needs 2 CUDA devices; this machine has {torch.cuda.device_count()}')
    from test_distributed import free_port, probe_config
    cfg, args, env = probe_config(tmp_path, tiny_data)
    result = run_tool('-m', 'torch.distributed.run', '--nproc_per_node=2',
                      f'--master_port={free_port()}', 'tools/train.py', cfg, '--launcher',
                      'pytorch', *args, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    work_dir = tmp_path / 'work'
    samples = [json.loads((work_dir / f'rank{r}_samples.json').read_text()) for r in (0, 1)]
    assert len(samples[0]) == len(samples[1]) == 3
    assert all(not set(a) & set(b) for a, b in zip(*samples))
    states = [torch.load(work_dir / f'rank{r}_state.pth', map_location='cpu') for r in (0, 1)]
    for key, value in states[0].items():
        if not key.startswith('backbone.') or 'running_' not in key and 'num_batches' not in key:
            assert torch.equal(value, states[1][key]), key
