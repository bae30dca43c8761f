"""Parameters and FLOPs of a detector or segmentor, and of its backbone alone, without weights.

    python tools/get_flops.py configs/upernet_inceptionnext_t_ade20k.py [--shape 512 2048]

FLOPs follow mmengine's (and fvcore's) convention: one fused multiply-add counts as one FLOP.
Segmentors are measured without their auxiliary head (it is dropped at inference), detectors on
the input padded to the data preprocessor's size divisor, as upstream get_flops.py does.
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import DictAction

from backbones.cli.config import build_model, load_config, parse_shape, task_of
from backbones.cli.main import one_line_errors

DEFAULT_SHAPE = {'seg': (512, 512), 'det': (1280, 800)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Get the params and FLOPs of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input height and width, or one number for a square input '
                        '(default: 512 512 for segmentors, 1280 800 for detectors)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.arch=small')
    return parser.parse_args()


def drop_auxiliary_head(model: nn.Module, task: str) -> float | None:
    """Drop a segmentor's auxiliary head (training only; not in the paper's FLOPs) and return its
    params (M); None if there is none."""
    if task != 'seg' or getattr(model, 'auxiliary_head', None) is None:
        return None
    aux = sum(p.numel() for p in model.auxiliary_head.parameters()) / 1e6
    model.auxiliary_head = None
    return aux


def model_inputs(model: nn.Module, task: str, hw: tuple[int, int]) -> torch.Tensor:
    """The input tensor of the measurement; detectors get their image metas bound to forward."""
    image = torch.rand(3, *hw) * 255
    if task == 'seg':
        return (image - 127.5)[None] / 64.0
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(ori_shape=hw, img_shape=hw, scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    model.forward = partial(model.forward, data_samples=data['data_samples'], mode='tensor')
    return data['inputs']


def complexity(module: nn.Module, inputs: torch.Tensor) -> tuple[float, float, list[str]]:
    """(params in M, FLOPs in G, ops the counter skips) of ``module`` on ``inputs``.

    ``FlopAnalyzer`` is the counter behind ``get_model_complexity_info``, used directly to skip
    its second (activation) trace and to list the uncounted ops instead of warning per module.
    """
    with torch.no_grad():
        flops = (FlopAnalyzer(module, (inputs,)).unsupported_ops_warnings(False)
                 .uncalled_modules_warnings(False))
        total = flops.total()
    skipped = sorted(op.replace('aten::', '') for op in flops.unsupported_ops())
    return parameter_count(module)[''] / 1e6, total / 1e9, skipped


@one_line_errors
def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    hw = parse_shape(args.shape, DEFAULT_SHAPE[task])
    torch.manual_seed(0)  # detectors: the number of proposals, hence the FLOPs, depend on weights
    model = build_model(cfg)
    aux = drop_auxiliary_head(model, task)
    inputs = model_inputs(model, task, hw)
    total_params, flops, skipped = complexity(model, inputs)
    rows = [('model', f'{total_params:.2f}', f'{flops:.2f}')]
    if getattr(model, 'backbone', None) is not None:
        params, flops, _ = complexity(model.backbone, inputs)
        rows.append(('backbone', f'{params:.2f}', f'{flops:.2f}'))
    if aux is not None:
        rows.append(('model + auxiliary head', f'{total_params + aux:.2f}', '-'))
    padded = tuple(inputs.shape[-2:])
    note = f' (padded from {hw[0]}x{hw[1]})' if padded != hw else ''
    print(f'config: {args.config}')
    print(f'input:  1x3x{padded[0]}x{padded[1]}{note}')
    print(f'{"module":<24}{"params (M)":>12}{"FLOPs (G)":>12}')
    for name, params, flops in rows:
        print(f'{name:<24}{params:>12}{flops:>12}')
    print('one multiply-add counts as one FLOP; not counted: ' + (', '.join(skipped) or 'none'))


if __name__ == '__main__':
    main()
