"""Pretrained loading: every checkpoint format loads verified, every bad file fails clearly."""
from __future__ import annotations

import pytest
import torch
from mmengine.logging import MMLogger
from safetensors.torch import save_file

from backbones import CheckpointError, InceptionNeXt


def _build(checkpoint: str, arch: str = 'atto', **kwargs) -> InceptionNeXt:
    model = InceptionNeXt(arch, init_cfg=dict(type='Pretrained', checkpoint=checkpoint, **kwargs))
    model.init_weights()
    return model


def _assert_loaded(model: InceptionNeXt, reference: torch.nn.Module) -> None:
    ref = reference.state_dict()
    own = model.state_dict()
    body = [k for k in ref if not k.startswith('head.')]
    assert all(torch.equal(own[k], ref[k]) for k in body)


def _wrap(state: dict, kind: str) -> dict:
    return {
        'flat': state,
        'state_dict': {'state_dict': state, 'meta': {'epoch': 3}},
        'model': {'model': state, 'optimizer': {}, 'epoch': 300},
        'module': {'model': {f'module.{k}': v for k, v in state.items()}},
        'mmdet': {'state_dict': {**{f'backbone.{k}': v for k, v in state.items()
                                    if not k.startswith('head.')},
                                 'neck.lateral_convs.0.conv.weight': torch.zeros(1)},
                  'meta': {'mmengine_version': '0.10.7'}},
        'timm_features': {k.replace('stem.', 'stem_').replace('stages.', 'stages_', 1): v
                          for k, v in state.items() if not k.startswith('head.')},
    }[kind]


@pytest.mark.parametrize('kind', ['flat', 'state_dict', 'model', 'module', 'mmdet',
                                  'timm_features'])
def test_formats_load(tmp_path, timm_atto, kind):
    path = tmp_path / f'{kind}.pth'
    torch.save(_wrap(timm_atto.state_dict(), kind), path)
    _assert_loaded(_build(str(path)), timm_atto)


def test_safetensors_loads(tmp_path, timm_atto):
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in timm_atto.state_dict().items()}, str(path))
    _assert_loaded(_build(str(path)), timm_atto)


@pytest.mark.parametrize('name', ['inceptionnext_atto.pth', 'model.safetensors'])
def test_url_loads_and_is_cached(http_dir, timm_atto, name):
    folder, url = http_dir
    state = {k: v.contiguous() for k, v in timm_atto.state_dict().items()}
    if name.endswith('.pth'):
        torch.save(state, folder / name)
    else:
        save_file(state, str(folder / name))
    _assert_loaded(_build(f'{url}/{name}'), timm_atto)
    (folder / name).unlink()  # the second load reads the cached copy
    _assert_loaded(_build(f'{url}/{name}'), timm_atto)
    if name.endswith('.safetensors'):  # another URL with the same file name is not that copy
        with pytest.raises(CheckpointError, match='cannot read checkpoint'):
            _build(f'{url}/other/{name}')


def test_prefix_selects_submodule(tmp_path, timm_atto):
    path = tmp_path / 'prefixed.pth'
    torch.save({f'encoder.{k}': v for k, v in timm_atto.state_dict().items()}, path)
    _assert_loaded(_build(str(path), prefix='encoder.'), timm_atto)


def test_report_names_head_and_new_norms(atto_ckpt, capsys):
    MMLogger.get_instance('test_report')
    model = InceptionNeXt('atto')
    from backbones.checkpoint import load_pretrained
    report = load_pretrained(model, atto_ckpt)
    assert len(report['head']) == 6  # head.fc1/norm/fc2 weights and biases
    assert len(report['new_norms']) == 8  # norm0..3 weight and bias
    assert report['missing'] == [] and report['unexpected'] == []
    assert len(report['loaded']) == len(model.state_dict()) - 8


def test_missing_tensors_are_reported_not_hidden(tmp_path, timm_atto):
    state = {k: v for k, v in timm_atto.state_dict().items() if 'stages.3' not in k}
    path = tmp_path / 'partial.pth'
    torch.save(state, path)
    from backbones.checkpoint import load_pretrained
    report = load_pretrained(InceptionNeXt('atto'), str(path))
    assert report['missing'] and all('stages.3' in k for k in report['missing'])


@pytest.mark.parametrize('case,match', [
    ('missing', 'checkpoint not found'),
    ('truncated', 'cannot read checkpoint'),
    ('text', 'cannot read checkpoint'),
    ('other_model', 'no key of'),
    ('no_tensors', 'holds no state dict'),
    ('url', 'cannot read checkpoint'),
])
def test_bad_checkpoints_fail_with_one_line(tmp_path, atto_ckpt, case, match):
    path = str(tmp_path / f'{case}.pth')
    if case == 'truncated':
        data = open(atto_ckpt, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    elif case == 'text':
        open(path, 'w').write('this is not a checkpoint\n')
    elif case == 'other_model':
        torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)},
                   path)
    elif case == 'no_tensors':
        torch.save({'epoch': 3, 'meta': {'note': 'no weights'}}, path)
    elif case == 'url':
        path = 'http://127.0.0.1:9/inceptionnext_atto.pth'  # nothing listens on port 9
    with pytest.raises(CheckpointError, match=match) as info:
        _build(path)
    assert '\n' not in str(info.value) and path in str(info.value)


def test_shape_mismatch_names_the_arch_problem(timm_atto, tmp_path):
    path = tmp_path / 'atto.pth'
    torch.save(timm_atto.state_dict(), path)
    with pytest.raises(CheckpointError, match='does not fit the InceptionNeXt backbone.*mismatch'):
        _build(str(path), arch='tiny')


def test_another_depth_with_the_same_widths_fails(atto_ckpt):
    """e.g. tiny weights into small: every shape fits, but a third of stage 3 would stay random."""
    deeper = dict(depths=(2, 2, 8, 2), dims=(40, 80, 160, 320), band_kernel_size=9,
                  branch_ratio=0.25)
    model = InceptionNeXt(deeper, init_cfg=dict(type='Pretrained', checkpoint=atto_ckpt))
    with pytest.raises(CheckpointError, match=r'stages \[0, 1, 2, 3\] have \[2, 2, 6, 2\] blocks, '
                                              r"the model's \[2, 2, 8, 2\]"):
        model.init_weights()


def test_whole_model_checkpoint_of_another_depth_fails(tmp_path, timm_atto):
    from backbones.checkpoint import fit_model_checkpoint
    path = tmp_path / 'upernet_atto.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in timm_atto.state_dict().items()}},
               path)
    model = torch.nn.Module()
    model.backbone = InceptionNeXt(dict(depths=(2, 2, 6, 3), dims=(40, 80, 160, 320),
                                        band_kernel_size=9, branch_ratio=0.25))
    with pytest.raises(CheckpointError, match=r"\[2, 2, 6, 2\] blocks, the model's \[2, 2, 6, 3\]"):
        fit_model_checkpoint(model, str(path))


def test_no_pretrained_keeps_init():
    model = InceptionNeXt('atto')
    before = model.stem[0].weight.clone()
    model.init_weights()
    assert torch.equal(before, model.stem[0].weight)
    assert 0.01 < model.stem[0].weight.std().item() < 0.03  # trunc_normal(std=0.02)


def timm_train_checkpoint(folder, model: torch.nn.Module) -> str:
    """What timm's ``train.py`` writes: ``CheckpointSaver`` with the model, an AdamW state and
    the command line as an ``argparse.Namespace`` (``args``); returns ``last.pth.tar``."""
    import argparse
    import copy

    from timm.utils import CheckpointSaver
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    optimizer.step()  # lr 0: the weights stay, the optimizer gets its state tensors
    args = argparse.Namespace(model='inception_next_atto', lr=4e-3, opt='adamw', epochs=300,
                              input_size=None, mean=None, model_kwargs={}, amp=True,
                              device='cuda:0', drop_path=0.1, aa='rand-m9-mstd0.5-inc1')
    saver = CheckpointSaver(model, optimizer, args=args, checkpoint_dir=str(folder),
                            recovery_dir=str(folder))
    saver.save_checkpoint(epoch=0, metric=12.5)
    return str(folder / 'last.pth.tar')


@pytest.mark.parametrize('how', ['load_pretrained', 'init_cfg'])
def test_timm_train_checkpoint_loads_without_trust(tmp_path, timm_atto, how):
    """A timm ``train.py`` checkpoint (``args`` Namespace, optimizer, epoch, metric) is
    pretrained weights like any other: no trust flag, tensors equal."""
    path = timm_train_checkpoint(tmp_path, timm_atto)
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    assert {'args', 'optimizer', 'epoch', 'arch', 'version', 'metric',
            'state_dict'} <= set(checkpoint)
    assert checkpoint['optimizer']['state']  # exp_avg... tensors, as after training
    unsafe = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if unsafe is not None:
        assert unsafe(path) == ['argparse.Namespace']
    if how == 'init_cfg':
        model = _build(path)
    else:
        from backbones.checkpoint import load_pretrained
        model = InceptionNeXt('atto')
        report = load_pretrained(model, path)
        assert report['missing'] == [] and report['unexpected'] == []
    _assert_loaded(model, timm_atto)
