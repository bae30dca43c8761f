"""The InceptionNeXt backbone: shapes, parity with timm, options, freezing, checkpointing."""
from __future__ import annotations

import pytest
import torch
from helpers import create_timm_inception_next, timm_stage_outputs
from helpers import randomize_bn_and_layer_scale_ as randomize_

from backbones import ARCH_SETTINGS, ConfigError, InceptionNeXt
from backbones.deploy.fuse import fuse_inception_next
from backbones.runtime.hooks import ChannelsLastHook
from backbones.runtime.layout import channels_last_inside

# (arch, params without the head and the output norms, from the paper's table)
PARAMS_M = {'atto': 2.89, 'tiny': 23.97, 'small': 45.29, 'base': 80.44}


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_shapes_strides_channels_and_params(arch):
    model = InceptionNeXt(arch, out_norm_cfg=None).eval()
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(PARAMS_M[arch], abs=0.01)
    dims = ARCH_SETTINGS[arch]['dims']
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 67, 99))
    expected = [(67 // 4, 99 // 4), (67 // 8, 99 // 8), (67 // 16, 99 // 16),
                (67 // 32, 99 // 32)]  # odd input size: floor division at every stride
    assert [o.shape[1] for o in outs] == list(dims)
    assert [tuple(o.shape[2:]) for o in outs] == expected
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize('out_indices,expected', [((3,), (3,)), ((-1, 0), (0, 3)),
                                                  ((1, 2), (1, 2)), (2, (2,))])
def test_out_indices(out_indices, expected):
    model = InceptionNeXt('atto', out_indices=out_indices).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert len(outs) == len(expected)
    for o, i in zip(outs, expected):
        side = 64 // 4 // 2 ** i
        assert o.shape == (2, ARCH_SETTINGS['atto']['dims'][i], side, side)
    assert {f'norm{i}' for i in expected} <= {n for n, _ in model.named_children()}


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_parity_with_timm(arch, channels_last):
    """Bit-identical to timm in NCHW; within float rounding channels-last inside (what the
    tools run on CPUs)."""
    torch.manual_seed(1)
    ref = randomize_(create_timm_inception_next(arch), seed=1).eval()
    model = InceptionNeXt(arch, out_norm_cfg=None).eval()
    if channels_last:
        channels_last_inside(model)
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and all(k.startswith('head.') for k in unexpected)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = timm_stage_outputs(ref, x)
        outs = model(x)
    tol = 0 if channels_last is False else 1e-5
    for a, b in zip(expected, outs):
        assert b.is_contiguous()
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


def test_identity_branch_comes_first():
    """Channels [0, C - 3gc) pass through the mixer unchanged (the official branch order)."""
    model = InceptionNeXt('atto')
    mixer = model.stages[0].blocks[0].token_mixer
    x = torch.randn(1, 40, 8, 8)
    n_id = mixer.split_indexes[0]
    assert n_id == 40 - 3 * 10
    torch.testing.assert_close(mixer(x)[:, :n_id], x[:, :n_id])
    assert not torch.allclose(mixer(x)[:, n_id:], x[:, n_id:])


def test_custom_arch_dict():
    arch = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), band_kernel_size=7,
                branch_ratio=0.25, mlp_ratios=(2, 2, 2, 2))
    model = InceptionNeXt(arch).eval()
    assert model.stages[2].blocks[0].token_mixer.dwconv_w.kernel_size == (1, 7)
    assert model.stages[3].blocks[0].mlp.fc1.out_channels == 256
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [16, 32, 64, 128]


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "unknown arch 'huge'"),
    (dict(arch=dict(depths=(1, 1, 1))), 'lacks'),
    (dict(arch=dict(depths=(1, 1, 1), dims=(8, 8, 8, 8))), 'depths must be 4'),
    (dict(arch=dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), kernel=3)), 'unknown keys'),
    (dict(out_indices=(4,)), 'out_indices'),
    (dict(out_indices=(0, -4)), 'distinct'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(drop_path_rate=1.5), 'drop_path_rate'),
    (dict(init_cfg=dict(checkpoint='x.pth')), 'init_cfg must be None or like'),
    (dict(init_cfg=[dict(type='Pretrained')]), 'init_cfg must be None or like'),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InceptionNeXt(**{'arch': 'atto', **kwargs})


def test_drop_path_rises_linearly():
    model = InceptionNeXt('atto', drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks
             if hasattr(b.drop_path, 'drop_prob')]
    assert len(rates) == sum(ARCH_SETTINGS['atto']['depths']) - 1  # the first block has rate 0
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.3)


def test_out_norms_configurable():
    assert type(InceptionNeXt('atto').norm0).__name__ == 'LayerNorm2d'
    assert isinstance(InceptionNeXt('atto', out_norm_cfg=None).norm0, torch.nn.Identity)
    bn = InceptionNeXt('atto', out_norm_cfg=dict(type='BN')).norm3
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == 320


@pytest.mark.parametrize('frozen_stages', [0, 2, 4])
def test_frozen_stages_survive_train(frozen_stages):
    model = InceptionNeXt('atto', frozen_stages=frozen_stages)
    model.train()
    frozen = [model.stem, *model.stages[:frozen_stages]]
    trainable = list(model.stages[frozen_stages:])
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(p.requires_grad for m in trainable for p in m.parameters())
    assert all(m.training for t in trainable for m in t.modules())
    before = model.stem[1].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.stem[1].running_mean, before)


def test_norm_eval_keeps_bn_statistics():
    model = InceptionNeXt('atto', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 64, 64)).__len__()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert all(p.requires_grad for p in model.parameters())  # still trained, only stats frozen


def test_with_cp_matches_plain_path(monkeypatch):
    torch.manual_seed(0)
    plain = InceptionNeXt('atto', layer_scale_init_value=1.0).train()
    ckpt = InceptionNeXt('atto', layer_scale_init_value=1.0, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint',
                        lambda fn, *a, **k: calls.append(fn) or checkpoint(fn, *a, **k))
    x = torch.randn(2, 3, 64, 64)
    out_plain = plain(x)
    assert calls == []
    out_cp = ckpt(x)
    assert calls == [block for stage in ckpt.stages for block in stage.blocks]  # every block
    sum(o.square().mean() for o in out_plain).backward()
    sum(o.square().mean() for o in out_cp).backward()
    for a, b in zip(out_plain, out_cp):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('out_norm_cfg', [dict(type='LN2d', eps=1e-6), dict(type='BN'), None])
@pytest.mark.parametrize('mode', ['train', 'eval', 'deploy'])
def test_outputs_keep_the_input_memory_format(out_norm_cfg, mode, channels_last):
    """Heads index raw NCHW memory (mmcv's RoIAlign silently reads a channels-last view wrong),
    so an NCHW input must give contiguous NCHW maps in every mode and internal layout."""
    model = InceptionNeXt('atto', out_norm_cfg=out_norm_cfg)
    if channels_last:
        channels_last_inside(model)
    model.train(mode == 'train')
    if mode == 'deploy':
        fuse_inception_next(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        outs_cl = model(x.contiguous(memory_format=torch.channels_last))
    for out, out_cl in zip(outs, outs_cl):
        assert out.is_contiguous()
        assert out_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out_cl, out, atol=1e-4, rtol=1e-4)


def test_stages_and_blocks_are_ordinary_modules():
    """``stages[i](x)`` runs a stage; forward hooks on stages and blocks fire (Grad-CAM and
    feature tools hook them) and see what the backbone computes."""
    torch.manual_seed(0)
    model = InceptionNeXt('atto', out_norm_cfg=None).eval()
    seen: dict[str, torch.Tensor] = {}
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda m, a, out, i=i: seen.update({f'stage{i}': out}))
    model.stages[2].blocks[1].register_forward_hook(
        lambda m, a, out: seen.update({'block': out}))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        by_hand = model.stages[0](model.stem(x))
    assert sorted(seen) == ['block', 'stage0', 'stage1', 'stage2', 'stage3']
    for i in range(4):
        torch.testing.assert_close(seen[f'stage{i}'], outs[i], rtol=0, atol=0)
    torch.testing.assert_close(by_hand, outs[0], rtol=0, atol=0)
    assert seen['block'].shape == (1, 160, 4, 4)


def test_channels_last_hook_runs_the_backbone_channels_last_and_restores_it():
    """The hook the tools add on CPUs: stage inputs are channels-last during the run, the heads
    still get contiguous NCHW maps, and after the run the backbone is plain again."""
    model = torch.nn.Module()
    model.backbone = InceptionNeXt('atto').eval()
    runner = type('Runner', (), {'model': model})()
    layouts = []
    model.backbone.stages[1].register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous()))
    x = torch.randn(1, 3, 64, 64)
    hook = ChannelsLastHook()
    hook.before_run(runner)
    with torch.no_grad():
        outs = model.backbone(x)
    hook.after_run(runner)
    with torch.no_grad():
        model.backbone(x)
    assert layouts == [False, True]  # channels-last inside during the run, NCHW after it
    assert all(o.is_contiguous() for o in outs)
    ChannelsLastHook(devices=('cuda',)).before_run(runner)  # not on this device: nothing
    with torch.no_grad():
        model.backbone(x)
    assert layouts[-1] is True
