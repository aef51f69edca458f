// moe_gate_up: out[t, j, :] = silu(x[t] @ G[e].T) * (x[t] @ U[e].T) with
// e = ids[t, j], in one pass: gather by expert id, both projections, SwiGLU.
// Gate and up may have different widths and group sizes. Activations, scales
// and the output are T (the host casts scales to the output type). Expert ids
// out of range give zeros.
//
// jang_moe_gate_up (decode, few slots): one threadgroup per (token, expert
// slot) and kMoeSimdGroups * kMoeRows hidden rows; in each SIMD group the
// lanes walk the packs of a gate row and of the up row with the same index,
// and simd_sum combines them.
//
// Sorted-token prefill (many slots): jang_moe_route groups the slots by
// expert (offsets + a permutation, no atomics), then jang_moe_gate_up_sorted
// runs each expert's slots as kQmmBM x kQmmBN tiles: per K step of kQmmBK the
// threadgroup stages the tokens' activations (gathered through the
// permutation) and the dequantized gate and up tiles in threadgroup memory,
// accumulates both products with simdgroup matrices (TileMma), and writes
// SwiGLU back to the slots' rows.
#include "jang_metal.h"
#include "params.h"

using namespace jang;
using namespace jang::metal_params;

template <typename T, int GBITS, int UBITS>
[[kernel]] void jang_moe_gate_up(
    const device T* x [[buffer(0)]],
    const device uint32_t* ids [[buffer(1)]],
    const device uint32_t* gate_w [[buffer(2)]],
    const device T* gate_scales [[buffer(3)]],
    const device T* gate_biases [[buffer(4)]],
    const device uint32_t* up_w [[buffer(5)]],
    const device T* up_scales [[buffer(6)]],
    const device T* up_biases [[buffer(7)]],
    device T* out [[buffer(8)]],
    constant int& top_k [[buffer(9)]],
    constant int& experts [[buffer(10)]],
    constant int& H [[buffer(11)]],
    constant int& K [[buffer(12)]],
    constant int& gate_group_size [[buffer(13)]],
    constant int& up_group_size [[buffer(14)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  const int64_t slot = tgid.y;
  const int64_t token = slot / top_k;
  const uint e = ids[slot];
  const int h0 = (static_cast<int>(tgid.x) * kMoeSimdGroups + simd_gid) * kMoeRows;
  device T* o = out + slot * H;
  if (e >= static_cast<uint>(experts)) { // uniform across the threadgroup
    if (lane < kMoeRows && h0 + static_cast<int>(lane) < H) {
      o[h0 + lane] = static_cast<T>(0.0f);
    }
    return;
  }
  const device T* xr = x + token * K;
  const int64_t gwords = static_cast<int64_t>(K) * GBITS / 32;
  const int64_t uwords = static_cast<int64_t>(K) * UBITS / 32;
  const int ggroups = K / gate_group_size;
  const int ugroups = K / up_group_size;
#pragma clang loop unroll(full)
  for (int r = 0; r < kMoeRows; ++r) {
    // Rows past H repeat the last row; their results are never written.
    const int64_t row = static_cast<int64_t>(e) * H + min(h0 + r, H - 1);
    const float g = simd_sum(metal_kernels::lane_row_dot<GBITS>(
        xr,
        gate_w + row * gwords,
        gate_scales + row * ggroups,
        gate_biases + row * ggroups,
        K,
        gate_group_size,
        lane));
    const float u = simd_sum(metal_kernels::lane_row_dot<UBITS>(
        xr,
        up_w + row * uwords,
        up_scales + row * ugroups,
        up_biases + row * ugroups,
        K,
        up_group_size,
        lane));
    if (lane == 0 && h0 + r < H) {
      o[h0 + r] = static_cast<T>(metal_kernels::silu(g) * u);
    }
  }
}

// Groups n routing entries by expert for the sorted kernels. Bucket b < E
// holds the entries with ids[i] == b, bucket E those with ids[i] >= E (out of
// range). Writes offsets[b] = number of entries in buckets before b (b = 0 ..
// E + 1, so offsets[E + 1] = n) and perm[offsets[b] ..] = the entries of
// bucket b in increasing order. One SIMD group per bucket: it counts the
// entries below and in its bucket, then places its entries with prefix sums.
template <typename I>
[[kernel]] void jang_moe_route(
    const device I* ids [[buffer(0)]],
    device uint32_t* offsets [[buffer(1)]],
    device uint32_t* perm [[buffer(2)]],
    constant int& n [[buffer(3)]],
    constant int& experts [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]) {
  const uint b = tgid.x * kRouteSimdGroups + simd_gid;
  const uint last = static_cast<uint>(experts);
  if (b > last) { // uniform across the SIMD group
    return;
  }
  uint below = 0;
  uint here = 0;
  for (int i = lane; i < n; i += kSimdWidth) {
    const uint e = min(static_cast<uint>(ids[i]), last);
    below += e < b ? 1 : 0;
    here += e == b ? 1 : 0;
  }
  below = simd_sum(below);
  here = simd_sum(here);
  if (lane == 0) {
    offsets[b] = below;
    if (b == last) {
      offsets[b + 1] = below + here;
    }
  }
  uint pos = below;
  const uint end = below + here;
  for (int i0 = 0; i0 < n && pos < end; i0 += kSimdWidth) { // uniform
    const int i = i0 + static_cast<int>(lane);
    const uint hit = i < n && min(static_cast<uint>(ids[i]), last) == b ? 1 : 0;
    const uint before = simd_prefix_exclusive_sum(hit);
    if (hit) {
      perm[pos + before] = static_cast<uint32_t>(i);
    }
    pos += simd_sum(hit);
  }
}

// Sorted-token prefill: grid (ceil(H / BN), row tiles, see row_tile), threads
// kQmmThreads. buffer(1) is the permutation and buffer(15) the offsets from
// jang_moe_route over the slots (m = 1 row per slot); the other buffers are
// those of jang_moe_gate_up.
template <typename T, int GBITS, int UBITS>
[[kernel]] void jang_moe_gate_up_sorted(
    const device T* x [[buffer(0)]],
    const device uint32_t* perm [[buffer(1)]],
    const device uint32_t* gate_w [[buffer(2)]],
    const device T* gate_scales [[buffer(3)]],
    const device T* gate_biases [[buffer(4)]],
    const device uint32_t* up_w [[buffer(5)]],
    const device T* up_scales [[buffer(6)]],
    const device T* up_biases [[buffer(7)]],
    device T* out [[buffer(8)]],
    constant int& top_k [[buffer(9)]],
    constant int& experts [[buffer(10)]],
    constant int& H [[buffer(11)]],
    constant int& K [[buffer(12)]],
    constant int& gate_group_size [[buffer(13)]],
    constant int& up_group_size [[buffer(14)]],
    const device uint32_t* offsets [[buffer(15)]],
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
  static_assert(BK * GBITS % 32 == 0 && BK * UBITS % 32 == 0, "whole words");
  const metal_kernels::RowTile tile =
      metal_kernels::row_tile(offsets, experts, 1, tgid.y);
  if (tile.rows <= 0) { // uniform: a spare tile of its bucket
    return;
  }
  const int n0 = static_cast<int>(tgid.x) * BN;
  // This thread's outputs: tile row tm, columns n0 + tn .. + TN.
  const int tm = tid / (BN / TN);
  const int tn = (tid % (BN / TN)) * TN;
  const bool out_row = tm < tile.rows;
  const int64_t out_slot = out_row ? perm[tile.first + tile.row0 + tm] : 0;
  device T* o = out + out_slot * H + n0 + tn;
  if (tile.bucket == experts) { // uniform: out-of-range expert ids give zeros
    if (out_row) {
      for (int j = 0; j < TN && n0 + tn + j < H; ++j) {
        o[j] = static_cast<T>(0.0f);
      }
    }
    return;
  }
  // What this thread stages: activations of tile row xr, columns xc ..;
  // gate and up codes wc .. of hidden row n0 + wr.
  const int xr = tid * LOADS / BK;
  const int xc = tid * LOADS % BK;
  const bool x_row = xr < tile.rows;
  const int64_t x_token = x_row ? perm[tile.first + tile.row0 + xr] / top_k : 0;
  const device T* xsrc = x + x_token * K + xc;
  const int wr = tid * CODES / BK;
  const int wc = tid * CODES % BK;
  const int64_t wrow =
      static_cast<int64_t>(tile.bucket) * H + min(n0 + wr, H - 1);
  const int64_t gwords = static_cast<int64_t>(K) * GBITS / 32;
  const int64_t uwords = static_cast<int64_t>(K) * UBITS / 32;
  const int ggroups = K / gate_group_size;
  const int ugroups = K / up_group_size;
  threadgroup float* gs = ws;
  threadgroup float* us = ws + BN * BK;

  static_assert(BM * BN <= BM * BK, "the output tiles fit in xs and ws");
  metal_kernels::TileMma gate(simd_gid);
  metal_kernels::TileMma up(simd_gid);

  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma clang loop unroll(full)
    for (int i = 0; i < LOADS; ++i) {
      xs[xr * BK + xc + i] = x_row ? static_cast<float>(xsrc[k0 + i]) : 0.0f;
    }
    {
      const int g = k0 / gate_group_size;
      metal_kernels::stage_weights<GBITS, CODES>(
          gate_w + wrow * gwords + k0 / 32 * GBITS,
          wc,
          static_cast<float>(gate_scales[wrow * ggroups + g]),
          static_cast<float>(gate_biases[wrow * ggroups + g]),
          gs + wr * BK + wc);
      const int u = k0 / up_group_size;
      metal_kernels::stage_weights<UBITS, CODES>(
          up_w + wrow * uwords + k0 / 32 * UBITS,
          wc,
          static_cast<float>(up_scales[wrow * ugroups + u]),
          static_cast<float>(up_biases[wrow * ugroups + u]),
          us + wr * BK + wc);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    gate.multiply(xs, gs);
    up.multiply(xs, us);
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  gate.store(xs); // free after the last barrier
  up.store(ws);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (out_row) {
#pragma clang loop unroll(full)
    for (int j = 0; j < TN; ++j) {
      if (n0 + tn + j < H) {
        const float g = xs[tm * BN + tn + j];
        o[j] = static_cast<T>(metal_kernels::silu(g) * ws[tm * BN + tn + j]);
      }
    }
  }
}

#define instantiate_moe(ubits, tn, t, gbits)                                   \
  JANG_INSTANTIATE(                                                            \
      "jang_moe_gate_up_" #tn "_g" #gbits "_u" #ubits,                         \
      jang_moe_gate_up,                                                        \
      t,                                                                       \
      gbits,                                                                   \
      ubits)                                                                   \
  JANG_INSTANTIATE(                                                            \
      "jang_moe_gate_up_sorted_" #tn "_g" #gbits "_u" #ubits,                  \
      jang_moe_gate_up_sorted,                                                 \
      t,                                                                       \
      gbits,                                                                   \
      ubits)

// Every (gate width, up width) pair (JANG_DEFER / JANG_EXPAND: jang_metal.h).
#define instantiate_moe_up(gbits, tn, t) \
  JANG_DEFER(JANG_FOR_EACH_BITS_LATER)()(instantiate_moe, tn, t, gbits)
#define instantiate_moe_type(tn, t) \
  JANG_EXPAND(JANG_FOR_EACH_BITS(instantiate_moe_up, tn, t))

// clang-format off
instantiate_moe_type(float32, float)
instantiate_moe_type(float16, half)
instantiate_moe_type(bfloat16, bfloat)
JANG_INSTANTIATE("jang_moe_route", jang_moe_route, uint32_t)
// clang-format on
