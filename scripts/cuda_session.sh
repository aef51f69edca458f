#!/usr/bin/env bash
# One device call's worth of CUDA work, by phases (bench/RESULTS.md, "CUDA kernels on an H200", lists the calls):
#
#   bash scripts/cuda_session.sh PHASE...     outputs under $OUT (default /tmp/cuda_out)
#
#   info      GPU, driver, clocks, toolchain versions                 -> info.txt
#   harness   bench/cuda_kernels.cu (prebuilt $CBIN/cuda_kernels, else built here with nvcc),
#             arguments from $HARNESS_ARGS                            -> harness.txt
#   fp16      bench/cuda_fp16_torch.py (cuBLAS through PyTorch)      -> fp16.txt
#   setup     wheels from /root/whl (and .whl2/ if carried) + scripts/cuda_setup.sh -> setup.log
#   test      pytest tests/test_cuda_kernels.py (failing: again with JANG_CUDA_QMT_KS=1, kept
#             for the later phases when that passes)                 -> pytest.txt
#   bench     bench/cuda_bench.py $BENCH_ARGS                         -> bench.txt
#   floor     host cost per op (cuda_bench.py --floor-only), plain, with JANG_CUDA_HOST_TIMING=1
#             and with MLX_USE_CUDA_GRAPHS=0                          -> floor.txt
#   chain     bench/cuda_bench.py --chain $BENCH_ARGS                 -> chain.txt
#   ncu       Nsight Compute on the harness kernels: $NCU_ARGS + harness --profile $HARNESS_ARGS
#                                                                     -> ncu.txt
#   ncumlx    Nsight Compute ($NCUMLX_ARGS) over bench/cuda_bench.py --profile $BENCH_ARGS
#                                                                     -> ncu_mlx.csv
#   e2e       bench/cuda_e2e_decode.py $E2E_ARGS, with MLX's CUDA graphs and without -> e2e.txt
#   scale     bench/scale.py $SCALE_ARGS (conversion memory and time per layer; GPTQ on MLX's
#             CUDA device, tuning on torch's)                         -> scale.txt, scale_*.json
#   ptx       MLX's JIT cache ($MLX_PTX_CACHE_DIR) as ptx.tgz, to carry into a later machine
#
# MLX's JIT cache: $CBIN/ptx.tgz is unpacked into $MLX_PTX_CACHE_DIR first when present.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/cuda_out}
CBIN=${CBIN:-$ROOT/.cbin}
export MLX_PTX_CACHE_DIR=${MLX_PTX_CACHE_DIR:-/tmp/mlx_ptx}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$MLX_PTX_CACHE_DIR"
if [ -f "$CBIN/ptx.tgz" ] && [ -z "$(ls -A "$MLX_PTX_CACHE_DIR")" ]; then
  tar -xzf "$CBIN/ptx.tgz" -C "$MLX_PTX_CACHE_DIR"
fi
env_on() { [ -f /tmp/jang_env.sh ] && source /tmp/jang_env.sh; }
harness_bin() {
  if [ -x "$CBIN/cuda_kernels" ] && ! ldd "$CBIN/cuda_kernels" | grep -q "not found"; then
    echo "$CBIN/cuda_kernels"
  else
    nvcc -O3 -std=c++20 --expt-relaxed-constexpr -arch=sm_90 -lineinfo -I"$ROOT/csrc" \
      "$ROOT/bench/cuda_kernels.cu" -o /tmp/cuda_kernels >&2 && echo /tmp/cuda_kernels
  fi
}
for phase in "$@"; do
  t0=$(date +%s)
  case $phase in
  info)
    {
      date -u
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
      nvidia-smi -q | grep -iE "product name|driver version|cuda version|vbios" | head
      nvcc --version | tail -2
      python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__)"
      ncu --version | tail -1
      nproc; uname -r
    } >"$OUT/info.txt" 2>&1
    ;;
  harness)
    B=$(harness_bin)
    timeout "${HARNESS_TIMEOUT:-300}" "$B" ${HARNESS_ARGS:-} 2>&1 | tee "$OUT/harness.txt"
    ;;
  fp16)
    python3 "$ROOT/bench/cuda_fp16_torch.py" ${FP16_ARGS:-} 2>&1 | tee "$OUT/fp16.txt"
    ;;
  setup)
    mkdir -p /root/whl
    [ -d "$ROOT/.whl" ] && cp -n "$ROOT"/.whl/* /root/whl/ 2>/dev/null
    [ -d "$ROOT/.whl" ] && cp -rn "$ROOT"/.whl/fmt_include /root/whl/ 2>/dev/null
    [ -d "$ROOT/.whl2" ] && cp -n "$ROOT"/.whl2/* /root/whl/ 2>/dev/null
    WHEELS=/root/whl bash "$ROOT/scripts/cuda_setup.sh" >"$OUT/setup.log" 2>&1
    echo "setup rc=$?"; tail -3 "$OUT/setup.log"
    ;;
  scale)
    env_on
    # shellcheck disable=SC2086
    python3 "$ROOT/bench/scale.py" $SCALE_ARGS >"$OUT/scale.txt" 2>&1
    echo "scale rc=$?"; tail -12 "$OUT/scale.txt"
    cp "$ROOT"/bench/results/scale_*.json "$OUT"/ 2>/dev/null
    ;;
  test)
    env_on
    if ! timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q "$ROOT/tests/test_cuda_kernels.py" \
      >"$OUT/pytest.txt" 2>&1; then
      tail -40 "$OUT/pytest.txt"
      # Fall back to the tiled kernel's one-warp-per-tile form and say so.
      echo "pytest failed; again with JANG_CUDA_QMT_KS=1"
      if JANG_CUDA_QMT_KS=1 timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q \
        "$ROOT/tests/test_cuda_kernels.py" >"$OUT/pytest_ks1.txt" 2>&1; then
        echo "export JANG_CUDA_QMT_KS=1" >>/tmp/jang_env.sh
      fi
      tail -5 "$OUT/pytest_ks1.txt"
    else
      tail -5 "$OUT/pytest.txt"
    fi
    ;;
  bench)
    env_on
    python3 "$ROOT/bench/cuda_bench.py" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
    ;;
  floor)
    env_on
    {
      echo "default:"; python3 "$ROOT/bench/cuda_bench.py" --floor-only
      echo "JANG_CUDA_HOST_TIMING=1:"; JANG_CUDA_HOST_TIMING=1 python3 "$ROOT/bench/cuda_bench.py" --floor-only
      echo "MLX_USE_CUDA_GRAPHS=0:"; MLX_USE_CUDA_GRAPHS=0 python3 "$ROOT/bench/cuda_bench.py" --floor-only
    } 2>&1 | tee "$OUT/floor.txt"
    ;;
  chain)
    env_on
    python3 "$ROOT/bench/cuda_bench.py" --chain ${BENCH_ARGS:-} 2>&1 | tee "$OUT/chain.txt"
    ;;
  ncu)
    B=$(harness_bin)
    timeout "${NCU_TIMEOUT:-240}" ncu --clock-control none ${NCU_ARGS:-} "$B" --profile ${HARNESS_ARGS:-} \
      >"$OUT/ncu.txt" 2>&1
    echo "ncu rc=$?"; grep -E "^  [a-z_]+.*qm[vt]_kernel|Duration|Throughput|Warp Cycles|Stall" "$OUT/ncu.txt" | head -60
    ;;
  ncumlx)
    env_on
    MLX_USE_CUDA_GRAPHS=0 timeout "${NCU_TIMEOUT:-240}" ncu --csv --clock-control none ${NCUMLX_ARGS:-} \
      python3 "$ROOT/bench/cuda_bench.py" --profile ${BENCH_ARGS:-} >"$OUT/ncu_mlx.csv" 2>"$OUT/ncu_mlx.err"
    echo "ncu rc=$?"; wc -l "$OUT/ncu_mlx.csv"
    ;;
  e2e)
    env_on
    {
      echo "MLX CUDA graphs on (default):"
      python3 "$ROOT/bench/cuda_e2e_decode.py" ${E2E_ARGS:-}
      echo "MLX_USE_CUDA_GRAPHS=0:"
      MLX_USE_CUDA_GRAPHS=0 python3 "$ROOT/bench/cuda_e2e_decode.py" ${E2E_ARGS:-}
    } 2>&1 | tee "$OUT/e2e.txt"
    ;;
  ptx)
    tar -czf "$OUT/ptx.tgz" -C "$MLX_PTX_CACHE_DIR" . && ls -la "$OUT/ptx.tgz"
    ;;
  *)
    echo "unknown phase $phase"
    ;;
  esac
  echo "== $phase: $(($(date +%s) - t0)) s"
done
