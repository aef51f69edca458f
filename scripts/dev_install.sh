#!/usr/bin/env bash
# Development install into a venv (default .venv; VENV=/path to override):
# builds the wheel, copies its compiled artifacts into python/jang/ (git
# ignores them) and points the venv's site-packages/jang at python/jang, so
# Python edits are live without a rebuild. Re-run after changing C++ code;
# the package stays importable while it rebuilds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SRC="$ROOT/python/jang"
if [ ! -L "$SITE/jang" ]; then  # first time: dependencies and the link
  "$PY" -m pip install -q scikit-build-core 'nanobind==3.1.0' 'mlx[cpu]==0.32.4'
  "$PY" -m pip install -q --no-build-isolation "$ROOT[test]"
  rm -rf "$SITE/jang"
  ln -s "$SRC" "$SITE/jang"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK" "$ROOT"
"$PY" -m zipfile -e "$WORK"/jang-*.whl "$WORK/x"
for item in lib include share; do
  rm -rf "$SRC/$item.new" && cp -r "$WORK/x/jang/$item" "$SRC/$item.new"
  rm -rf "$SRC/$item" && mv "$SRC/$item.new" "$SRC/$item"
done
for so in "$WORK"/x/jang/_ext*.so; do cp "$so" "$SRC/.$(basename "$so").new" && mv "$SRC/.$(basename "$so").new" "$SRC/$(basename "$so")"; done
# the RUNPATHs ($ORIGIN/../mlx/lib) resolve through the real path of python/jang
ln -sfn "$SITE/mlx" "$ROOT/python/mlx"
"$PY" -c "import jang, jang._ext; print('dev install ok:', jang.__file__)"
