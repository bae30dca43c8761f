"""Export a trained segmentor, a whole detector, a detector's backbone + FPN, or the backbone
alone to ONNX.

    python tools/deployment/export.py CONFIG CHECKPOINT OUT.onnx \
        [--part segmentor|detector|features|backbone]
        [--check-shapes 512x512 480x640] [--quantize int8 --calib-data DIR --calib-num N]

The file takes ``image``: float32 NCHW, any height and width, normalised as the config's data
preprocessor does it (channel order, mean and std are in the file's metadata); any batch, except
a whole detector: one image. Segmentors give ``seg_logits`` (class scores at the input's size);
a whole detector (Mask R-CNN, Cascade Mask R-CNN) gives ``boxes, scores, labels, masks`` and
needs no custom ONNX op; features and backbones give their maps ``feat0``, ``feat1``, ... Before
the file is kept, ONNX Runtime runs it at two sizes and its outputs are compared with PyTorch's
(relative error < 1e-4 on random images; for a detector, every detection of mmdet's own predict
on an image of colour patches), else ``error: ...``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re

import torch
from mmengine.config import Config

from backbones.checkpoint import fit_model_checkpoint, load_pretrained
from backbones.checks.outputs import check_output_file
from backbones.cli.main import add_cfg_options, one_line_errors
from backbones.config import build_model, load_config, task_of
from backbones.deploy.onnx_detector import check_exportable
from backbones.deploy.onnx_export import (
    export_checked,
    file_metadata,
    pytorch_part,
    relative_error,
)
from backbones.errors import ConfigError, UserError

DEFAULT_CHECKS = ('1x512x512', '2x480x640')
DETECTOR_CHECKS = ('1x512x512', '1x480x640')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a model to ONNX (dynamic batch and size)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint of the whole model (from training); for '
                        '--part backbone an ImageNet backbone checkpoint also works')
    parser.add_argument('out', help='the .onnx file to write')
    parser.add_argument('--part', choices=['segmentor', 'detector', 'features', 'backbone'],
                        help='segmentor (default for mmseg configs): image -> class scores; '
                        'detector (default for mmdet configs): image -> boxes, scores, labels, '
                        'masks; features: image -> backbone + FPN maps; backbone: image -> '
                        'backbone maps')
    parser.add_argument('--check-shapes', nargs=2, metavar='[Bx]HxW',
                        help='the two input sizes at which ONNX Runtime is compared with PyTorch '
                        f'(default: {" ".join(DEFAULT_CHECKS)}; {" ".join(DETECTOR_CHECKS)} for '
                        '--part detector)')
    parser.add_argument('--quantize', choices=['int8'], help='also write OUT with .int8.onnx: '
                        'ONNX Runtime static quantization (segmentors, whole detectors)')
    parser.add_argument('--calib-data', help='--quantize: folder of training images')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT (and its .int8.onnx) if they exist (never an input)')
    parser.add_argument('--calib-num', type=int, default=32,
                        help='--quantize: calibration images (default: 32)')
    add_cfg_options(parser)
    return parser.parse_args()


def parse_check_shape(text: str) -> tuple[int, int, int]:
    """'480x640' or '2x480x640' -> (batch, height, width)."""
    m = re.fullmatch(r'(?:(\d+)x)?(\d+)x(\d+)', text)
    if not m or min(int(v) for v in m.groups(default='1')) < 1:
        raise ConfigError(f'--check-shapes {text}: expected HxW or BxHxW, e.g. 2x480x640')
    batch, height, width = (int(v) for v in m.groups(default='1'))
    if min(height, width) < 32:
        raise ConfigError(f'--check-shapes {text}: height and width must be at least 32')
    return batch, height, width


def check_out_path(out: str, inputs: list[str], overwrite: bool = False,
                   quantized: bool = False) -> None:
    """Refuse a folder, one of the inputs, a name that is not .onnx, a place that cannot be
    written and, without --overwrite, an existing file (OUT, and the .int8.onnx of --quantize)."""
    check_output_file(out, inputs, 'OUT', overwrite=overwrite)
    if not out.endswith('.onnx'):
        raise UserError(f'{out}: the output file must end in .onnx')
    if quantized:
        check_output_file(out[:-len('.onnx')] + '.int8.onnx', inputs, 'the int8 file of OUT',
                          overwrite=overwrite)


def quantize(args: argparse.Namespace, cfg: Config, model: torch.nn.Module, fp32: str,
             ref: torch.nn.Module, shapes: list[tuple[int, int, int]]) -> str:
    """Write and try the int8 file; report how far it is from PyTorch (a segmentor: arg-max
    agreement on random inputs) or from the fp32 file (a detector: its detections found again
    on the calibration images). No tolerance: int8 is judged by its metric, tools/test.py
    --backend onnxruntime."""
    import onnxruntime as ort

    from backbones.deploy.onnx_export import read_metadata
    from backbones.deploy.onnx_quantize import (
        calibration_images,
        calibration_inputs,
        matched_detections,
        quantize_int8,
    )
    float_session = ort.InferenceSession(fp32, providers=['CPUExecutionProvider'])
    kind = read_metadata(float_session).get('kind')
    images = calibration_images(args.calib_data, args.calib_num)
    inputs = calibration_inputs(cfg, model.data_preprocessor, images,
                                unpadded=kind == 'detector')
    int8 = fp32[:-len('.onnx')] + '.int8.onnx'
    tmp = int8 + '.tmp'
    try:
        quantize_int8(fp32, tmp, inputs)
        session = ort.InferenceSession(tmp, providers=['CPUExecutionProvider'])
        if kind == 'detector':
            found, total = matched_detections(float_session, session, inputs[:8])
            print(f'int8 vs fp32 file on {min(len(inputs), 8)} calibration images: {found} of '
                  f'{total} detections scoring >= 0.3 found again (same label, IoU >= 0.5)')
        generator = torch.Generator().manual_seed(0)
        for batch, height, width in shapes if kind != 'detector' else ():
            image = torch.randn(batch, 3, height, width, generator=generator)
            out = session.run(None, {'image': image.numpy()})[0]
            with torch.no_grad():
                want = ref(image).numpy()
            agree = (out.argmax(1) == want.argmax(1)).mean() * 100
            print(f'int8 at {batch}x3x{height}x{width}: relative error '
                  f'{relative_error(out, want):.2e}, arg-max agreement with PyTorch '
                  f'{agree:.1f}% (random input)')
        os.replace(tmp, int8)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    print(f'int8 file: {int8} (calibrated on {len(images)} images of {args.calib_data})')
    return int8


@one_line_errors
def main() -> None:
    args = parse_args()
    check_out_path(args.out, [args.config, args.checkpoint, args.calib_data], args.overwrite,
                   quantized=bool(args.quantize))
    cfg = load_config(args.config, args.cfg_options)
    task = task_of(cfg)
    kind = args.part or ('segmentor' if task == 'seg' else 'detector')
    if kind == 'segmentor' and task != 'seg' or kind in ('detector', 'features') and task != 'det':
        raise ConfigError(f'--part {kind} needs an {"mmseg" if kind == "segmentor" else "mmdet"} '
                          f'config; {args.config} is an {cfg.default_scope} one')
    shapes = [parse_check_shape(s) for s in args.check_shapes
              or (DETECTOR_CHECKS if kind == 'detector' else DEFAULT_CHECKS)]
    if kind == 'detector' and any(b != 1 for b, _, _ in shapes):
        raise ConfigError('--check-shapes: a whole detector takes one image; give HxW or 1xHxW')
    if args.quantize and (kind not in ('segmentor', 'detector') or not args.calib_data):
        raise ConfigError('--quantize int8 quantizes segmentors and whole detectors and needs '
                          '--calib-data DIR')
    model = build_model(cfg)
    if kind == 'detector':
        check_exportable(model)  # before the weights are read
    checkpoint = None
    if kind == 'backbone':
        load_pretrained(model.backbone, args.checkpoint)
    else:
        checkpoint, state = fit_model_checkpoint(model, args.checkpoint)
        model.load_state_dict(state, strict=False)
    exported = model.backbone if kind == 'backbone' else model
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = args.out + '.tmp'
    try:
        meta = file_metadata(model, kind, cfg.filename, checkpoint)
        errors = export_checked(exported, kind, tmp, shapes, meta, name=args.out)
        os.replace(tmp, args.out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    for (b, h, w), err in zip(shapes, errors):
        if kind == 'detector':
            print(f'ONNX Runtime vs PyTorch at {b}x3x{h}x{w}: {err["matched"]} of '
                  f'{err["pytorch"]} detections matched (the file found {err["found"]}), box '
                  f'error {err["box_error"]:.1e} px, score error {err["score_error"]:.1e}, '
                  f'lowest mask IoU {err["mask_iou"]:.3f}')
        else:
            print(f'ONNX Runtime vs PyTorch at {b}x3x{h}x{w}: relative error {err:.1e}')
    sizes = 'one image, dynamic height and width' if kind == 'detector' else \
        'dynamic batch, height and width'
    print(f'exported {kind} of {args.config} to {args.out} '
          f'({osp.getsize(args.out) / 2**20:.1f} MiB, {sizes})')
    if args.quantize:
        quantize(args, cfg, model, args.out, pytorch_part(exported, kind), shapes)


if __name__ == '__main__':
    main()
