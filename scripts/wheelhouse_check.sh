#!/usr/bin/env bash
# The wheelhouse round trip on this machine: a new virtual environment, torch from pip's usual
# sources (index or cache), the suite from the wheelhouse with no index (scripts/wheelhouse_install.sh
# checks that torch is kept), then the fast tests there.
#
#   make wheelhouse-check            # uses wheelhouse/ (make wheelhouse first)
#
# PYTHON (default .venv/bin/python) creates the environment; TORCH and TORCHVISION default to the
# lock's. The environment (about 6 GB with torch's CUDA libraries) is made in a temporary folder
# and removed at the end; KEEP=1 keeps it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOCK=${LOCK:-$ROOT/requirements/lock.txt}
PY=${PYTHON:-$ROOT/.venv/bin/python}
WH=${WHEELHOUSE:-$ROOT/wheelhouse}
pin() { grep -ioE "^$1==[^ ;#]+" "$LOCK" | head -n 1 | cut -d= -f3; }
TORCH=${TORCH:-$(pin torch)}
TORCHVISION=${TORCHVISION:-$(pin torchvision)}
say() { echo "[wheelhouse-check] $*" >&2; }

[ -d "$WH" ] || { echo "[wheelhouse-check] error: no wheelhouse at $WH; run make wheelhouse first" >&2; exit 1; }
tmp=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
venv="$tmp/venv"
start=$SECONDS
say "new environment in $venv (python: $("$PY" -c 'import sys; print(sys.version.split()[0])'))"
"$PY" -m venv "$venv"
say "torch $TORCH and torchvision $TORCHVISION from pip's usual sources"
"$venv/bin/python" -m pip install --disable-pip-version-check -q "torch==$TORCH" \
  "torchvision==$TORCHVISION" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2 || true)
t_torch=$((SECONDS - start))
bash "$ROOT/scripts/wheelhouse_install.sh" "$venv" "$WH"
t_install=$((SECONDS - start - t_torch))
say "fast tests in the new environment"
status=0
(cd "$ROOT" && "$venv/bin/python" -m pytest tests -q -m "not slow" -p no:cacheprovider) || status=$?
say "torch ${t_torch} s, install from the wheelhouse ${t_install} s, tests" \
  "$((SECONDS - start - t_torch - t_install)) s; pytest exit status $status"
exit "$status"
