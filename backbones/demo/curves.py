"""The training curves of a run as one PNG: loss per logged iteration, validation metrics.

Reads what mmengine's ``LocalVisBackend`` writes (``<work_dir>/<timestamp>/vis_data/
scalars.json``: one JSON object per logged training iteration or validation) and draws with
matplotlib's Agg canvas directly, so no global matplotlib backend or state is changed.
"""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
from collections.abc import Sequence

FIGSIZE, DPI = (10, 4), 100  # a 1000 x 400 pixel PNG


def latest_scalars(work_dir: str) -> str | None:
    """The ``scalars.json`` of the newest run in ``work_dir`` (timestamped folders)."""
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    return found[-1] if found else None


def read_scalars(path: str) -> tuple[list[dict], list[dict]]:
    """(training lines, validation lines) of a ``scalars.json``."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return ([x for x in lines if 'loss' in x and 'iter' in x],
            [x for x in lines if 'loss' not in x])


def draw_curves(scalars: str, out: str, metrics: Sequence[str], title: str = '') -> str:
    """Draw the loss (left) and the validation ``metrics`` (right) of ``scalars`` into the PNG
    ``out``; return ``out``. Validation points are at iterations, or at epochs for an
    epoch-based run (whose training lines carry ``epoch``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, val = read_scalars(scalars)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.plot([x['iter'] for x in train], [x['loss'] for x in train], marker='.')
    left.set(xlabel='iteration', ylabel='training loss', title='loss')
    left.grid(alpha=0.3)
    by_epoch = any('epoch' in x for x in train)
    for key in metrics:
        points = [(x['step'], x[key]) for x in val if key in x]
        if points:
            steps, values = zip(*points)
            right.plot(steps, values, marker='o', label=key)
            right.annotate(f'{values[-1]:.3g}', (steps[-1], values[-1]),
                           textcoords='offset points', xytext=(4, 4))
    right.set(xlabel='epoch' if by_epoch else 'iteration', ylabel='validation metric',
              title='held-out ' + ', '.join(metrics))
    if right.lines:
        right.legend(loc='lower right')
    else:
        right.text(0.5, 0.5, 'no validation logged', ha='center', transform=right.transAxes)
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, format='png')
    return out
