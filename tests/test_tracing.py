"""The backbone through FX, torchvision's feature extraction, TorchScript and torch.export.

timm checks every model with ``torch.fx.symbolic_trace`` and ``torch.jit.script``; these tests do
the same for the dense backbone with its output norms, without them and with ``with_cp``, and
check that the converted module returns what the eager model does.
"""
from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from backbones.inception_next import InceptionNeXt, MetaNeXtStage

CONFIGS = {'out-norms': {}, 'no-out-norms': dict(out_norm_cfg=None), 'with-cp': dict(with_cp=True)}
SHAPES = [(1, 40, 16, 16), (1, 80, 8, 8), (1, 160, 4, 4), (1, 320, 2, 2)]


def _model(config: str) -> InceptionNeXt:
    torch.manual_seed(0)
    model = InceptionNeXt('atto', **CONFIGS[config])
    model.init_weights()
    return model.eval()


def _output_nodes(model: torch.nn.Module) -> dict[str, str]:
    """The last node of each ``norm{i}`` (the module itself when it is a leaf, e.g. Identity)."""
    _, eval_nodes = get_graph_node_names(model)
    return {[n for n in eval_nodes if n == f'norm{i}' or n.startswith(f'norm{i}.')][-1]: f'out{i}'
            for i in range(4)}


def _fx(model):
    return torch.fx.symbolic_trace(model)


def _feature_extractor(model):
    extractor = create_feature_extractor(model, return_nodes=_output_nodes(model))
    return lambda x: tuple(extractor(x)[f'out{i}'] for i in range(4))


def _script(model):
    return torch.jit.script(model)


def _export(model):
    return torch.export.export(model, (torch.randn(1, 3, 64, 64),)).module()


PATHS = {'fx': _fx, 'feature-extractor': _feature_extractor, 'script': _script, 'export': _export}


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('config', CONFIGS)
def test_converted_module_returns_the_eager_outputs(config, path):
    model = _model(config)
    converted = PATHS[path](model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        outs = converted(x)
    assert isinstance(outs, tuple) and len(outs) == 4
    assert [tuple(o.shape) for o in outs] == SHAPES
    for out, ref in zip(outs, expected):
        assert out.is_contiguous()  # NCHW in, NCHW out, as the heads expect
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('path', ['fx', 'script'])
def test_converted_module_keeps_the_input_memory_format(path):
    """FX and TorchScript decide the output layout when they run (export fixes the example's)."""
    model = _model('out-norms')
    converted = PATHS[path](model)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        outs = converted(x)
    for out, ref in zip(outs, expected):
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        torch.testing.assert_close(out, ref)


def test_fx_traces_with_cp_in_training_as_the_plain_path(monkeypatch):
    """A graph records the blocks' ops (so features and quantization can reach inside stages);
    checkpointing only changes what autograd keeps, so the train-mode graph computes the same
    values and gradients without checkpoint calls. Tracing with ``MetaNeXtStage`` as a leaf keeps
    checkpointing, since the stage's own forward then runs when the graph does."""
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint',
                        lambda fn, *a, **k: calls.append(fn) or checkpoint(fn, *a, **k))
    model = _model('with-cp').train()
    traced = torch.fx.symbolic_trace(model)

    class StageLeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, MetaNeXtStage) or super().is_leaf_module(m, qualname)

    leaf = torch.fx.GraphModule(model, StageLeafTracer().trace(model))
    assert calls == []
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    sum(o.square().mean() for o in expected).backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    assert len(calls) == sum(model.depths)
    for module, n_calls in ((traced, 0), (leaf, sum(model.depths))):
        calls.clear()
        model.zero_grad()
        outs = module(x)
        assert len(calls) == n_calls
        sum(o.square().mean() for o in outs).backward()
        for out, ref in zip(outs, expected):
            torch.testing.assert_close(out, ref)
        for p, ref in zip(model.parameters(), expected_grads):
            torch.testing.assert_close(p.grad, ref)
