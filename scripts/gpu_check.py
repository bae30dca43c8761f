"""The benchmark part of scripts/gpu_check.sh: a fixed plan of
tools/analysis_tools/benchmark.py runs within a time budget, and one summary table (summary.md)
with the same numbers as JSON (summary.json).

    python scripts/gpu_check.py --device cuda --budget 300 --out work_dirs/gpu_check
    python scripts/gpu_check.py --device cpu --out /tmp/dry     # tiny sizes, 1 repeat: a dry run

On CUDA the plan is the paper's setting (backbones T/S/B, batch 128 at 224x224, fp32, NCHW and
channels_last, training and inference) against ConvNeXt (mmpretrain) and timm's
``inception_next_*``, the backbone at 2x512x512, and UperNet-T and Mask R-CNN-T training steps
(2x512x512) against ConvNeXt-T in fp32 and AMP, with peak memory where marked. Each run is a
subprocess stopped at the remaining budget; a run that does not fit is reported as skipped, never
left out silently. ``--junit`` adds the test results of the same check to the summary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))  # the benchmark's table writer
from report import input_size, markdown_table  # noqa: E402

# (name, benchmark.py arguments, measure memory), in the order of importance: runs the budget no
# longer allows are the last ones. Memory takes a fresh process per row, so only some runs have it.
CUDA_PLAN = [
    ('backbone-224-fp32', '--models backbone --sizes t,s,b --batch 128 --shape 224 '
     '--mode train,infer --variants ours,ours-deploy,timm,convnext --repeats 5', False),
    ('backbone-224-fp32-cl', '--models backbone --sizes t,s,b --batch 128 --shape 224 '
     '--mode train,infer --variants ours,ours-deploy,timm,convnext --repeats 5 --channels-last',
     False),
    ('upernet-512-fp32', '--models upernet --sizes t --batch 2 --shape 512 --mode train '
     '--variants ours,convnext --repeats 5', True),
    ('upernet-512-amp', '--models upernet --sizes t --batch 2 --shape 512 --mode train '
     '--variants ours,convnext --repeats 5 --amp', True),
    ('maskrcnn-512-fp32', '--models maskrcnn --sizes t --batch 2 --shape 512 --mode train '
     '--variants ours,convnext --repeats 5', True),
    ('maskrcnn-512-amp', '--models maskrcnn --sizes t --batch 2 --shape 512 --mode train '
     '--variants ours,convnext --repeats 5 --amp', True),
    ('backbone-224-fp32-memory', '--models backbone --sizes t --batch 128 --shape 224 '
     '--mode train --variants ours,timm,convnext --repeats 2 --warmup 1', True),
    ('backbone-512-fp32', '--models backbone --sizes t --batch 2 --shape 512 --mode train,infer '
     '--variants ours,ours-cl,timm,convnext --repeats 10', False),
]
# The CPU dry run: the same runs at sizes a CPU finishes in seconds (one with memory, to run it).
CPU_SIZES = {'--sizes t,s,b': '--sizes t', '--batch 128': '--batch 2',
             '--shape 224': '--shape 64', '--shape 512': '--shape 64',
             '--repeats 5': '--repeats 1', '--repeats 2': '--repeats 1',
             '--repeats 10': '--repeats 1', '--warmup 1': ''}


def plan(device: str) -> list[tuple[str, list[str]]]:
    """(name, benchmark.py argv) of every run for ``device``."""
    runs = []
    for name, args, memory in CUDA_PLAN:
        if device == 'cpu':
            for old, new in CPU_SIZES.items():
                args = args.replace(old, new)
            memory = name == 'upernet-512-fp32'
            args += ' --warmup 0 --threads 1 --gemm 256'  # 1 thread: no OpenMP waits
        runs.append((name, [*args.split(), *(['--memory'] if memory else [])]))
    return runs


def run_plan(device: str, out: Path, budget: float, only: list[str] | None = None) -> list[dict]:
    """Run every benchmark of the plan (of ``only``, if given) that the budget still allows; one
    record per run of the plan."""
    deadline = time.monotonic() + budget
    records = []
    for name, args in plan(device):
        argv = [sys.executable, 'tools/analysis_tools/benchmark.py', *args, '--device', device,
                '--out', str(out / name)]
        record = dict(name=name, command=' '.join(['python', *argv[1:]]), status='skipped',
                      seconds=0.0, detail='no time left in the budget')
        left = deadline - time.monotonic()
        if only is not None and name not in only:
            record['detail'] = 'not in --runs'
        elif left > 5:
            print(f'[gpu-check] {name} ({left:.0f} s left)', flush=True)
            start = time.monotonic()
            try:
                proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                      timeout=left, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
                ok = proc.returncode == 0
                tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
                record.update(status='ok' if ok else 'failed', detail='' if ok else tail)
                (out / f'{name}.log').write_text(proc.stdout + proc.stderr)
            except subprocess.TimeoutExpired:
                record.update(status='stopped', detail='stopped at the end of the budget')
            record['seconds'] = round(time.monotonic() - start, 1)
        records.append(record)
    return records


def test_results(junit: Path | None) -> dict | None:
    """Counts and the non-passing tests of a pytest --junitxml file."""
    if junit is None or not junit.is_file():
        return None
    counts = dict(passed=0, failed=0, skipped=0)
    others = []
    for case in ET.parse(junit).getroot().iter('testcase'):
        outcome = next((c for c in case if c.tag in ('failure', 'error', 'skipped')), None)
        kind = 'passed' if outcome is None else 'skipped' if outcome.tag == 'skipped' else 'failed'
        counts[kind] += 1
        if outcome is not None:
            others.append(dict(test=f'{case.get("classname")}::{case.get("name")}', outcome=kind,
                               message=(outcome.get('message') or '').splitlines()[0][:200]
                               if outcome.get('message') else ''))
    return dict(counts=counts, not_passed=others)


def _parts(row: dict) -> str:
    return ' / '.join('-' if row[k] is None else f'{row[k]:.1f}' for k in ('fwd_ms', 'bwd_ms',
                                                                            'opt_ms'))


COLUMNS = [('run', 'run', ''), ('model', 'family', ''), ('size', 'size', ''),
           ('variant', 'variant', ''), ('mode', 'mode', ''), ('input', input_size, ''),
           ('precision', 'precision', ''), ('ms', 'median_ms', '.1f'),
           ('fwd / bwd / opt', _parts, 's'), ('images/s', 'images_per_s', '.1f'),
           ('x timm', 'speed_vs_timm', '.2f'), ('x ConvNeXt', 'speed_vs_convnext', '.2f'),
           ('mem MiB', 'peak_mem_mib', '.0f')]


def summary(records: list[dict], out: Path, device: str, tests: dict | None,
            elapsed: float) -> dict:
    """Collect every run's results.json into summary.json and one markdown table."""
    rows, machine = [], None
    for rec in records:
        path = out / rec['name'] / 'results.json'
        if rec['status'] != 'ok' or not path.is_file():
            continue
        report = json.loads(path.read_text())
        machine = machine or report['machine']
        s = report['settings']
        precision = ('amp' if s['amp'] else 'fp32') + (', channels_last' if s['channels_last']
                                                       else '')
        for r in report['results']:
            rows.append(dict(run=rec['name'], precision=precision, **{k: r[k] for k in (
                'family', 'size', 'variant', 'mode', 'batch', 'shape', 'median_ms',
                'fwd_ms', 'bwd_ms', 'opt_ms', 'images_per_s', 'speed_vs_timm',
                'speed_vs_convnext', 'peak_mem_mib')}))
    data = dict(device=device, machine=machine, seconds=round(elapsed, 1), runs=records,
                tests=tests, rows=rows)
    (out / 'summary.json').write_text(json.dumps(data, indent=1))
    m = machine or {}
    lines = ['# GPU check', '',
             f'- device: {device}; GPU: {m.get("gpu") or "none"}; CPU: {m.get("cpu", "?")}',
             f'- software: Python {m.get("python", "?")}, ' + ', '.join(
                 f'{k} {v}' for k, v in (m.get('versions') or {}).items() if v),
             f'- benchmark time: {elapsed:.0f} s; runs: ' + ', '.join(
                 f'{r["name"]} {r["status"]}' + (f' ({r["detail"]})' if r['detail'] else '')
                 for r in records)]
    if tests:
        c = tests['counts']
        lines.append(f'- tests: {c["passed"]} passed, {c["failed"]} failed, '
                     f'{c["skipped"]} skipped' + ''.join(
                         f'; {t["outcome"]}: {t["test"]} ({t["message"]})'
                         for t in tests['not_passed']))
    lines += ['', 'ms: the median step, split into fwd (forward + loss), bwd (backward), opt '
              '(optimizer step); x timm / x ConvNeXt: throughput ratio of the same run (> 1: '
              'faster); mem: peak MiB for 2 steps (CUDA max_memory_allocated), - where not '
              'measured.', '', *markdown_table(COLUMNS, rows)]
    (out / 'summary.md').write_text('\n'.join(lines) + '\n')
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--budget', type=float, default=300,
                        help='seconds for all benchmark runs together (default 300)')
    parser.add_argument('--out', default='work_dirs/gpu_check')
    parser.add_argument('--junit', help="pytest's --junitxml file of the check's tests")
    parser.add_argument('--runs', help='comma list of the plan\'s runs to do (default: all)')
    args = parser.parse_args(argv)
    only = [r.strip() for r in args.runs.split(',') if r.strip()] if args.runs else None
    names = [name for name, _ in plan(args.device)]
    if only and set(only) - set(names):
        parser.error(f'--runs {args.runs}: the plan has {", ".join(names)}')
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    records = run_plan(args.device, out, args.budget, only)
    data = summary(records, out, args.device, test_results(Path(args.junit)) if args.junit
                   else None, time.monotonic() - start)
    print((out / 'summary.md').read_text())
    print(f'[gpu-check] wrote {out / "summary.md"} and summary.json')
    if any(r['status'] == 'failed' for r in records) or (
            data['tests'] and data['tests']['counts']['failed']):
        sys.exit(1)


if __name__ == '__main__':
    main()
