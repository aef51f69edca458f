// moe_gate_up: out[t, j, :] = silu(x[t] @ G[e].T) * (x[t] @ U[e].T) with
// e = ids[t, j], in one pass: gather by expert id, both projections, SwiGLU.
// Gate and up may have different widths and group sizes.
//
// One threadgroup per (token, expert slot) and kMoeSimdGroups * kMoeRows
// hidden rows; in each SIMD group the lanes walk the packs of a gate row and
// of the up row with the same index, and simd_sum combines them. Activations,
// scales and the output are T (the host casts scales to the output type).
// Expert ids out of range give zeros.
#include "jang_metal.h"
#include "params.h"

using namespace jang;
using namespace jang::metal_params;

namespace {

// This lane's share of dot(x, dequantized row).
template <int BITS, typename T>
inline float lane_row_dot(
    const device T* x,
    const device uint32_t* words,
    const device T* scales,
    const device T* biases,
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
    metal_kernels::load_pack<BITS>(words + p * P::words, q);
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

} // namespace

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
    const float g = simd_sum(lane_row_dot<GBITS>(
        xr,
        gate_w + row * gwords,
        gate_scales + row * ggroups,
        gate_biases + row * ggroups,
        K,
        gate_group_size,
        lane));
    const float u = simd_sum(lane_row_dot<UBITS>(
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

#define instantiate_moe(tn, t, gbits, ubits) \
  JANG_INSTANTIATE(                          \
      "jang_moe_gate_up_" #tn "_g" #gbits "_u" #ubits, jang_moe_gate_up, t, gbits, ubits)

#define instantiate_moe_up(tn, t, gbits) \
  instantiate_moe(tn, t, gbits, 2)       \
  instantiate_moe(tn, t, gbits, 3)       \
  instantiate_moe(tn, t, gbits, 4)       \
  instantiate_moe(tn, t, gbits, 5)       \
  instantiate_moe(tn, t, gbits, 6)       \
  instantiate_moe(tn, t, gbits, 8)

#define instantiate_moe_type(tn, t) \
  instantiate_moe_up(tn, t, 2)      \
  instantiate_moe_up(tn, t, 3)      \
  instantiate_moe_up(tn, t, 4)      \
  instantiate_moe_up(tn, t, 5)      \
  instantiate_moe_up(tn, t, 6)      \
  instantiate_moe_up(tn, t, 8)

instantiate_moe_type(float32, float)
instantiate_moe_type(float16, half)
instantiate_moe_type(bfloat16, bfloat)
