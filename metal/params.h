// Launch constants shared by the shaders and the host plan (plan.h): plain
// constexpr integers, valid in Metal and C++.
#pragma once

namespace jang {
namespace metal_params {

constexpr int kSimdWidth = 32;

// dequantize: one thread per pack, threadgroups of kDequantThreads.
constexpr int kDequantThreads = 64;

// qmatmul for M <= kSmallM (jang_qmv): kQmvSimdGroups SIMD groups per
// threadgroup, each computing qmv_rows(MT) output rows for up to MT
// activation rows (MT = 1 for decode, 8 or 16 for small M).
constexpr int kSmallM = 16;
constexpr int kQmvSimdGroups = 2;
constexpr int qmv_rows(int mt) {
  return mt == 1 ? 4 : 2;
}

// qmatmul for M > kSmallM (jang_qmm): BM x BN outputs per threadgroup of
// kQmmThreads, K in steps of BK (a step never crosses a quantization group:
// every group size is a multiple of BK). Each thread owns one activation row
// and kQmmTN consecutive output columns of the tile.
constexpr int kQmmBM = 32;
constexpr int kQmmBN = 32;
constexpr int kQmmBK = 32;
constexpr int kQmmThreads = 128;
constexpr int kQmmTN = kQmmBM * kQmmBN / kQmmThreads;

// moe_gate_up: one (token, expert slot) per grid row; kMoeSimdGroups SIMD
// groups per threadgroup, each computing kMoeRows hidden rows.
constexpr int kMoeSimdGroups = 2;
constexpr int kMoeRows = 2;

} // namespace metal_params
} // namespace jang
