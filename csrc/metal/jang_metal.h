// Shared by jang's shaders: Metal's standard library, the affine arithmetic
// that the CPU kernels use too, and the instantiation macro.
#pragma once

#include <metal_simdgroup_matrix>
#include <metal_stdlib>

#include "jang/affine.h"
#include "params.h"

using namespace metal;

// One kernel instantiation, callable from the host as `name`. (The Linux
// emulation in tests/metal_emu defines its own, which registers the function
// under the same name.)
#ifndef JANG_INSTANTIATE
#define JANG_INSTANTIATE(name, func, ...)                                    \
  template [[host_name(name)]] [[kernel]] decltype(func<__VA_ARGS__>)        \
      func<__VA_ARGS__>;
#endif

namespace jang {
namespace metal_kernels {

constexpr int kSimdWidth = 32;

// The codes of one pack, read as whole words (1 to 5 consecutive uint32) and
// split with compile-time shifts (affine::Field via code_at on constants).
template <int BITS, typename Words>
inline void load_pack(Words words, thread float* q) {
  using P = affine::Pack<BITS>;
  uint32_t w[P::words];
#pragma clang loop unroll(full)
  for (int i = 0; i < P::words; ++i) {
    w[i] = words[i];
  }
#pragma clang loop unroll(full)
  for (int t = 0; t < P::codes; ++t) {
    q[t] = static_cast<float>(affine::code_at<BITS>(w, t));
  }
}

inline float silu(float x) {
  return x / (1.0f + metal::exp(-x));
}

// This lane's share of dot(x, dequantized row) over K: lane j takes packs j,
// j + 32, ... (a SIMD group reads 32 consecutive packs per step); the caller
// combines the lanes with simd_sum.
template <int BITS, typename T, typename S>
inline float lane_row_dot(
    const device T* x,
    const device uint32_t* words,
    const device S* scales,
    const device S* biases,
    int K,
    int group_size,
    uint lane) {
  using P = affine::Pack<BITS>;
  constexpr int C = P::codes;
  const int packs = K / C;
  const int packs_per_group = group_size / C;
  float acc = 0.0f;
  for (int p = lane; p < packs; p += kSimdWidth) {
    const int g = p / packs_per_group;
    float q[C];
    load_pack<BITS>(words + p * P::words, q);
    float xq = 0.0f;
    float xs = 0.0f;
#pragma clang loop unroll(full)
    for (int t = 0; t < C; ++t) {
      const float xv = static_cast<float>(x[p * C + t]);
      xq += xv * q[t];
      xs += xv;
    }
    acc += affine::group_dot(
        static_cast<float>(scales[g]), static_cast<float>(biases[g]), xq, xs);
  }
  return acc;
}

// Dequantizes codes c0 .. c0 + COUNT of a K step (its words start at `words`,
// all in one group with scale s and bias b) into dst, as the tiled kernels
// stage weights in threadgroup memory.
template <int BITS, int COUNT>
inline void stage_weights(
    const device uint32_t* words,
    int c0,
    float s,
    float b,
    threadgroup float* dst) {
#pragma clang loop unroll(full)
  for (int i = 0; i < COUNT; ++i) {
    dst[i] = s * static_cast<float>(affine::code_at<BITS>(words, c0 + i)) + b;
  }
}

// The product of the tiled kernels (jang_qmm, jang_gather_qmm,
// jang_moe_gate_up_sorted) on simdgroup matrices: the kQmmBM x kQmmBN output
// tile is four 16 x 16 blocks, one per SIMD group, each 2 x 2 8x8 fp32
// matrices. Per K step the threadgroup has staged xs (BM x BK activations)
// and ws (BN x BK dequantized weights, a row per output column), both
// row-major floats in threadgroup memory; multiply() adds xs * ws^T.
struct TileMma {
  static constexpr int BM = metal_params::kQmmBM;
  static constexpr int BN = metal_params::kQmmBN;
  static constexpr int BK = metal_params::kQmmBK;
  static_assert(
      BM == 32 && BN == 32 && BK % 8 == 0 &&
          metal_params::kQmmThreads == 4 * kSimdWidth,
      "four SIMD groups of 16 x 16");

  simdgroup_float8x8 c[2][2];
  int sm; // first tile row of this SIMD group's block
  int sn; // first tile column

  TileMma(uint simd_gid)
      : sm(static_cast<int>(simd_gid / 2) * 16),
        sn(static_cast<int>(simd_gid % 2) * 16) {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        c[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      }
    }
  }

  void multiply(const threadgroup float* xs, const threadgroup float* ws) {
    for (int kk = 0; kk < BK; kk += 8) {
      simdgroup_float8x8 a[2];
      simdgroup_float8x8 b[2];
      for (int i = 0; i < 2; ++i) {
        simdgroup_load(a[i], xs + (sm + 8 * i) * BK + kk, BK);
      }
      for (int j = 0; j < 2; ++j) {
        // Columns of ws^T are rows of ws: load transposed.
        simdgroup_load(b[j], ws + (sn + 8 * j) * BK + kk, BK, ulong2(0), true);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          simdgroup_multiply_accumulate(c[i][j], a[i], b[j], c[i][j]);
        }
      }
    }
  }

  // This SIMD group's block into dst, a row-major BM x BN tile.
  void store(threadgroup float* dst) const {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 2; ++j) {
        simdgroup_store(c[i][j], dst + (sm + 8 * i) * BN + sn + 8 * j, BN);
      }
    }
  }
};

// The row tile of a sorted kernel (grid row t): its bucket, the bucket's first
// entry in the sorted order, and which of the bucket's rows it covers.
struct RowTile {
  int bucket;
  int first; // offsets[bucket]
  int row0;  // first row of the tile among the bucket's rows
  int rows;  // rows in the tile; <= 0 when the tile is past the bucket's end
};

// Bucket b (of 0..E, E = `experts`) owns tiles sorted_tile_start(offsets[b],
// m, b) onwards (params.h); the owner of tile t is found by binary search
// (sorted_tile_start is strictly increasing in b). Uniform across a
// threadgroup: every thread computes the same tile.
inline RowTile
row_tile(const device uint32_t* offsets, int experts, int m, uint t) {
  using metal_params::sorted_tile_start;
  int lo = 0;
  int hi = experts;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (sorted_tile_start(offsets[mid], m, mid) <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  RowTile r;
  r.bucket = lo;
  r.first = static_cast<int>(offsets[lo]);
  r.row0 = static_cast<int>(t - sorted_tile_start(offsets[lo], m, lo)) *
           metal_params::kQmmBM;
  const int bucket_rows = static_cast<int>(offsets[lo + 1] - offsets[lo]) * m;
  r.rows = min(metal_params::kQmmBM, bucket_rows - r.row0);
  return r;
}

} // namespace metal_kernels
} // namespace jang

// JANG_FOR_EACH_BITS (jang/affine.h) inside an expansion of itself, for the
// kernels instantiated per pair of widths: the inner list is deferred
// (JANG_DEFER) and expanded by one more scan (JANG_EXPAND around the outer
// list), since a macro does not expand inside its own expansion.
#define JANG_EMPTY()
#define JANG_DEFER(m) m JANG_EMPTY()
#define JANG_EXPAND(...) __VA_ARGS__
#define JANG_FOR_EACH_BITS_LATER() JANG_FOR_EACH_BITS
