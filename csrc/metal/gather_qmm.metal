// gather_qmm: out[i, r] = x[lhs[i], r] @ dequantize(w[rhs[i]]).T for batch
// entry i and row r < M, like mx.gather_qmm with transpose=True. Entries whose
// lhs or rhs index is out of range give zeros (as on the CPU). Activations and
// outputs are T (the host casts x to the output type); scales and biases S.
//
// jang_gather_qmv (decode, few rows): one threadgroup per output row (i, r);
// each SIMD group owns qmv_rows(1) output columns and its lanes walk their
// packs as in jang_qmv, combined with simd_sum.
//
// jang_gather_qmm (sorted, many rows): jang_moe_route (moe.metal) groups the
// batch entries by rhs index; each expert's rows, M per entry, then run as
// kQmmBM x kQmmBN tiles like jang_qmm (staged tiles, simdgroup matrices),
// activations gathered through the permutation and outputs scattered back to
// their (i, r) rows.
#include "jang_metal.h"
#include "params.h"

using namespace jang;
using namespace jang::metal_params;

// Grid (ceil(N / (kQmvSimdGroups * qmv_rows(1))), entries * M).
template <typename T, typename S, int BITS>
[[kernel]] void jang_gather_qmv(
    const device T* x [[buffer(0)]],
    const device uint32_t* w [[buffer(1)]],
    const device S* scales [[buffer(2)]],
    const device S* biases [[buffer(3)]],
    device T* out [[buffer(4)]],
    constant int& M [[buffer(5)]],
    constant int& N [[buffer(6)]],
    constant int& K [[buffer(7)]],
    constant int& group_size [[buffer(8)]],
    const device uint32_t* lhs [[buffer(9)]],
    const device uint32_t* rhs [[buffer(10)]],
    constant int& bx [[buffer(11)]],
    constant int& experts [[buffer(12)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  constexpr int R = qmv_rows(1);
  const int64_t row = tgid.y;
  const int64_t entry = row / M;
  const uint li = lhs[entry];
  const uint e = rhs[entry];
  const int n0 = (static_cast<int>(tgid.x) * kQmvSimdGroups + simd_gid) * R;
  device T* o = out + row * N;
  if (li >= static_cast<uint>(bx) || e >= static_cast<uint>(experts)) {
    // uniform across the threadgroup
    if (lane < R && n0 + static_cast<int>(lane) < N) {
      o[n0 + lane] = static_cast<T>(0.0f);
    }
    return;
  }
  const device T* xr = x + (static_cast<int64_t>(li) * M + row % M) * K;
  const int64_t words = static_cast<int64_t>(K) * BITS / 32;
  const int groups = K / group_size;
#pragma clang loop unroll(full)
  for (int r = 0; r < R; ++r) {
    // Columns past N repeat the last one; their sums are never written.
    const int64_t wrow = static_cast<int64_t>(e) * N + min(n0 + r, N - 1);
    const float v = simd_sum(metal_kernels::lane_row_dot<BITS>(
        xr,
        w + wrow * words,
        scales + wrow * groups,
        biases + wrow * groups,
        K,
        group_size,
        lane));
    if (lane == 0 && n0 + r < N) {
      o[n0 + r] = static_cast<T>(v);
    }
  }
}

// The output row (entry * M + r) of row t of a sorted tile: the tile's rows
// are rows row0 .. of its bucket's entries perm[first ..], M rows each.
inline int64_t tile_row(
    metal_kernels::RowTile tile, const device uint32_t* perm, int M, int t) {
  const int q = tile.row0 + t;
  return static_cast<int64_t>(perm[tile.first + q / M]) * M + q % M;
}

// Grid (ceil(N / BN), row tiles, see row_tile), threads kQmmThreads.
// buffer(10) is the permutation of the entries and buffer(13) the offsets
// from jang_moe_route over rhs; the other buffers are those of
// jang_gather_qmv.
template <typename T, typename S, int BITS>
[[kernel]] void jang_gather_qmm(
    const device T* x [[buffer(0)]],
    const device uint32_t* w [[buffer(1)]],
    const device S* scales [[buffer(2)]],
    const device S* biases [[buffer(3)]],
    device T* out [[buffer(4)]],
    constant int& M [[buffer(5)]],
    constant int& N [[buffer(6)]],
    constant int& K [[buffer(7)]],
    constant int& group_size [[buffer(8)]],
    const device uint32_t* lhs [[buffer(9)]],
    const device uint32_t* perm [[buffer(10)]],
    constant int& bx [[buffer(11)]],
    constant int& experts [[buffer(12)]],
    const device uint32_t* offsets [[buffer(13)]],
    threadgroup float* xs [[threadgroup(0)]],
    threadgroup float* ws [[threadgroup(1)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint simd_gid [[simdgroup_index_in_threadgroup]]) {
  constexpr int BM = kQmmBM;
  constexpr int BN = kQmmBN;
  constexpr int BK = kQmmBK;
  constexpr int TN = kQmmTN;
  constexpr int LOADS = BM * BK / kQmmThreads; // x values per thread per step
  constexpr int CODES = BN * BK / kQmmThreads; // codes per thread per step
  static_assert(BK % LOADS == 0 && BK % CODES == 0, "one row per thread");
  static_assert(BK * BITS % 32 == 0, "whole words per step");
  const metal_kernels::RowTile tile =
      metal_kernels::row_tile(offsets, experts, M, tgid.y);
  if (tile.rows <= 0) { // uniform: a spare tile of its bucket
    return;
  }
  const int n0 = static_cast<int>(tgid.x) * BN;
  // This thread's outputs: tile row tm, columns n0 + tn .. + TN.
  const int tm = tid / (BN / TN);
  const int tn = (tid % (BN / TN)) * TN;
  const bool out_row = tm < tile.rows;
  const int64_t out_at = out_row ? tile_row(tile, perm, M, tm) : 0;
  device T* o = out + out_at * N + n0 + tn;
  if (tile.bucket == experts) { // uniform: out-of-range rhs gives zeros
    if (out_row) {
      for (int j = 0; j < TN && n0 + tn + j < N; ++j) {
        o[j] = static_cast<T>(0.0f);
      }
    }
    return;
  }
  const bool out_zero = out_row && lhs[out_at / M] >= static_cast<uint>(bx);
  // What this thread stages: activations of tile row xr, columns xc ..;
  // codes wc .. of weight row n0 + wr.
  const int xr = tid * LOADS / BK;
  const int xc = tid * LOADS % BK;
  int64_t x_row = -1; // none: past the tile's rows, or lhs out of range
  if (xr < tile.rows) {
    const int64_t at = tile_row(tile, perm, M, xr);
    const uint li = lhs[at / M];
    x_row =
        li < static_cast<uint>(bx) ? li * static_cast<int64_t>(M) + at % M : -1;
  }
  const device T* xsrc = x + (x_row < 0 ? 0 : x_row) * K + xc;
  const int wr = tid * CODES / BK;
  const int wc = tid * CODES % BK;
  const int64_t wrow =
      static_cast<int64_t>(tile.bucket) * N + min(n0 + wr, N - 1);
  const int64_t words = static_cast<int64_t>(K) * BITS / 32;
  const int groups = K / group_size;

  static_assert(BM * BN <= BM * BK, "the output tile fits in xs");
  metal_kernels::TileMma mma(simd_gid);

  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma clang loop unroll(full)
    for (int i = 0; i < LOADS; ++i) {
      xs[xr * BK + xc + i] =
          x_row >= 0 ? static_cast<float>(xsrc[k0 + i]) : 0.0f;
    }
    {
      const int g = k0 / group_size;
      metal_kernels::stage_weights<BITS, CODES>(
          w + wrow * words + k0 / 32 * BITS,
          wc,
          static_cast<float>(scales[wrow * groups + g]),
          static_cast<float>(biases[wrow * groups + g]),
          ws + wr * BK + wc);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    mma.multiply(xs, ws);
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  mma.store(xs); // free after the last barrier
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (out_row) {
#pragma clang loop unroll(full)
    for (int j = 0; j < TN; ++j) {
      if (n0 + tn + j < N) {
        o[j] = static_cast<T>(out_zero ? 0.0f : xs[tm * BN + tn + j]);
      }
    }
  }
}

// Host names: jang_gather_qmv_<x>_<scales>_b<bits>, jang_gather_qmm_<..>.
#define instantiate_gather(bits, xn, xt, sn, st)                               \
  JANG_INSTANTIATE(                                                            \
      "jang_gather_qmv_" #xn "_" #sn "_b" #bits,                               \
      jang_gather_qmv,                                                         \
      xt,                                                                      \
      st,                                                                      \
      bits)                                                                    \
  JANG_INSTANTIATE(                                                            \
      "jang_gather_qmm_" #xn "_" #sn "_b" #bits,                               \
      jang_gather_qmm,                                                         \
      xt,                                                                      \
      st,                                                                      \
      bits)

#define instantiate_gather_bits(xn, xt, sn, st) \
  JANG_FOR_EACH_BITS(instantiate_gather, xn, xt, sn, st)

// clang-format off
instantiate_gather_bits(float32, float, float32, float)
instantiate_gather_bits(float16, half, float16, half)
instantiate_gather_bits(bfloat16, bfloat, bfloat16, bfloat)
instantiate_gather_bits(float32, float, float16, half)
instantiate_gather_bits(float32, float, bfloat16, bfloat)
// clang-format on
