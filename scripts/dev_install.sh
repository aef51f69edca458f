#!/usr/bin/env bash
# Development install into a venv (default .venv; VENV=/path to override):
# builds the extension, copies the compiled artifacts into python/jang/ (git
# ignores them) and points the venv's site-packages/jang at python/jang, so
# Python edits are live without a rebuild. Re-run after changing C++ code.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SRC="$ROOT/python/jang"
"$PY" -m pip install -q scikit-build-core 'nanobind==3.1.0' 'mlx[cpu]==0.32.4'
[ -L "$SITE/jang" ] && rm -f "$SITE/jang"
"$PY" -m pip install -q --no-build-isolation "$ROOT[test]"
rm -rf "$SRC/lib" "$SRC/include" "$SRC/share" "$SRC"/_ext*.so
cp -r "$SITE/jang/lib" "$SITE/jang/include" "$SITE/jang/share" "$SITE"/jang/_ext*.so "$SRC/"
rm -rf "$SITE/jang" && ln -s "$SRC" "$SITE/jang"
# the RUNPATHs ($ORIGIN/../mlx/lib) resolve through the real path of python/jang
ln -sfn "$SITE/mlx" "$ROOT/python/mlx"
"$PY" -c "import jang, jang._ext; print('dev install ok:', jang.__file__)"
