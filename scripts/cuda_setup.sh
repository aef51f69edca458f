#!/usr/bin/env bash
# Build jang with its CUDA kernels on a Linux machine with an NVIDIA GPU and no
# network, from carried wheels; one call sets up a fresh machine.
#
#   WHEELS  folders holding mlx-0.32.4 (cp312), mlx_cuda_13-0.32.4 (whole, or
#           split into *.part* pieces that are joined in name order),
#           nanobind-3.1.0 and fmt_include/ (the headers of Debian's libfmt-dev:
#           MLX's CUDA headers need fmt)
#           default: .whl .whl2 /root/whl
#   SITE    where the wheels are installed (default /tmp/site)
#   BUILD   CMake build folder (default /tmp/jang-build)
#   CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES (default 90-real: the H100 only, to
#               build fast; the project default is 80-real;90)
#
# Writes /tmp/jang_env.sh (PYTHONPATH, LD_LIBRARY_PATH for the nvidia-* wheels
# of the interpreter, CUDA_HOME) and copies the built _ext next to
# python/jang/__init__.py. Then: source /tmp/jang_env.sh; python3 -m pytest
# tests/test_cuda_kernels.py; python3 bench/cuda_bench.py
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SITE=${SITE:-/tmp/site}
BUILD=${BUILD:-/tmp/jang-build}
ARCHS=${CUDA_ARCHS:-90-real}
WHEELS=${WHEELS:-"$ROOT/.whl $ROOT/.whl2 /root/whl"}
STAGE=/tmp/jang-wheels
PY=$(command -v python3)

if [ ! -f "$SITE/mlx/lib/libmlx.so" ]; then
  mkdir -p "$STAGE"
  for d in $WHEELS; do
    if [ -d "$d" ]; then cp -n "$d"/* "$STAGE"/ 2>/dev/null || true; fi
  done
  if ls "$STAGE"/*.part* >/dev/null 2>&1; then
    cat $(ls "$STAGE"/mlx_cuda_13*.part* | sort) >"$STAGE/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl"
    rm -f "$STAGE"/*.part*
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$STAGE"/*.whl
fi
# fmt headers: a carried fmt_include/ folder (from Debian's libfmt-dev), or the system's.
FMT=""
for d in $WHEELS /usr/include; do
  for c in "$d/fmt_include" "$d"; do
    if [ -z "$FMT" ] && [ -f "$c/fmt/format.h" ]; then FMT=$c; fi
  done
done
[ -n "$FMT" ] || { echo "no fmt headers (carry fmt_include/ or install libfmt-dev)"; exit 1; }

NVLIBS=$("$PY" - <<'PYEOF'
import glob, os, site, sys
dirs = set()
for sp in site.getsitepackages() + sys.path:
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PYEOF
)
CUDA_ROOT=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
cat >/tmp/jang_env.sh <<ENVEOF
export PYTHONPATH=$SITE:$ROOT/python
export LD_LIBRARY_PATH=$NVLIBS:\${LD_LIBRARY_PATH:-}
export CUDA_HOME=$CUDA_ROOT CUDA_PATH=$CUDA_ROOT
export PATH=$CUDA_ROOT/bin:\$PATH
ENVEOF
# shellcheck disable=SC1091
source /tmp/jang_env.sh

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DJANG_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$PY" -DJANG_FMT_INCLUDE_DIR="$FMT" \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DCMAKE_CUDA_COMPILER="$CUDA_ROOT/bin/nvcc" \
  -Dnanobind_DIR="$SITE/nanobind/cmake" >"$BUILD.configure.log" 2>&1 ||
  { cat "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)"
# The build tree's RUNPATH finds libjang in $BUILD and libmlx in $SITE.
cp "$BUILD"/_ext*.so "$ROOT/python/jang/"
"$PY" -c "import mlx.core as mx, jang; e = jang.load_extension(); print('jang cuda_enabled:', e.cuda_enabled(), '| device:', mx.default_device())"
