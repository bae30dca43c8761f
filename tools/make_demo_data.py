"""Write the small synthetic demo set (ADE20K and COCO formats) used by `make demo`.

    python tools/make_demo_data.py [--out data/demo] [--force]

Writes OUT/ade/ADEChallengeData2016 (the data_root of ADE20KDataset) and OUT/coco (the data_root
of CocoDataset); a complete set is left alone unless --force is given.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import time

from backbones.checks.outputs import check_output_folder
from backbones.cli.main import one_line_errors
from backbones.demo.data import (
    DEMO_ROOT,
    MARKER_FILE,
    ensure_demo_data,
    make_ade20k,
    make_coco,
)
from backbones.errors import UserError


def _marker_mtime(path: str) -> float | None:
    return osp.getmtime(path) if osp.isfile(path) else None


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description='Write the synthetic ADE20K/COCO demo set')
    parser.add_argument('--out', default=DEMO_ROOT, help=f'output folder (default: {DEMO_ROOT})')
    parser.add_argument('--force', '--overwrite', dest='force', action='store_true',
                        help='regenerate even if a complete set is already there (only a set '
                        'this tool wrote: other data in --out is never replaced)')
    args = parser.parse_args()
    check_output_folder(args.out, '--out')
    markers = {k: osp.join(args.out, k, MARKER_FILE) for k in ('ade', 'coco')}
    before = {k: _marker_mtime(p) for k, p in markers.items()}
    start = time.time()
    try:
        if args.force:
            make_ade20k(osp.join(args.out, 'ade'))
            make_coco(osp.join(args.out, 'coco'))
        ade_root, coco_root = ensure_demo_data(args.out)
    except FileExistsError as e:
        raise UserError(f'{e} (choose another --out)') from None
    for key, root in (('ade', ade_root), ('coco', coco_root)):
        with open(markers[key]) as f:
            info = json.load(f)
        state = 'up to date' if _marker_mtime(markers[key]) == before[key] else 'written'
        print(f'{root}: {state} ({info["n_train"]} train + {info["n_val"]} val images of '
              f'{info["size"]}x{info["size"]}, seed {info["seed"]})')
    print(f'ADE20K data_root={ade_root}  COCO data_root={coco_root}  '
          f'({time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
