"""The suite's main job on the embedded demo data, end to end, on a CPU in minutes.

    python tools/demo.py seg   # UperNet + InceptionNeXt-T (make demo)
    python tools/demo.py det   # Mask R-CNN + InceptionNeXt-T (make demo-det)

Creates the demo data if missing, trains through tools/train.py, evaluates on the held-out split
through tools/test.py (drawing ground truth next to predictions into PNG files), compares the
metric with trivial predictors, draws the loss and validation-metric curves into
``curves.png`` in the work dir, and prints a summary. The console shows the changed settings,
progress with ETA and the results; mmengine's environment, config and hook-order dumps go to the
run's log file only.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from backbones.demo.curves import draw_curves, latest_scalars
from backbones.demo.data import DEMO_ROOT, ensure_demo_data
from backbones.runtime.quiet import stack_warnings_hidden

TOOLS = osp.dirname(osp.abspath(__file__))
DEMOS = {
    'seg': dict(config='configs/demo/upernet_inceptionnext-t_demo_ade20k.py',
                base='configs/upernet_inceptionnext_t_ade20k.py',
                work_dir='work_dirs/demo_seg', metric='mIoU', curves=('mIoU',)),
    'det': dict(config='configs/demo/mask-rcnn_inceptionnext-t_demo_coco.py',
                base='configs/mask_rcnn/mask-rcnn_inceptionnext-t_fpn_1x_coco.py',
                work_dir='work_dirs/demo_det', metric='coco/segm_mAP',
                curves=('coco/bbox_mAP', 'coco/segm_mAP')),
}
# Where a locally downloaded official ImageNet checkpoint is looked for (no download here).
PRETRAINED_CANDIDATES = ('checkpoints/inceptionnext_tiny.pth',
                         '~/.cache/torch/hub/checkpoints/inceptionnext_tiny.pth')


def find_pretrained() -> str | None:
    for path in PRETRAINED_CANDIDATES:
        path = osp.expanduser(path)
        if osp.isfile(path):
            return path
    return None


def with_pretrained_backbone(config: str, checkpoint: str, work_dir: str) -> str:
    """A config in ``work_dir`` that inherits ``config`` and loads ``checkpoint`` into the
    backbone (a dict value cannot be given through --cfg-options)."""
    folder = osp.join(work_dir, 'configs')  # not where train.py saves its copy of the config
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, 'pretrained_' + osp.basename(config))
    init_cfg = f"dict(_delete_=True, type='Pretrained', checkpoint={osp.abspath(checkpoint)!r})"
    with open(path, 'w') as f:
        f.write(f'_base_ = [{osp.abspath(config)!r}]\n'
                f'model = dict(backbone=dict(init_cfg={init_cfg}))\n')
    return path


# A Runner's log record: "11/30 10:25:04 - mmengine - INFO - message"
RECORD = re.compile(r'^\d\d/\d\d \d\d:\d\d:\d\d - mmengine - [A-Z]+ - (.*)$')
# records that only repeat what the log file keeps: environment, whole config, hook order
DUMPS = ('', 'Config:', 'Hooks will be executed in the following order:')
# pycocotools' progress prints around each COCO evaluation (its AP/AR tables stay)
CHATTER = ('Loading and preparing results...', 'DONE (t=', 'creating index...', 'index created!',
           'Running per image evaluation...', 'Evaluate annotation type',
           'Accumulating evaluation results...')


def run(args: list[str]) -> None:
    """Run a tool; its stdout passes through but for mmengine's multi-line dumps (see DUMPS),
    which stay in the run's log file, and pycocotools' progress prints; stderr (warnings,
    errors) passes unchanged."""
    print('$', ' '.join(args), flush=True)
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True,
                               bufsize=1)
    skipping = False
    for line in process.stdout:
        record = RECORD.match(line)
        if record:
            skipping = record.group(1).rstrip() in DUMPS
            if skipping and record.group(1).rstrip() == 'Config:':
                print('[demo] (environment, config and hook order: see the log file)', flush=True)
        if not skipping and not line.startswith(CHATTER):
            print(line, end='', flush=True)
    if process.wait() != 0:
        sys.exit(process.returncode)


def latest_metrics(work_dir: str) -> dict:
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime)
    return json.loads(open(logs[-1]).read().splitlines()[-1]) if logs else {}


def seg_baselines(ann_dir: str, num_classes: int = 150, seed: int = 0) -> dict[str, float]:
    """mIoU (%) of predicting the most frequent class everywhere, and of uniform random labels,
    computed like mmseg's IoUMetric (classes absent from both prediction and truth are skipped)."""
    labels = [np.asarray(Image.open(p), dtype=np.int64) - 1
              for p in sorted(glob.glob(osp.join(ann_dir, '*.png')))]  # reduce_zero_label
    present = sorted({int(c) for lab in labels for c in np.unique(lab) if c >= 0})
    rng = np.random.default_rng(seed)
    counts = np.bincount(np.concatenate([lab[lab >= 0] for lab in labels]),
                         minlength=num_classes)
    predictors = {'constant (most frequent class)': lambda lab: np.full_like(lab, counts.argmax()),
                  'random (uniform over present classes)':
                      lambda lab: rng.choice(present, size=lab.shape)}
    out = {}
    for name, predict in predictors.items():
        inter, union = np.zeros(num_classes), np.zeros(num_classes)
        for lab in labels:
            pred, valid = predict(lab), lab >= 0
            for c in range(num_classes):
                p, t = (pred == c) & valid, (lab == c) & valid
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
        out[name] = float(np.mean(inter[union > 0] / union[union > 0]) * 100)
    return out


def _flatten(value: object, prefix: str = '') -> dict[str, object]:
    """Nested dicts and lists of dicts as ``{'a.b.0.c': leaf}``."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = enumerate(value)
    else:
        return {prefix[:-1]: value}
    return {k: v for key, sub in items for k, v in _flatten(sub, f'{prefix}{key}.').items()}


def config_changes(base: str, demo: str) -> list[str]:
    """``key: old -> new`` for every setting in which the built ``demo`` config differs from
    ``base``."""
    from mmengine.config import Config
    old, new = (_flatten(Config.fromfile(path).to_dict()) for path in (base, demo))

    unset = object()  # a key one of the two configs lacks

    def show(key: str, flat: dict[str, object]) -> str:
        value = flat.get(key, unset)
        if value is unset:  # absent, or a dict now (e.g. None -> dict(max_norm=10))
            return 'dict' if any(k.startswith(key + '.') for k in flat) else 'unset'
        text = repr(value)
        return text if len(text) <= 48 else text[:45] + '...'
    return [f'{key}: {show(key, old)} -> {show(key, new)}'
            for key in sorted(set(old) | set(new))
            if '_scope_' not in key and old.get(key, unset) != new.get(key, unset)]


def data_root_overrides(task: str, data_root: str) -> list[str]:
    """--cfg-options pointing every loader (and COCO evaluators) at ``data_root``."""
    if data_root == (osp.join(DEMO_ROOT, 'ade', 'ADEChallengeData2016') if task == 'seg'
                     else osp.join(DEMO_ROOT, 'coco')):
        return []  # the demo configs' own paths
    root = data_root.rstrip('/') + '/'
    keys = [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if task == 'det':
        ann = f'{root}annotations/instances_val2017.json'
        keys += [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description='Train and evaluate on the embedded demo data')
    parser.add_argument('task', choices=list(DEMOS))
    parser.add_argument('--data-root', default=DEMO_ROOT, help='where the demo data lives')
    parser.add_argument('--work-dir', help=f'outputs (default: the {list(DEMOS)} work dirs)')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra config overrides, e.g. train_cfg.max_iters=50')
    args = parser.parse_args()
    demo = DEMOS[args.task]
    start = time.time()
    ade_root, coco_root = ensure_demo_data(args.data_root)
    data_root = ade_root if args.task == 'seg' else coco_root
    print(f'[demo] data: {data_root}')
    print(f'[demo] config: {demo["config"]}, which inherits {demo["base"]} and changes:')
    for line in config_changes(demo['base'], demo['config']):
        print(f'[demo]   {line}')
    overrides = data_root_overrides(args.task, data_root) + list(args.cfg_options)
    extra = ['--cfg-options', *overrides] if overrides else []
    work_dir = args.work_dir or demo['work_dir']
    config = demo['config']
    pretrained = find_pretrained()
    if pretrained:
        print(f'[demo] using the ImageNet checkpoint {pretrained}')
        config = with_pretrained_backbone(config, pretrained, work_dir)
    else:
        print('[demo] no local ImageNet checkpoint (looked for '
              f'{", ".join(PRETRAINED_CANDIDATES)}): training from scratch')
    # a scripted fresh run: an earlier demo's checkpoints are moved aside (train.py says where)
    run([osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir, '--overwrite', *extra])
    checkpoint = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    vis_dir = osp.join(work_dir, 'vis')
    out = osp.join(work_dir, 'predictions' + ('.pkl' if args.task == 'det' else ''))
    run([osp.join(TOOLS, 'test.py'), config, checkpoint, '--work-dir',
         osp.join(work_dir, 'test'), '--show-dir', vis_dir, '--out', out, '--overwrite', *extra])
    metrics = latest_metrics(osp.join(work_dir, 'test'))
    scalars = latest_scalars(work_dir)
    curves = draw_curves(scalars, osp.join(work_dir, 'curves.png'), demo['curves'],
                         title=f'{args.task} demo, {demo["config"]}') if scalars else None
    drawn = sorted(glob.glob(osp.join(vis_dir, '**', '*.png'), recursive=True)
                   + glob.glob(osp.join(vis_dir, '**', '*.jpg'), recursive=True))
    print('\n[demo] ===== summary =====')
    print(f'[demo] task: {args.task}, config: {demo["config"]}')
    for key, value in metrics.items():
        if key.startswith(('mIoU', 'aAcc', 'mAcc', 'coco/bbox_mAP', 'coco/segm_mAP')):
            print(f'[demo] held-out {key}: {value:.3f}' if isinstance(value, float)
                  else f'[demo] held-out {key}: {value}')
    if args.task == 'seg':
        ann_dir = osp.join(ade_root, 'annotations', 'validation')
        for name, value in seg_baselines(ann_dir).items():
            print(f'[demo] baseline mIoU, {name}: {value:.2f}')
    print(f'[demo] drawn predictions (ground truth | prediction): {len(drawn)} files in '
          f'{vis_dir}, e.g. {drawn[0] if drawn else "none"}')
    print(f'[demo] loss and {", ".join(demo["curves"])} curves: {curves or "none (no log)"}')
    print(f'[demo] raw predictions: {out}')
    print(f'[demo] checkpoint: {checkpoint}')
    if scalars:
        print(f'[demo] training log: {osp.dirname(osp.dirname(scalars))} (full output, config)')
    print(f'[demo] total time: {time.time() - start:.0f} s')


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    with stack_warnings_hidden():
        main()
