// How each Metal kernel is launched: kernel name, grid, threadgroup size and
// threadgroup memory, chosen by shape. Plain C++ (no MLX, no Metal), included
// by the host code (csrc/metal/eval_gpu.cpp) and by the Linux emulation's test
// driver, so the tests run every kernel over exactly the grid the host uses.
#pragma once

#include <cstdint>
#include <cstdio>

#include "params.h"

namespace jang::metal_plan {

using namespace jang::metal_params;

// Element types, as named in kernel names.
enum class Dtype : int { float32 = 0, float16 = 1, bfloat16 = 2 };

inline const char* dtype_name(Dtype t) {
  switch (t) {
    case Dtype::float16:
      return "float16";
    case Dtype::bfloat16:
      return "bfloat16";
    default:
      return "float32";
  }
}

struct Dispatch {
  char kernel[96];
  unsigned groups[3];  // threadgroups per grid
  unsigned threads[3]; // threads per threadgroup
  unsigned long threadgroup_bytes[2]; // [[threadgroup(0)]], [[threadgroup(1)]]
};

inline unsigned ceil_div(int64_t a, int64_t b) {
  return static_cast<unsigned>((a + b - 1) / b);
}

// ---------------------------------------------------------- dequantize -----

// rows of (packs_per_row packs); one thread per pack.
inline Dispatch
dequantize(int bits, Dtype out, int64_t rows, int64_t packs_per_row) {
  Dispatch d{};
  std::snprintf(
      d.kernel, sizeof(d.kernel), "jang_dequantize_%s_b%d", dtype_name(out), bits);
  d.groups[0] = ceil_div(packs_per_row, kDequantThreads);
  d.groups[1] = static_cast<unsigned>(rows);
  d.groups[2] = 1;
  d.threads[0] = kDequantThreads;
  d.threads[1] = d.threads[2] = 1;
  return d;
}

// ------------------------------------------------------------- qmatmul -----

// x (m, k) in `x_type` (= the output type), weights (n, k) at `bits` with
// scales in `s_type`. The scales' type is one of: x_type, or float16/bfloat16
// with x_type float32.
inline Dispatch
qmatmul(int bits, Dtype x_type, Dtype s_type, int64_t m, int64_t n) {
  Dispatch d{};
  const char* xt = dtype_name(x_type);
  const char* st = dtype_name(s_type);
  if (m <= kSmallM) {
    const int mt = m == 1 ? 1 : m <= 8 ? 8 : 16;
    std::snprintf(
        d.kernel, sizeof(d.kernel), "jang_qmv_%s_%s_b%d_m%d", xt, st, bits, mt);
    d.groups[0] = ceil_div(n, kQmvSimdGroups * qmv_rows(mt));
    d.groups[1] = 1;
    d.groups[2] = ceil_div(m, mt);
    d.threads[0] = 32 * kQmvSimdGroups;
  } else {
    std::snprintf(
        d.kernel, sizeof(d.kernel), "jang_qmm_%s_%s_b%d", xt, st, bits);
    d.groups[0] = ceil_div(n, kQmmBN);
    d.groups[1] = ceil_div(m, kQmmBM);
    d.groups[2] = 1;
    d.threads[0] = kQmmThreads;
    d.threadgroup_bytes[0] = kQmmBM * kQmmBK * sizeof(float);
    d.threadgroup_bytes[1] = kQmmBN * kQmmBK * sizeof(float);
  }
  d.threads[1] = d.threads[2] = 1;
  return d;
}

// ------------------------------------------- gathered and sorted paths -----

// Whether `rows` rows over `experts` experts take the sorted path (group the
// rows by expert, then tiles) rather than the gathered one (one row per grid
// row). Sorted once there are at least kSortedMinRows rows and one row per
// expert on average: below that most experts serve a single row, and both
// paths read the same weights.
inline bool use_sorted(int64_t rows, int64_t experts) {
  return rows >= kSortedMinRows && rows >= experts;
}

// jang_moe_route: groups routing entries into experts + 1 buckets (the last
// one for out-of-range ids), one SIMD group per bucket. Its outputs are the
// offsets (experts + 2 uint32) and the permutation (one uint32 per entry).
inline Dispatch moe_route(int64_t experts) {
  Dispatch d{};
  std::snprintf(d.kernel, sizeof(d.kernel), "jang_moe_route");
  d.groups[0] = ceil_div(experts + 1, kRouteSimdGroups);
  d.groups[1] = d.groups[2] = 1;
  d.threads[0] = 32 * kRouteSimdGroups;
  d.threads[1] = d.threads[2] = 1;
  return d;
}

// A sorted kernel over the rows of `entries` routing entries, `m` rows each,
// and `n` output columns: row tiles as params.h's sorted_tile_start lays them
// out, kQmmBN columns per threadgroup.
inline void sorted_tiles(
    Dispatch& d,
    int64_t entries,
    int64_t m,
    int64_t n,
    int64_t experts,
    int staged_weight_tiles) {
  d.groups[0] = ceil_div(n, kQmmBN);
  d.groups[1] = sorted_tile_start(
      static_cast<unsigned>(entries),
      static_cast<unsigned>(m),
      static_cast<unsigned>(experts + 1));
  d.groups[2] = 1;
  d.threads[0] = kQmmThreads;
  d.threads[1] = d.threads[2] = 1;
  d.threadgroup_bytes[0] = kQmmBM * kQmmBK * sizeof(float);
  d.threadgroup_bytes[1] =
      staged_weight_tiles * kQmmBN * kQmmBK * sizeof(float);
}

// ---------------------------------------------------------- gather_qmm -----

// `entries` batch entries of `m` rows each against (experts, n, k) weights;
// types as for qmatmul. Sorted: run moe_route over the rhs indices first.
inline Dispatch gather_qmm(
    int bits,
    Dtype x_type,
    Dtype s_type,
    int64_t entries,
    int64_t m,
    int64_t n,
    int64_t experts) {
  Dispatch d{};
  const bool sorted = use_sorted(entries * m, experts);
  std::snprintf(
      d.kernel,
      sizeof(d.kernel),
      "jang_gather_%s_%s_%s_b%d",
      sorted ? "qmm" : "qmv",
      dtype_name(x_type),
      dtype_name(s_type),
      bits);
  if (sorted) {
    sorted_tiles(d, entries, m, n, experts, 1);
  } else {
    d.groups[0] = ceil_div(n, kQmvSimdGroups * qmv_rows(1));
    d.groups[1] = static_cast<unsigned>(entries * m);
    d.groups[2] = 1;
    d.threads[0] = 32 * kQmvSimdGroups;
    d.threads[1] = d.threads[2] = 1;
  }
  return d;
}

// --------------------------------------------------------- moe_gate_up -----

// `token_slots` (token, expert slot) rows, `hidden` outputs each, `experts`
// experts. Gathered: one slot per grid row. Sorted: run moe_route over the
// expert ids first.
inline Dispatch moe_gate_up(
    int gate_bits,
    int up_bits,
    Dtype x_type,
    int64_t token_slots,
    int64_t hidden,
    int64_t experts) {
  Dispatch d{};
  const bool sorted = use_sorted(token_slots, experts);
  std::snprintf(
      d.kernel,
      sizeof(d.kernel),
      "jang_moe_gate_up_%s%s_g%d_u%d",
      sorted ? "sorted_" : "",
      dtype_name(x_type),
      gate_bits,
      up_bits);
  if (sorted) {
    sorted_tiles(d, token_slots, 1, hidden, experts, 2); // gate and up tiles
  } else {
    d.groups[0] = ceil_div(hidden, kMoeSimdGroups * kMoeRows);
    d.groups[1] = static_cast<unsigned>(token_slots);
    d.groups[2] = 1;
    d.threads[0] = 32 * kMoeSimdGroups;
    d.threads[1] = d.threads[2] = 1;
  }
  return d;
}

} // namespace jang::metal_plan
