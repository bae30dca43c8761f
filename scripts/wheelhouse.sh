#!/usr/bin/env bash
# Fill a folder with every wheel the suite needs for one Python and torch, so that a machine
# without a package index installs it with scripts/wheelhouse_install.sh (pip --no-index).
#
#   make wheelhouse                                   # .venv's Python, the lock's torch
#   make wheelhouse PYTHON=python3.12 TORCH=2.11.0 TARGET=cluster-freeze.txt OUT=wheelhouse-gpu
#
# PYTHON   interpreter of the target's Python version and platform (default .venv/bin/python);
#          pip resolves with its tags and markers
# TORCH    the target's torch version (default: the lock's); TORCHVISION optional
# TARGET   `pip list --format=freeze` of the target: what it has in an accepted version is left out
# OUT      the folder (default wheelhouse/); its wheels and mmcv/ are replaced
# WITH_TORCH=1  include torch and torchvision with their CUDA libraries (default: the target's
#          own torch is kept and the wheelhouse holds neither)
# MMCV=auto|sdist  auto: a wheel built here when PYTHON has that torch (cached, see
#          scripts/mmcv_wheel.sh), plus the sdist; sdist: only the sdist, built on the target
#
# Versions follow requirements/lock.txt where it pins them. The build tools that an mmcv build
# from the sdist needs (setuptools<82, wheel, ninja, psutil) are always included.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
LOCK=${LOCK:-$ROOT/requirements/lock.txt}
OUT=$(mkdir -p "${OUT:-$ROOT/wheelhouse}" && cd "${OUT:-$ROOT/wheelhouse}" && pwd)
pin() { grep -ioE "^$1==[^ ;#]+" "$LOCK" | head -n 1 | cut -d= -f3; }
TORCH=${TORCH:-$(pin torch)}
MMCV_VERSION=$(pin mmcv)
MMCV=${MMCV:-auto}
BUILD_TOOLS=("setuptools<82" wheel ninja psutil)
say() { echo "[wheelhouse] $*" >&2; }
die() { echo "[wheelhouse] error: $*" >&2; exit 1; }
quiet() { grep -v "^WARNING: Location '.*' is ignored" >&2 || true; }  # local index noise

command -v "$PY" >/dev/null \
  || die "no interpreter $PY: run make setup, or give the target's Python, e.g. PYTHON=python3.12"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip; run $PY -m ensurepip first"
[ -n "$TORCH" ] || die "no torch version: give TORCH=..., or a LOCK that pins torch"
[ "$MMCV" = auto ] || [ "$MMCV" = sdist ] || die "MMCV=$MMCV: use auto or sdist"
[ -z "${TARGET:-}" ] || [ -f "$TARGET" ] \
  || die "TARGET=$TARGET does not exist (make it with pip list --format=freeze on the target)"
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "$py_tag, torch $TORCH, into $OUT"
rm -rf "$OUT"/*.whl "$OUT/mmcv"
mkdir -p "$OUT/mmcv"

# 1. mmcv: the sdist always; a wheel too where PYTHON has the target's torch to build against.
# pip reads the sdist's metadata in an isolated build: its setup.py needs setuptools < 82.
echo "setuptools<82" > "$work/build-constraints.txt"
PIP_CONSTRAINT="$work/build-constraints.txt" "$PY" -m pip download --disable-pip-version-check -q \
  --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$OUT/mmcv" 2> >(quiet)
mmcv_req="$OUT/mmcv/mmcv-$MMCV_VERSION.tar.gz"
here_torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$MMCV" = auto ] && [ "$here_torch" = "$TORCH" ]; then
  wheel=$(LOCK="$LOCK" bash "$ROOT/scripts/mmcv_wheel.sh" "$PY")
  mkdir -p "$OUT/mmcv/$(basename "$(dirname "$wheel")")"
  cp "$wheel" "$OUT/mmcv/$(basename "$(dirname "$wheel")")/"
  mmcv_req=$wheel
  mmcv_note="mmcv: wheel $(basename "$(dirname "$wheel")") and the sdist"
else
  mmcv_note="mmcv: sdist only (build it on the target: scripts/wheelhouse_install.sh does)"
fi

# 2. Resolve the whole stack for the target, at the lock's versions and the target's torch.
grep -viE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$LOCK" \
  > "$work/constraints.txt"
echo "torch==$TORCH" >> "$work/constraints.txt"
[ -z "${TORCHVISION:-}" ] || echo "torchvision==$TORCHVISION" >> "$work/constraints.txt"
mapfile -t roots < <("$PY" "$ROOT/scripts/wheelhouse.py" requires "$mmcv_req")
roots+=("${BUILD_TOOLS[@]}")
say "resolving for $py_tag with pip (a dry run: nothing is installed)"
"$PY" -m pip install --disable-pip-version-check -q --dry-run --ignore-installed \
  --report "$work/report.json" -c "$work/constraints.txt" "${roots[@]}" \
  "$ROOT[mmdet,mmseg,dev]" 2> >(quiet) >/dev/null \
  || die "pip could not resolve the stack for $py_tag with torch $TORCH (see above)"

# 3. Download what the target lacks; build the project's wheel.
exclude=torch,torchvision
[ "${WITH_TORCH:-0}" = 1 ] && exclude=
"$PY" "$ROOT/scripts/wheelhouse.py" select "$work/report.json" --roots "${roots[@]}" \
  --exclude "$exclude" --keep setuptools,wheel,ninja,psutil ${TARGET:+--target "$TARGET"} \
  --out "$work/needed.txt" --shims "$OUT"
if [ -s "$work/needed.txt" ]; then
  "$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$OUT" -r "$work/needed.txt" \
    2> >(quiet) >/dev/null || die "pip could not fetch the wheels listed above"
fi
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$OUT" "$ROOT" 2> >(quiet) >/dev/null
count=$(ls "$OUT"/*.whl | wc -l)
torch_note="not included: the target's own is kept"
[ "${WITH_TORCH:-0}" = 1 ] && torch_note=included
cat > "$OUT/WHEELHOUSE.txt" <<EOF
Wheels for $py_tag ($(uname -m)), made $(date -u +%Y-%m-%d) by scripts/wheelhouse.sh${TARGET:+ for $(basename "$TARGET")}.
torch $TORCH: $torch_note
$mmcv_note
Install with no index: bash scripts/wheelhouse_install.sh VENV $(basename "$OUT")
EOF
say "$count wheels, $(du -sh "$OUT" | cut -f1) in $OUT; $mmcv_note"
