// qmatmul: out = x @ dequantize(w).T, accumulated in fp32.
//
// jang_qmv (M <= 16): each SIMD group owns qmv_rows(MT) output rows; its 32
// lanes walk the packs of those rows (lane j takes packs j, j + 32, ...: a
// SIMD group reads 32 consecutive packs, one contiguous run of words per
// step), decode each pack once with compile-time shifts and apply it to all
// MT activation rows, so 2..16 rows share one pass over the weights. Per pack
// the identity s * sum(x q) + b * sum(x) (affine::group_dot) is used; lanes
// are combined with simd_sum at the end.
//
// jang_qmm (M > 16): 32 x 32 output tiles; per K step of 32 the threadgroup
// stages the activation tile and the dequantized weight tile in threadgroup
// memory, then its four SIMD groups multiply them with simdgroup matrices
// (metal_kernels::TileMma), 16 x 16 outputs each; each thread then writes one
// row by 8 columns of the tile.
//
// Activations and outputs are T (the host casts x to the output type); scales
// and biases are S. Rows are contiguous; K is a multiple of the group size.
#include "jang_metal.h"
#include "params.h"

using namespace jang;
using namespace jang::metal_params;

template <typename T, typename S, int BITS, int MT>
[[kernel]] void jang_qmv(
    const device T* x [[buffer(0)]],
    const device uint32_t* w [[buffer(1)]],
    const device S* scales [[buffer(2)]],
    const device S* biases [[buffer(3)]],
    device T* out [[buffer(4)]],
    constant int& M [[buffer(5)]],
    constant int& N [[buffer(6)]],
    constant int& K [[buffer(7)]],
    constant int& group_size [[buffer(8)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  using P = affine::Pack<BITS>;
  constexpr int C = P::codes;
  constexpr int R = qmv_rows(MT);
  const int row0 = (static_cast<int>(tgid.x) * kQmvSimdGroups + simd_gid) * R;
  const int m0 = static_cast<int>(tgid.z) * MT;
  const int mn = min(MT, M - m0);
  const int packs = K / C;
  const int64_t words_per_row = static_cast<int64_t>(packs) * P::words;
  const int groups = K / group_size;
  const int packs_per_group = group_size / C;
  const device T* xm = x + static_cast<int64_t>(m0) * K;

  float acc[R][MT];
#pragma clang loop unroll(full)
  for (int r = 0; r < R; ++r) {
#pragma clang loop unroll(full)
    for (int m = 0; m < MT; ++m) {
      acc[r][m] = 0.0f;
    }
  }

  for (int p = lane; p < packs; p += kSimdWidth) {
    const int g = p / packs_per_group;
    const int k0 = p * C;
    float xsum[MT];
    for (int m = 0; m < MT; ++m) {
      float s = 0.0f;
      if (m < mn) {
        for (int t = 0; t < C; ++t) {
          s += static_cast<float>(xm[m * K + k0 + t]);
        }
      }
      xsum[m] = s;
    }
    for (int r = 0; r < R; ++r) {
      // Rows past N repeat the last row; their sums are never written.
      const int64_t row = min(row0 + r, N - 1);
      float q[C];
      metal_kernels::load_pack<BITS>(w + row * words_per_row + p * P::words, q);
      const float s = static_cast<float>(scales[row * groups + g]);
      const float b = static_cast<float>(biases[row * groups + g]);
      for (int m = 0; m < MT; ++m) {
        if (m < mn) {
          float xq = 0.0f;
#pragma clang loop unroll(full)
          for (int t = 0; t < C; ++t) {
            xq += static_cast<float>(xm[m * K + k0 + t]) * q[t];
          }
          acc[r][m] += affine::group_dot(s, b, xq, xsum[m]);
        }
      }
    }
  }

#pragma clang loop unroll(full)
  for (int r = 0; r < R; ++r) {
#pragma clang loop unroll(full)
    for (int m = 0; m < MT; ++m) {
      if (m < mn) { // uniform across the SIMD group
        const float v = simd_sum(acc[r][m]);
        if (lane == 0 && row0 + r < N) {
          out[static_cast<int64_t>(m0 + m) * N + row0 + r] = static_cast<T>(v);
        }
      }
    }
  }
}

template <typename T, typename S, int BITS>
[[kernel]] void jang_qmm(
    const device T* x [[buffer(0)]],
    const device uint32_t* w [[buffer(1)]],
    const device S* scales [[buffer(2)]],
    const device S* biases [[buffer(3)]],
    device T* out [[buffer(4)]],
    constant int& M [[buffer(5)]],
    constant int& N [[buffer(6)]],
    constant int& K [[buffer(7)]],
    constant int& group_size [[buffer(8)]],
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
  constexpr int CODES = BN * BK / kQmmThreads; // weights per thread per step
  static_assert(BK % 32 == 0 && BK * BITS % 32 == 0, "whole words per step");
  const int m0 = static_cast<int>(tgid.y) * BM;
  const int n0 = static_cast<int>(tgid.x) * BN;
  const int64_t words_per_row = static_cast<int64_t>(K) * BITS / 32;
  const int groups = K / group_size;
  // This thread's outputs: row tm, columns tn .. tn + TN.
  const int tm = tid / (BN / TN);
  const int tn = (tid % (BN / TN)) * TN;
  // What this thread stages: x values tid*LOADS.., weight row wr, codes wc..
  const int wr = tid / (BK / CODES);
  const int wc = (tid % (BK / CODES)) * CODES;
  const int64_t wrow = min(n0 + wr, N - 1);

  static_assert(BM * BN <= BM * BK, "the output tile fits in xs");
  metal_kernels::TileMma mma(simd_gid);

  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma clang loop unroll(full)
    for (int i = 0; i < LOADS; ++i) {
      const int idx = tid * LOADS + i;
      const int r = idx / BK;
      const int c = idx % BK;
      xs[r * BK + c] = m0 + r < M
          ? static_cast<float>(x[static_cast<int64_t>(m0 + r) * K + k0 + c])
          : 0.0f;
    }
    {
      const device uint32_t* words =
          w + wrow * words_per_row + k0 / 32 * BITS;
      const int g = k0 / group_size;
      const float s = static_cast<float>(scales[wrow * groups + g]);
      const float b = static_cast<float>(biases[wrow * groups + g]);
#pragma clang loop unroll(full)
      for (int i = 0; i < CODES; ++i) {
        const float q =
            static_cast<float>(affine::code_at<BITS>(words, wc + i));
        ws[wr * BK + wc + i] = s * q + b;
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    mma.multiply(xs, ws);
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  // The product goes through threadgroup memory (free after the last
  // barrier) to the threads that write it out.
  mma.store(xs);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (m0 + tm < M) {
#pragma clang loop unroll(full)
    for (int j = 0; j < TN; ++j) {
      if (n0 + tn + j < N) {
        out[static_cast<int64_t>(m0 + tm) * N + n0 + tn + j] =
            static_cast<T>(xs[tm * BN + tn + j]);
      }
    }
  }
}

// Host names: jang_qmv_<x>_<scales>_b<bits>_m<MT>, jang_qmm_<x>_<scales>_b<bits>.
#define instantiate_qmatmul(bits, xn, xt, sn, st)                            \
  JANG_INSTANTIATE(                                                          \
      "jang_qmv_" #xn "_" #sn "_b" #bits "_m1", jang_qmv, xt, st, bits, 1)   \
  JANG_INSTANTIATE(                                                          \
      "jang_qmv_" #xn "_" #sn "_b" #bits "_m8", jang_qmv, xt, st, bits, 8)   \
  JANG_INSTANTIATE(                                                          \
      "jang_qmv_" #xn "_" #sn "_b" #bits "_m16", jang_qmv, xt, st, bits, 16) \
  JANG_INSTANTIATE(                                                          \
      "jang_qmm_" #xn "_" #sn "_b" #bits, jang_qmm, xt, st, bits)

#define instantiate_qmatmul_bits(xn, xt, sn, st) \
  JANG_FOR_EACH_BITS(instantiate_qmatmul, xn, xt, sn, st)

instantiate_qmatmul_bits(float32, float, float32, float)
instantiate_qmatmul_bits(float16, half, float16, half)
instantiate_qmatmul_bits(bfloat16, bfloat, bfloat16, bfloat)
instantiate_qmatmul_bits(float32, float, float16, half)
instantiate_qmatmul_bits(float32, float, bfloat16, bfloat)
