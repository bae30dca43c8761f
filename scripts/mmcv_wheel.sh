#!/usr/bin/env bash
# Print the path of an mmcv wheel with compiled ops for the torch of PYTHON, building it once.
#
#   bash scripts/mmcv_wheel.sh PYTHON
#
# PyPI has only mmcv's source, so the wheel is built against the torch installed for PYTHON and
# cached in $INCEPTIONNEXT_CACHE (default ~/.cache/inceptionnext-dense), one folder per
# mmcv version, torch build, Python tag and ops flavour; later calls print the cached wheel.
# The flavour is CUDA when torch sees a GPU and nvcc is on the PATH (or FORCE_CUDA=1), CPU
# otherwise; TORCH_CUDA_ARCH_LIST, when set, names the GPUs a CUDA build is for and is part of the
# cache key. MMCV_SDIST=FILE builds from a local sdist (no index needed); without it the sdist is
# downloaded. PYTHON's environment must already hold torch and the build tools (setuptools<82,
# wheel, ninja, psutil): the build runs without isolation so that it sees that torch.
# Progress goes to stderr, the wheel's path to stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 1 ]; then
  echo "usage: $0 PYTHON" >&2
  exit 2
fi
PY=$1
LOCK="${LOCK:-$ROOT/requirements/lock.txt}"
MMCV_VERSION=${MMCV_VERSION:-$(grep -ioE '^mmcv==[^ ;#]+' "$LOCK" | head -n 1 | cut -d= -f3)}
CACHE="${INCEPTIONNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inceptionnext-dense}"
say() { echo "[mmcv] $*" >&2; }

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "[mmcv] error: $PY cannot import torch; install torch first (mmcv is built against it)" >&2
  exit 1
fi
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    && command -v nvcc >/dev/null || [ "${FORCE_CUDA:-0}" = 1 ]; then
  flavour=cuda; export FORCE_CUDA=1
  if [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    flavour="cuda-sm$(echo "$TORCH_CUDA_ARCH_LIST" | tr -cd '0-9;' | tr ';' '-')"
  fi
else
  flavour=cpu
fi
torch_tag=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheel_dir="$CACHE/mmcv-$MMCV_VERSION-torch$torch_tag-$py_tag-$flavour"
wheel=$(ls "$wheel_dir"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
  say "using the cached wheel $wheel"
  echo "$wheel"
  exit 0
fi

missing=$("$PY" - <<'PY'
import importlib.util
print(' '.join(m for m in ('setuptools', 'wheel', 'ninja', 'psutil')
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "[mmcv] error: the build needs $missing in the environment of $PY; install them first" >&2
  exit 1
fi
say "building mmcv $MMCV_VERSION with $flavour ops for torch $torch_tag ($py_tag): about 15 minutes on 2 cores"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ -n "${MMCV_SDIST:-}" ]; then
  [ -f "$MMCV_SDIST" ] || { echo "[mmcv] error: MMCV_SDIST=$MMCV_SDIST does not exist" >&2; exit 1; }
  cp "$MMCV_SDIST" "$build/"
else
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    "mmcv==$MMCV_VERSION" -d "$build" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2 || true)
fi
tar -xzf "$build"/mmcv-$MMCV_VERSION.tar.gz -C "$build"
# torch >= 2.6 headers need C++20; mmcv 2.1.0 hard-codes C++17 (open-mmlab/mmcv#3341).
if "$PY" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 6))'; then
  sed -i 's/-std=c++17/-std=c++20/g' "$build/mmcv-$MMCV_VERSION/setup.py"
fi
(cd "$build/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="-g0" \
  "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps --no-index . \
  -w "$build/dist" >&2)
mkdir -p "$wheel_dir"
cp "$build"/dist/mmcv-*.whl "$wheel_dir/.tmp.whl"
wheel="$wheel_dir/$(basename "$build"/dist/mmcv-*.whl)"
mv "$wheel_dir/.tmp.whl" "$wheel"
say "cached the mmcv wheel at $wheel"
echo "$wheel"
