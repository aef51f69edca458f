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

// Sorted (grouped by expert) paths of moe_gate_up and gather_qmm, for many
// rows at once (prefill): see metal_plan::use_sorted. A row is one (token,
// expert slot) of moe_gate_up or one output row of gather_qmm.
constexpr int kSortedMinRows = 64;

// jang_moe_route groups entries (routing decisions) by expert: one SIMD group
// per bucket (experts 0..E-1, and E for every out-of-range id), so E + 1
// buckets, kRouteSimdGroups buckets per threadgroup.
constexpr int kRouteSimdGroups = 4;

// The sorted kernels run over kQmmBM-row tiles of each bucket's rows. Bucket b
// owns the row tiles from sorted_tile_start(offset[b], m, b) on, where
// offset[b] counts the entries of buckets before b and m is the number of rows
// per entry. That range is never shorter than the ceil(rows / kQmmBM) tiles the
// bucket needs (floor(a + c) - floor(a) + 1 >= ceil(c)), and the grid, which
// ends at sorted_tile_start(entries, m, E + 1), is known without reading the
// routing back.
constexpr unsigned
sorted_tile_start(unsigned offset, unsigned m, unsigned bucket) {
  return offset * m / kQmmBM + bucket;
}

} // namespace metal_params
} // namespace jang
