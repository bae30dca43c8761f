#!/usr/bin/env bash
# Create or repair a virtual environment with the stack pinned in a lock file, and this project.
#
#   bash scripts/setup_env.sh                          # .venv from requirements/lock.txt
#   VENV=.venv-compat LOCK=requirements/compat.txt EXTRAS=mmdet,mmseg,dev \
#     bash scripts/setup_env.sh                        # the older stack of make test-compat
#
# Idempotent: a healthy, up-to-date environment is verified and left alone; a broken or partial
# one is repaired. PyPI has no mmcv 2.1.0 wheel with ops, so it is built once per torch version
# from the source distribution and the wheel is cached outside the repo
# (${INCEPTIONNEXT_CACHE:-~/.cache/inceptionnext-dense}) so later setups reuse it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/${VENV:-.venv}"
LOCK="$ROOT/${LOCK:-requirements/lock.txt}"
EXTRAS="${EXTRAS:-mmdet,mmseg,dev,onnx}"
PY="$VENV/bin/python"
CACHE="${INCEPTIONNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inceptionnext-dense}"
pin() { grep -ioE "^$1==[^ ;#]+" "$LOCK" 2>/dev/null | head -n 1 || true; }
TORCH_PIN="$(pin torch) $(pin torchvision)"
TORCH_VERSION=$(pin torch | cut -d= -f3)
MMCV_VERSION=$(pin mmcv | cut -d= -f3)
STAMP="$VENV/.setup-stamp"

say() { echo "[setup] $*"; }
quiet() { grep -v "^WARNING: Location '.*' is ignored" >&2 || true; }  # local index noise
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@" 2> >(quiet); }
verify() {
  "$PY" - <<'PY' 2>/dev/null
import mmcv.ops, mmdet, mmseg, timm, torch, backbones  # noqa: F401
from mmcv.ops import nms, RoIAlign  # noqa: F401
PY
}

stamp_value() {
  cat "$ROOT/setup.cfg" "$LOCK" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1
}

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ] && verify; then
  say "environment in .venv is complete and up to date"
  exit 0
fi

# 0. Room: a new .venv holds about 6 GB (torch with its CUDA libraries); an mmcv build needs 1 GB.
NEED_GB=8
free_gb=$(df -Pk "$ROOT" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ ! -d "$VENV" ] && [ "$free_gb" -lt "$NEED_GB" ]; then
  echo "[setup] error: ${free_gb} GB free on the disk of $ROOT; a new .venv needs about" \
    "$NEED_GB GB: free some space and run make setup again" >&2
  exit 1
fi

# 1. The virtual environment itself.
if ! { [ -x "$PY" ] && "$PY" -c 'import sys, pip; assert sys.version_info >= (3, 10)' 2>/dev/null; }; then
  say "creating virtual environment in $(basename "$VENV") (python: $(command -v python3))"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
rm -f "$STAMP"

# 2. torch first: mmcv's build needs it.
if ! "$PY" -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '$TORCH_VERSION'" 2>/dev/null; then
  say "installing $TORCH_PIN (a large download or local wheel; about a minute)"
  pip_install -c "$LOCK" $TORCH_PIN
  if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then  # damaged files, intact metadata
    say "torch is installed but does not import: reinstalling it"
    pip_install --force-reinstall --no-deps -c "$LOCK" $TORCH_PIN
  fi
fi
say "installing build tools (setuptools<82, wheel, ninja, psutil)"
pip_install -c "$LOCK" "setuptools<82" wheel ninja psutil

# 3. mmcv with compiled ops, from the cache or built from source.
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  wheel=$(LOCK="$LOCK" INCEPTIONNEXT_CACHE="$CACHE" bash "$ROOT/scripts/mmcv_wheel.sh" "$PY")
  pip_install --force-reinstall --no-deps "$wheel"
  pip_install -c "$LOCK" "mmcv==$MMCV_VERSION" # its pure-Python dependencies
fi

# 4. The project and the rest of the stack, at the lock file's versions.
say "installing the project and the stack pinned in $(basename "$LOCK") (pip install -e .[$EXTRAS])"
pip_install -c "$LOCK" -e "$ROOT[$EXTRAS]"

# 5. pip counts a package with damaged files but intact metadata as installed: reinstall, at its
#    pin, each one that does not import.
broken=()
for pair in mmengine:mmengine mmdet:mmdet mmseg:mmsegmentation timm:timm mmpretrain:mmpretrain; do
  if ! "$PY" -c "import ${pair%%:*}" 2>/dev/null; then
    broken+=("$(pin "${pair#*:}")")
  fi
done
if [ ${#broken[@]} -gt 0 ]; then
  say "reinstalling packages that are installed but do not import: ${broken[*]}"
  pip_install --force-reinstall --no-deps -c "$LOCK" "${broken[@]}"
fi

say "verifying: import mmcv.ops, mmdet, mmseg, timm, backbones"
if ! verify; then
  "$PY" -c 'import mmcv.ops, mmdet, mmseg, timm, backbones' || true
  say "ERROR: the environment is still broken after setup; see the error above"
  exit 1
fi
stamp_value > "$STAMP"
"$PY" - <<'PY'
import mmcv, mmdet, mmengine, mmseg, timm, torch
print(f'[setup] ready: torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} '
      f'(ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}')
PY
