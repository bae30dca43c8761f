"""Convert checkpoints: ImageNet weights to a clean backbone file, or a trained model to a release.

Installed with the package (``tools/model_converters/convert_checkpoint.py`` is the same command)::

    # official/timm .pth/.bin/.safetensors, timm train.py checkpoints (with or without the head,
    # wrapped or not)
    python -m backbones.convert inceptionnext_tiny.pth pretrain/inceptionnext_t.pth
    # trained mmengine checkpoint -> weights-only release file name-<sha256[:8]>.pth
    python -m backbones.convert work_dirs/x/iter_160000.pth release/upernet_t.pth
    # a file that needs more than the safe allowlist, read with pickle once (only if you trust it)
    python -m backbones.convert --trust-checkpoint SRC clean.pth

``--mode auto`` (default) makes a release from a checkpoint whose ``state_dict`` holds
``backbone.*`` together with other model parts (necks, heads), and a backbone file otherwise;
``--mode backbone`` extracts the backbone of a trained detector or segmentor as well. The output
is written atomically and holds tensors and plain types only, so it loads safely everywhere.
Not imported by ``import backbones``.
"""
from __future__ import annotations

import argparse
import functools
import os.path as osp
import re
from collections.abc import Mapping, Sequence

import torch

from .checkpoint import (
    HEAD_PREFIX,
    blocks_per_stage,
    check_finite,
    extract_state_dict,
    read_checkpoint,
)
from .checks.outputs import check_output_file
from .cli.main import one_line_errors
from .errors import CheckpointError, ConfigError
from .files import write_atomic
from .inception_next import ARCH_SETTINGS, InceptionNeXt

MODULE_PROG = 'python -m backbones.convert'

RELEASE_META_KEYS = ('dataset_meta', 'mmengine_version', 'epoch', 'iter')
_OUT_NORM_KEY = re.compile(r'^norm(\d)\.')


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description='Convert an InceptionNeXt checkpoint')
    parser.add_argument('src', help='.pth, .bin or .safetensors checkpoint')
    parser.add_argument('dst', help='output file (release mode appends -<sha256[:8]>.pth)')
    parser.add_argument('--arch', default='auto', choices=['auto', *ARCH_SETTINGS],
                        help='backbone mode: the arch to verify against (default: detect it)')
    parser.add_argument('--mode', default='auto', choices=['auto', 'backbone', 'release'],
                        help='backbone: clean backbone state dict; release: trained model '
                        'without optimizer state (default: by the checkpoint contents)')
    parser.add_argument('--overwrite', action='store_true',
                        help='backbone mode: replace DST if it exists (never SRC); a release '
                        'file is named by its hash, so an existing one holds the same weights')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='read SRC with pickle, which can run code stored in it: only for '
                        'files you trust; the output then loads safely everywhere')
    return parser.parse_args(argv)


def model_state(checkpoint: Mapping) -> Mapping | None:
    """The ``state_dict`` of an mmengine checkpoint, None for other files."""
    state = checkpoint.get('state_dict')
    return state if isinstance(state, Mapping) else None


def is_trained_model(checkpoint: Mapping) -> bool:
    """True for a detector/segmentor checkpoint: backbone.* keys next to other model parts."""
    state = model_state(checkpoint) or {}
    keys = [k.removeprefix('module.') for k in state]
    return (any(k.startswith('backbone.') for k in keys)
            and any(not k.startswith(('backbone.', 'data_preprocessor.')) for k in keys))


def detect_arch(state: Mapping[str, torch.Tensor], source: str) -> str:
    """The ``ARCH_SETTINGS`` name whose depths and dims the keys and shapes of ``state`` match."""
    blocks = blocks_per_stage(state)
    if sorted(blocks) != [0, 1, 2, 3] or 'stem.0.weight' not in state:
        raise CheckpointError(f'{source} is not an InceptionNeXt checkpoint: no stem.0 and '
                              f'stages.0-3.blocks keys (first keys: {list(state)[:3]})')
    depths = tuple(blocks[i] for i in range(4))
    fc2 = [state.get(f'stages.{i}.blocks.0.mlp.fc2.weight') for i in range(4)]
    dims = tuple(int(w.shape[0]) if isinstance(w, torch.Tensor) else -1 for w in fc2)
    found = [name for name, s in ARCH_SETTINGS.items()
             if tuple(s['depths']) == depths and tuple(s['dims']) == dims]
    if len(found) != 1:
        what = 'matches several archs: ' + ', '.join(found) if found else 'matches no known arch'
        raise CheckpointError(f'{source}: depths {depths} and dims {dims} {what} (known: '
                              + '; '.join(f'{n} {tuple(s["depths"])} {tuple(s["dims"])}'
                                          for n, s in ARCH_SETTINGS.items()) + ')')
    return found[0]


def backbone_state(checkpoint: Mapping, source: str, arch: str) -> tuple[dict, str]:
    """The backbone tensors of ``checkpoint`` without the head, verified by a strict load."""
    state = extract_state_dict(checkpoint, source)
    state = {k: v.contiguous() for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    detected = detect_arch(state, source)
    if arch not in ('auto', detected):
        raise CheckpointError(f'{source} is an InceptionNeXt-{detected} checkpoint, not '
                              f'--arch {arch}; use --arch {detected} or --arch auto')
    norms = sorted({int(m.group(1)) for k in state if (m := _OUT_NORM_KEY.match(k))})
    model = (InceptionNeXt(detected, out_indices=norms) if norms
             else InceptionNeXt(detected, out_norm_cfg=None))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        raise CheckpointError(f'{source} does not load strictly into InceptionNeXt-{detected}: '
                              f'{" ".join(lines)[:300]}') from None
    return state, detected


def release_checkpoint(checkpoint: Mapping) -> dict:
    """Model weights and a minimal meta: no optimizer, scheduler, message hub or EMA state."""
    state = {k.removeprefix('module.'): v for k, v in model_state(checkpoint).items()
             if not k.removeprefix('module.').startswith('data_preprocessor.')}
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), Mapping) else {}
    return {'state_dict': state, 'meta': {k: meta[k] for k in RELEASE_META_KEYS if k in meta}}


def save_torch(obj: dict, path: str) -> None:
    """``torch.save`` through a file object: given a path, torch names the archive inside after
    the (random) temporary file, so the same weights would hash differently on every run."""
    with open(path, 'wb') as f:
        torch.save(obj, f)


def save_backbone(state: dict, dst: str) -> str:
    """Save a flat state dict (``.safetensors`` if ``dst`` is named so, else ``torch.save``)."""
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        return write_atomic(dst, lambda tmp: save_file(state, tmp))
    return write_atomic(dst, lambda tmp: save_torch(state, tmp))


def save_release(release: dict, dst: str) -> str:
    """Save as ``<dst without .pth>-<sha256[:8]>.pth`` (OpenMMLab's publish_model naming)."""
    if dst.endswith('.safetensors'):
        raise ConfigError(f'{dst}: a release file holds meta data too; name it .pth')
    stem = dst[:-len('.pth')] if dst.endswith('.pth') else dst
    return write_atomic(dst, lambda tmp: save_torch(release, tmp),
                        final_name=lambda sha: f'{stem}-{sha[:8]}.pth')


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """The command line (``argv``: ``sys.argv[1:]`` by default): bad input ends with one
    ``error:`` line and exit status 2."""
    one_line_errors(functools.partial(convert, argv, prog))()


def convert(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    args = parse_args(argv, prog)
    check_output_file(args.dst, [args.src], 'DST', overwrite=None)  # the name: by the mode
    if not osp.isfile(args.src):
        raise CheckpointError(f'checkpoint not found: {args.src}')
    checkpoint = read_checkpoint(args.src, trusted=args.trust_checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{args.src} holds a {type(checkpoint).__name__}, not a '
                              'checkpoint dict')
    mode = args.mode
    if mode == 'auto':
        mode = 'release' if is_trained_model(checkpoint) else 'backbone'
    if mode == 'release':
        if model_state(checkpoint) is None:
            raise CheckpointError(f'{args.src} has no state_dict of a trained model; '
                                  '--mode release needs an mmengine checkpoint')
        release = release_checkpoint(checkpoint)
        check_finite(release['state_dict'], None, args.src)
        dropped = sorted(k for k in checkpoint if k not in ('state_dict', 'meta'))
        final = save_release(release, args.dst)
        print(f'release: {len(release["state_dict"])} tensors, meta keys '
              f'{sorted(release["meta"])}; dropped {", ".join(dropped) or "nothing"}')
        print(final)
        return
    check_output_file(args.dst, [args.src], 'DST', overwrite=args.overwrite)
    state, arch = backbone_state(checkpoint, args.src, args.arch)
    check_finite(state, None, args.src)
    final = save_backbone(state, args.dst)
    n = sum(v.numel() for v in state.values() if v.is_floating_point()) / 1e6
    print(f'backbone: InceptionNeXt-{arch}, {len(state)} tensors ({n:.2f} M values), '
          f'loads strictly')
    print(final)


if __name__ == '__main__':
    main(prog=MODULE_PROG)
