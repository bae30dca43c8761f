#!/usr/bin/env bash
# One command for a CUDA machine that has torch but no package index: install the suite from a
# wheelhouse, run the tests that matter on CUDA, benchmark, and write one summary table.
#
#   bash scripts/gpu_check.sh                       # wheelhouse/, results in work_dirs/gpu_check
#   bash scripts/gpu_check.sh --device cpu --no-install    # a short dry run of the same steps
#
#   --wheelhouse DIR   made by scripts/wheelhouse.sh for this machine (default wheelhouse)
#   --venv DIR         created by PYTHON (default python3) with --system-site-packages, so the
#                      machine's torch is used and nothing outside DIR changes (default .venv-gpu)
#   --no-install       use the environment of PYTHON (default python3) as it is
#   --tests "ARGS"     pytest arguments (default: tests/test_cuda.py tests/test_install.py)
#   --budget SECONDS   the whole check (default 450: under 8 minutes with the start)
#   --runs NAMES       only these benchmark runs of scripts/gpu_check.py's plan (comma list)
#   --out DIR          (default work_dirs/gpu_check): summary.md, summary.json, tests.xml, logs
#
# A first run builds mmcv with CUDA ops for the present GPU from the wheelhouse's sdist (not
# timed here; it can take most of the budget) and keeps the wheel in WHEELHOUSE/mmcv, so later
# runs reuse it. Benchmark runs that no longer fit the budget are reported as skipped.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda WH=$ROOT/wheelhouse VENV=$ROOT/.venv-gpu INSTALL=1 BUDGET=450
OUT=$ROOT/work_dirs/gpu_check TESTS="tests/test_cuda.py tests/test_install.py" RUNS=
die() { echo "[gpu-check] error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --wheelhouse) WH=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --tests) TESTS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) die "unknown argument $1 (see the top of $0)" ;;
  esac
done
[ "$DEVICE" = cuda ] || [ "$DEVICE" = cpu ] || die "--device $DEVICE: use cuda or cpu"
start=$SECONDS
absolute() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }  # the steps run in ROOT
mkdir -p "$OUT" "$(dirname "$VENV")"
OUT=$(absolute "$OUT") VENV=$(absolute "$VENV")
rm -f "$OUT/tests.xml"
say() { echo "[gpu-check] $* ($((SECONDS - start)) s)"; }

if [ "$INSTALL" = 1 ]; then
  if [ "$DEVICE" = cuda ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # mmcv's CUDA ops for this GPU only: a build for every architecture takes far longer.
    TORCH_CUDA_ARCH_LIST=$("${PYTHON:-python3}" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') \
      || die "torch sees no CUDA device; use --device cpu for a dry run"
    export TORCH_CUDA_ARCH_LIST
  fi
  SYSTEM_SITE=1 bash "$ROOT/scripts/wheelhouse_install.sh" "$VENV" "$WH"
  PY=$VENV/bin/python
else
  PY=${PYTHON:-python3}
  case $PY in */*) PY=$(absolute "$PY") ;; esac
fi
say "installed"
"$PY" - "$DEVICE" <<'PY' || die "the environment is not usable for --device $DEVICE"
import sys
import torch
if sys.argv[1] == 'cuda':
    assert torch.cuda.is_available(), 'torch sees no CUDA device'
    n = torch.cuda.device_count()
    print(f'[gpu-check] {n} x {torch.cuda.get_device_name()}, torch {torch.__version__}, '
          f'CUDA {torch.version.cuda}' + ('' if n > 1 else '; one GPU: the 2-process nccl test '
                                          'will be skipped'))
PY

say "tests: $TESTS"
read -ra test_args <<< "$TESTS"
tests_ok=1
(cd "$ROOT" && timeout $((BUDGET * 2 / 5)) "$PY" -m pytest "${test_args[@]}" --device "$DEVICE" \
  -q -rs -p no:cacheprovider --junitxml "$OUT/tests.xml") 2>&1 | tee "$OUT/tests.log" \
  || tests_ok=0
left=$((BUDGET - (SECONDS - start) - 15))
[ "$left" -gt 0 ] || left=1
say "benchmark, $left s left"
bench_ok=1
(cd "$ROOT" && "$PY" scripts/gpu_check.py --device "$DEVICE" --budget "$left" --out "$OUT" \
  --junit "$OUT/tests.xml" ${RUNS:+--runs "$RUNS"}) || bench_ok=0
say "done"
[ "$tests_ok" = 1 ] || die "tests failed or ran out of time (see $OUT/tests.log)"
[ "$bench_ok" = 1 ] || die "a benchmark run failed (see $OUT/summary.md)"
