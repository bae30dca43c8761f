"""Run a trained detector or segmentor on images and save the painted predictions as PNG files.

    python tools/infer.py CONFIG CHECKPOINT demo.jpg images/ [--out-dir DIR] [--deploy]
    python tools/infer.py CONFIG MODEL.onnx demo.jpg --backend onnxruntime
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
from collections.abc import Mapping

import mmcv
import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from backbones.checkpoint import fit_model_checkpoint
from backbones.checks.data import IMAGE_SUFFIXES, image_files
from backbones.checks.outputs import check_output_folder
from backbones.cli.main import add_cfg_options, one_line_errors
from backbones.config import load_config, task_of
from backbones.deploy.fuse import fuse_inception_next
from backbones.errors import CheckpointError, ConfigError, DataError
from backbones.inception_next import InceptionNeXt
from backbones.runtime.layout import channels_last_inside
from backbones.runtime.quiet import warning_hidden_from


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Paint the predictions of a model on images')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('images', nargs='+', help='image files or directories of images')
    parser.add_argument('--out-dir', default='work_dirs/infer',
                        help='directory for the painted PNG files (default: work_dirs/infer)')
    parser.add_argument('--overwrite', action='store_true', help='replace painted files of an '
                        'earlier run in --out-dir (never the inputs)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default: cpu)')
    parser.add_argument('--deploy', action='store_true', help='fold BatchNorms and layer scales '
                        'of the InceptionNeXt backbone for faster inference (same outputs)')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                        help='onnxruntime: CHECKPOINT is an .onnx file written by '
                        'tools/deployment/export.py (a segmentor, or a whole detector: --part '
                        'detector), which computes the network (CPU)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detectors: draw boxes and masks scoring at least this')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='read CHECKPOINT with pickle, which can run code stored in it: only '
                        'for files you trust')
    add_cfg_options(parser)
    return parser.parse_args()


def collect_images(paths: list[str]) -> list[str]:
    """Image files named directly or found (not recursively) in the given directories."""
    images = []
    for path in paths:
        if osp.isdir(path):
            found = image_files(path)
            if not found:
                raise DataError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in directory {path}')
            images += found
        elif osp.isfile(path):
            images.append(path)
        else:
            raise DataError(f'image not found: {path}')
    return images


def check_device(device: str) -> str:
    """``device`` if this machine has it, else a ConfigError."""
    if not re.fullmatch(r'cpu|cuda(:\d+)?', device):
        raise ConfigError(f'--device {device}: expected cpu, cuda or cuda:N')
    if device != 'cpu' and not torch.cuda.is_available():
        raise ConfigError(f'--device {device}: CUDA is not available here; use --device cpu')
    return device


def dataset_meta(cfg: Config, checkpoint: Mapping, task: str) -> dict | None:
    """Class names and palette: the checkpoint's, else those of the config's test dataset."""
    meta = checkpoint.get('meta')
    if isinstance(meta, Mapping) and isinstance(meta.get('dataset_meta'), Mapping):
        return {k.lower(): v for k, v in meta['dataset_meta'].items()}
    if task == 'seg':
        from mmseg.registry import DATASETS
    else:
        from mmdet.registry import DATASETS
    dataset_type = cfg.get('test_dataloader', {}).get('dataset', {}).get('type')
    dataset = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else None
    return dict(dataset.METAINFO) if dataset is not None and dataset.METAINFO else None


def build(cfg: Config, task: str, device: str) -> tuple[nn.Module, object]:
    """The model (without weights, in eval mode) and a visualizer for the task."""
    cfg.model.backbone.init_cfg = None
    if task == 'seg':
        from mmseg.apis import init_model
        from mmseg.visualization import SegLocalVisualizer
        model = init_model(cfg, None, device='cpu')
        visualizer = SegLocalVisualizer(name='infer', alpha=0.5)
    else:
        from mmdet.apis import init_detector
        from mmdet.visualization import DetLocalVisualizer
        # without a checkpoint (loaded and checked below) mmdet warns that it uses COCO's classes
        with warning_hidden_from('checkpoint is None'):
            model = init_detector(cfg, None, device='cpu')
        visualizer = DetLocalVisualizer(name='infer')
    return revert_sync_batchnorm(model), visualizer


def predict(model: nn.Module, image: np.ndarray, task: str):
    if task == 'seg':
        from mmseg.apis import inference_model
        return inference_model(model, image)
    from mmdet.apis import inference_detector
    return inference_detector(model, image)


def out_path(out_dir: str, image: str, used: set[str]) -> str:
    stem = osp.splitext(osp.basename(image))[0]
    name, n = f'{stem}.png', 1
    while name in used:
        name, n = f'{stem}_{n}.png', n + 1
    used.add(name)
    return osp.join(out_dir, name)


@one_line_errors
def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    device = check_device(args.device)
    images = collect_images(args.images)
    used: set[str] = set()  # the names written, known before any work
    out_files = [out_path(args.out_dir, path, used) for path in images]
    check_output_folder(args.out_dir, '--out-dir', [*images, *args.images, args.checkpoint,
                                                    args.config],
                        [osp.basename(f) for f in out_files], args.overwrite)
    if not osp.isfile(args.checkpoint):
        raise CheckpointError(f'checkpoint not found: {args.checkpoint}')
    model, visualizer = build(cfg, task, device)
    if args.backend == 'onnxruntime':
        if args.deploy or device != 'cpu':
            raise ConfigError('--backend onnxruntime runs on the CPU, as exported: drop --deploy '
                              'and --device')
        from backbones.deploy import onnx_runtime
        run = (onnx_runtime.run_segmentor_in_onnx_runtime if task == 'seg'
               else onnx_runtime.run_detector_in_onnx_runtime)
        network = run(model, args.checkpoint)
        checkpoint = {'meta': network.metadata}
    else:
        checkpoint, state = fit_model_checkpoint(model, args.checkpoint,
                                                 args.trust_checkpoint)
        model.load_state_dict(state, strict=False)
    meta = dataset_meta(cfg, checkpoint, task)
    if meta:
        model.dataset_meta = meta
    if args.deploy:
        if not isinstance(getattr(model, 'backbone', None), InceptionNeXt):
            raise ConfigError('--deploy: the backbone of this model is not an InceptionNeXt '
                              'to fuse')
        model.eval()
        fuse_inception_next(model.backbone)
    model.to(device).eval()
    if device == 'cpu' and isinstance(getattr(model, 'backbone', None), InceptionNeXt):
        channels_last_inside(model.backbone)  # as the tools' runs on CPUs (runtime.layout)
    if task == 'seg':
        visualizer.set_dataset_meta(classes=model.dataset_meta.get('classes'),
                                    palette=model.dataset_meta.get('palette'))
    else:
        visualizer.dataset_meta = model.dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)
    for path, out_file in zip(images, out_files):
        try:
            image = mmcv.imread(path)
        except Exception:  # noqa: BLE001  (any decoder failure is a bad input file)
            image = None
        if image is None:
            raise DataError(f'cannot read image {path} (not an image, or a corrupt file)')
        result = predict(model, image, task)
        extra = {} if task == 'seg' else {'pred_score_thr': args.score_thr}
        visualizer.add_datasample(osp.basename(path), mmcv.bgr2rgb(image), result,
                                  draw_gt=False, show=False, out_file=out_file, **extra)
        print(f'{path} -> {out_file}')


if __name__ == '__main__':
    main()
