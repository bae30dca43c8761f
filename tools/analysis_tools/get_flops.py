"""Parameters and FLOPs of a detector or segmentor, and of its backbone alone, without weights.

    python tools/analysis_tools/get_flops.py configs/upernet_inceptionnext_t_ade20k.py \
        [--shape 512 2048]

FLOPs follow mmengine's (and fvcore's) convention: one fused multiply-add counts as one FLOP.
Segmentors are measured without their auxiliary head (it is dropped at inference), detectors on
the input padded to the data preprocessor's size divisor, as upstream get_flops.py does
(``flops.py`` beside this file, which ``benchmark.py`` shares).
"""
from __future__ import annotations

import argparse

import torch
from flops import complexity, drop_auxiliary_head, model_inputs

from backbones.cli.main import add_cfg_options, one_line_errors, parse_shape
from backbones.config import build_model, load_config, task_of

DEFAULT_SHAPE = {'seg': (512, 512), 'det': (1280, 800)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Get the params and FLOPs of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input height and width, or one number for a square input '
                        '(default: 512 512 for segmentors, 1280 800 for detectors)')
    add_cfg_options(parser)
    return parser.parse_args()


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
