#!/usr/bin/env bash
# Install the suite into a virtual environment from a wheelhouse (scripts/wheelhouse.sh), with no
# package index and without touching the environment's torch.
#
#   bash scripts/wheelhouse_install.sh VENV [WHEELHOUSE]       # WHEELHOUSE default: wheelhouse
#
# A missing VENV is created by PYTHON (default python3); SYSTEM_SITE=1 creates it with
# --system-site-packages, so that the interpreter's torch (and whatever else it has) is used
# and nothing outside VENV changes. torch must import in VENV (or be in the wheelhouse,
# WITH_TORCH=1). mmcv comes from the wheelhouse's build for this torch, or is built from its
# sdist here (with CUDA ops when a GPU and nvcc are present) and kept in WHEELHOUSE/mmcv for the
# next install. pip's report of the install must not contain torch or torchvision; the torch
# version is compared before and after. Ends with pip check and the imports the suite needs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 VENV [WHEELHOUSE]" >&2
  exit 2
fi
VENV=$1
WH=$(cd "${2:-$ROOT/wheelhouse}" 2>/dev/null && pwd) \
  || { echo "[install] error: no wheelhouse at ${2:-$ROOT/wheelhouse}; make it with make wheelhouse" >&2; exit 1; }
VPY="$VENV/bin/python"
say() { echo "[install] $*" >&2; }
die() { echo "[install] error: $*" >&2; exit 1; }
# Only the wheelhouse: no index, and no find-links or constraints from pip's configuration.
offline_pip() {
  env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null "$VPY" -m pip --disable-pip-version-check install -q \
    --no-index --find-links "$WH" "$@"
}

ls "$WH"/*.whl >/dev/null 2>&1 || die "$WH holds no wheels; make it with make wheelhouse"
if [ ! -x "$VPY" ]; then
  say "creating $VENV${SYSTEM_SITE:+ (seeing the packages of ${PYTHON:-python3})}"
  "${PYTHON:-python3}" -m venv ${SYSTEM_SITE:+--system-site-packages} "$VENV"
  if [ -n "${SYSTEM_SITE:-}" ]; then
    # --system-site-packages shows the base installation's packages only; where PYTHON is itself
    # in a virtual environment (torch often is), its site folders are added by a .pth file.
    "${PYTHON:-python3}" -c 'import site; print("\n".join(site.getsitepackages()))' \
      > "$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/parent-site.pth"
  fi
fi
if ! "$VPY" -c 'import torch' 2>/dev/null; then
  ls "$WH"/torch-*.whl >/dev/null 2>&1 \
    || die "$VENV has no torch and the wheelhouse none either: install the target's torch first (or make the wheelhouse with WITH_TORCH=1)"
  say "installing torch from the wheelhouse"
  offline_pip torch torchvision
fi
torch_before=$("$VPY" -c 'import torch; print(torch.__version__)')
say "torch $torch_before; installing from $WH with no index"

say "build tools (setuptools<82, wheel, ninja, psutil)"
offline_pip "setuptools<82" wheel ninja psutil || die "the wheelhouse lacks a build tool (see above)"

if ! "$VPY" -c 'import mmcv.ops' 2>/dev/null; then
  sdist=$(ls "$WH"/mmcv/mmcv-*.tar.gz 2>/dev/null | head -n 1 || true)
  [ -n "$sdist" ] || die "$WH/mmcv has no mmcv sdist; make the wheelhouse again"
  wheel=$(INCEPTIONNEXT_CACHE="$WH/mmcv" MMCV_SDIST="$sdist" bash "$ROOT/scripts/mmcv_wheel.sh" "$VPY")
  offline_pip --no-deps --force-reinstall "$wheel"
  offline_pip "$wheel" || die "the wheelhouse lacks a requirement of mmcv (see above)"
fi

report=$(mktemp)
trap 'rm -f "$report"' EXIT
say "the suite: pip install -e .[mmdet,mmseg,dev]"
offline_pip --report "$report" -e "$ROOT[mmdet,mmseg,dev]" || die "the wheelhouse lacks a package (see above)"
installed=$("$VPY" "$ROOT/scripts/wheelhouse.py" installs "$report")
if echo "$installed" | grep -qixE 'torch|torchvision'; then
  die "pip installed torch or torchvision although the environment had torch $torch_before"
fi
torch_after=$("$VPY" -c 'import torch; print(torch.__version__)')
[ "$torch_after" = "$torch_before" ] || die "torch changed from $torch_before to $torch_after"
say "pip installed $(echo "$installed" | wc -l) packages, torch and torchvision not among them (torch $torch_after)"

# pip check covers the whole environment; with system site packages, only what names a package
# installed here counts.
problems=$("$VPY" -m pip check 2>&1 | grep -iE "^($(echo "$installed" | paste -sd'|' -)|mmcv) " || true)
[ -z "$problems" ] || die "pip check: $problems"
"$VPY" - <<'PY' || die "the installed suite does not import (see above)"
import mmcv.ops, mmdet, mmseg, mmpretrain, timm, torch, backbones  # noqa: F401
from mmcv.ops import RoIAlign, nms  # noqa: F401
print(f'[install] ready: torch {torch.__version__} (CUDA {torch.version.cuda}), mmcv {mmcv.__version__}'
      f' (ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}')
PY
