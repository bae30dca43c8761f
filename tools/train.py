"""Train a detector or segmentor from an mmdet or mmseg config (the upstream tools/train.py flags).

    python tools/train.py configs/upernet_inceptionnext_t_ade20k.py [--amp] [--resume]
"""
from __future__ import annotations

import argparse
import os.path as osp
from contextlib import ExitStack

import torch

from backbones.checkpoint import fit_model_checkpoint, fit_some_weights
from backbones.checks.data import readable_data_errors
from backbones.checks.outputs import check_work_dir, same_file
from backbones.cli.main import add_runner_args, one_line_errors
from backbones.config import default_work_dir, load_config
from backbones.errors import CheckpointError, ConfigError
from backbones.runtime.amp import float32_mmcv_ops
from backbones.runtime.hooks.atomic_checkpoints import latest_complete_checkpoint
from backbones.runtime.prepare import build_runner
from backbones.runtime.workdir import move_previous_run, previous_run_folder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true', help='mixed precision training '
                        '(fp16 on CUDA, bfloat16 on the CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                        'work dir if no path is given (an error if there is none; '
                        '--cfg-options resume=True is mmengine\'s "resume if possible")')
    parser.add_argument('--overwrite', action='store_true',
                        help='start over in a work dir that holds the checkpoints of a run: '
                        'they (and last_checkpoint) are moved to WORK_DIR/previous_<time>/')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='read the --resume checkpoint with pickle, which can run code '
                        'stored in it: only for files you trust (default: refuse any file '
                        'that holds more than tensors and plain types)')
    add_runner_args(parser)
    return parser.parse_args()


@one_line_errors
def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ConfigError(f'{args.config} has no auto_scale_lr.base_batch_size; add one '
                              'to use --auto-scale-lr')
        cfg.auto_scale_lr.enable = True
    if args.resume is not None and args.overwrite:
        raise ConfigError('--resume continues the run in the work dir, --overwrite starts over '
                          'there: give one of them')
    previous = check_work_dir(cfg.work_dir, resume=args.resume is not None or
                              bool(cfg.get('resume')), overwrite=args.overwrite)
    dump = osp.join(cfg.work_dir, osp.basename(args.config))
    if same_file(dump, args.config):
        raise ConfigError(f'config {args.config} lies in the work dir, where the run saves its '
                          'copy of the config under the same name: move the config, or give '
                          'another --work-dir')
    if args.resume == 'auto':
        # the newest complete checkpoint, even if a kill left last_checkpoint stale
        latest = latest_complete_checkpoint(cfg.work_dir)
        if latest is None:
            raise CheckpointError(f'--resume: nothing to resume in {cfg.work_dir} (no checkpoint '
                                  'there): give the run\'s --work-dir or --resume PATH, or start '
                                  'a new run without --resume')
        cfg.resume, cfg.load_from = True, latest
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise CheckpointError(f'--resume {args.resume}: no such checkpoint file (give a '
                                  'path, or --resume alone for the latest in the work dir)')
        cfg.resume, cfg.load_from = True, args.resume
    load_from = cfg.get('load_from')  # where the file is during the checks (load_config: it exists)
    aside = previous_run_folder(cfg.work_dir) if args.overwrite and previous else None
    if aside and load_from and osp.basename(load_from) in previous and \
            osp.abspath(osp.dirname(load_from)) == osp.abspath(cfg.work_dir):
        cfg.load_from = osp.join(aside, osp.basename(load_from))  # where --overwrite moves it
    trusted = [load_from, cfg.load_from] if args.trust_checkpoint and load_from else []
    with ExitStack() as lock:  # the work dir's lock, held until training ends
        runner = build_runner(cfg, args.launcher, ('train_dataloader', 'val_dataloader'),
                              train=True, amp=args.amp, trusted_checkpoints=trusted, lock=lock)
        if cfg.get('resume') and load_from:  # one-line errors for a bad --resume
            check_resumable(runner.model, load_from, trusted=bool(trusted))
        elif load_from:  # missing, empty, nothing fits, non-finite: one line, not mid-run
            fit_some_weights(runner.model, load_from, trusted=bool(trusted))
        if aside and move_previous_run(cfg.work_dir, previous, aside):  # every check passed
            runner.logger.info(f'--overwrite: moved the previous run\'s checkpoints '
                               f'({", ".join(previous)}) aside to {aside}/')
        train(runner, cfg, args.amp)


def train(runner, cfg, amp: bool) -> None:
    with readable_data_errors(cfg), float32_mmcv_ops(amp and not torch.cuda.is_available()):
        try:
            runner.train()
        except ValueError as e:
            if not cfg.get('resume') or 'parameter group' not in str(e):
                raise
            raise CheckpointError(
                f'--resume {cfg.load_from}: its optimizer state has parameter groups of other '
                'sizes than this config builds (the lr-decay grouping, frozen stages or model '
                'changed since it was saved); resume with the settings it was trained with, or '
                f'start from its weights with --cfg-options load_from={cfg.load_from}') from None


def check_resumable(model: torch.nn.Module, path: str, trusted: bool) -> None:
    """A resume checkpoint fits the model and holds the training state (optimizer, iteration):
    a released or weights-only file is refused with the way to fine-tune from it instead."""
    checkpoint, _ = fit_model_checkpoint(model, path, trusted=trusted)
    lacking = [k for k in ('optimizer', 'message_hub', 'meta') if k not in checkpoint]
    if lacking:
        raise CheckpointError(f'--resume {path} holds weights only (no {", ".join(lacking)}): '
                              'resuming needs a checkpoint saved during training (work_dirs/'
                              'NAME/iter_N.pth); to train from its weights use --cfg-options '
                              f'load_from={path}')


if __name__ == '__main__':
    main()
