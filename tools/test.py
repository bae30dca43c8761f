"""Evaluate a trained detector or segmentor (the upstream tools/test.py flags).

    python tools/test.py CONFIG CHECKPOINT [--tta] [--out PATH] [--show-dir DIR] [--deploy]
    python tools/test.py CONFIG MODEL.onnx --backend onnxruntime  # from deployment/export.py
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from contextlib import nullcontext

from backbones.checkpoint import fit_model_checkpoint
from backbones.checks.data import data_inputs, image_names, readable_data_errors
from backbones.checks.outputs import check_output_file, check_output_folder
from backbones.cli.main import add_runner_args, one_line_errors
from backbones.config import default_work_dir, load_config, task_of
from backbones.errors import CheckpointError, ConfigError
from backbones.runtime import amp
from backbones.runtime.prepare import build_runner


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a trained model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='det: dump predictions to this pickle file; seg: save '
                        'predicted label maps into this directory')
    parser.add_argument('--overwrite', action='store_true', help='replace files of --out and '
                        '--show-dir that already exist (never the inputs)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted predictions are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (seg: '
                        'multi-scale 0.5-1.75 + flip, as in the paper)')
    parser.add_argument('--deploy', action='store_true', help='fold BatchNorms and layer scales '
                        'of the InceptionNeXt backbone for faster inference (same outputs)')
    parser.add_argument('--amp', action='store_true', help='mixed precision inference')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='read CHECKPOINT with pickle, which can run code stored in it: only '
                        'for files you trust (default: refuse any file that holds more than '
                        'tensors and plain types)')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                        help='onnxruntime: CHECKPOINT is an .onnx file written by '
                        'tools/deployment/export.py (a segmentor, or a whole detector: --part '
                        'detector), which computes the network (default: pytorch)')
    add_runner_args(parser)
    return parser.parse_args()


def enable_visualization(cfg, task: str, args: argparse.Namespace) -> None:
    hook = cfg.default_hooks.visualization
    hook.draw = True
    if args.show:
        hook.show, hook.wait_time = True, args.wait_time
    if args.show_dir:
        if task == 'det':
            hook.test_out_dir = osp.abspath(args.show_dir)  # mmdet nests relative paths
        else:
            cfg.visualizer.save_dir = args.show_dir
            hook.interval = 1


def check_outputs(cfg, task: str, args: argparse.Namespace) -> None:
    """--out and --show-dir replace none of the inputs (checkpoint, config, the test data) and,
    without --overwrite, no file that is already there."""
    inputs = [args.checkpoint, args.config, *data_inputs(cfg, ['test_dataloader'])]
    if args.out and task == 'det':
        check_output_file(args.out, inputs, '--out', overwrite=args.overwrite)
    elif args.out:  # mmseg's IoUMetric writes <image stem>.png
        names = [osp.splitext(osp.basename(n))[0] + '.png'
                 for n in image_names(cfg, 'test_dataloader')]
        check_output_folder(args.out, '--out', inputs, names, args.overwrite)
    if args.show_dir:
        if task == 'det':  # mmdet's hook writes the image's own name
            names = [osp.basename(n) for n in image_names(cfg, 'test_dataloader')]
        else:  # mmseg's visualizer: vis_data/vis_image/test_<image>_<index>.png
            folder = osp.join(args.show_dir, 'vis_data', 'vis_image')
            names = [osp.join('vis_data', 'vis_image', n)
                     for n in (os.listdir(folder) if osp.isdir(folder) else [])]
        check_output_folder(args.show_dir, '--show-dir', inputs, names, args.overwrite)


@one_line_errors
def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    check_outputs(cfg, task, args)
    if not osp.isfile(args.checkpoint):
        raise CheckpointError(f'checkpoint not found: {args.checkpoint}')
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    onnx = args.backend == 'onnxruntime'
    if onnx and (args.deploy or args.amp):
        raise ConfigError('--deploy and --amp are PyTorch options; an .onnx file is run as '
                          'exported (see tools/deployment/export.py --quantize for int8)')
    cfg.load_from = None if onnx else args.checkpoint
    if args.amp:
        cfg.test_cfg = {**cfg.get('test_cfg', {}), 'fp16': True}
    if args.show or args.show_dir:
        enable_visualization(cfg, task, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ConfigError(f'{args.config} defines no tta_model/tta_pipeline for --tta')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.deploy:
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='DeployBackboneHook')]
    if args.out:
        if task == 'det':
            cfg.test_evaluator = [*(cfg.test_evaluator if isinstance(cfg.test_evaluator, list)
                                    else [cfg.test_evaluator]),
                                  dict(type='DumpDetResults', out_file_path=args.out)]
        else:
            cfg.test_evaluator.update(output_dir=args.out)
    runner = build_runner(cfg, args.launcher, ('test_dataloader',), train=False,
                          trusted_checkpoints=[args.checkpoint] if args.trust_checkpoint else [])
    if onnx:
        from backbones.deploy import onnx_runtime
        run = (onnx_runtime.run_segmentor_in_onnx_runtime if task == 'seg'
               else onnx_runtime.run_detector_in_onnx_runtime)
        run(runner.model, args.checkpoint)
    else:  # one-line errors, not a silent misfit
        fit_model_checkpoint(runner.model, args.checkpoint, trusted=args.trust_checkpoint)
    with readable_data_errors(cfg), amp.float32_mmcv_ops(args.amp), \
            amp.float32_predictions(runner.model) if args.amp else nullcontext():
        runner.test()  # float32_mmcv_ops only changes CPU inputs that are not float32


if __name__ == '__main__':
    main()
