// Internal interface between the quantized-matmul drivers
// (csrc/cpu/qmatmul.cpp, which know MLX arrays) and the per-ISA kernels
// (csrc/cpu/qmm_*.cpp, compiled with their own -m flags). Nothing here includes
// MLX, so no inline MLX code is ever compiled with instructions the running CPU
// may lack.
#pragma once

#include <cstdint>

namespace jang::cpu {

/// Element types the kernels read and write.
enum class ElemType : int { f32 = 0, f16 = 1, bf16 = 2 };

/// Activation layout the kernels expect. Row m of x (K values) is stored
/// fp32 in blocks of lanes*codes values (codes = codes per pack at the weight's
/// width): inside a block, element (t, j) at t*lanes + j holds x[j*codes + t],
/// so that lane j of a SIMD register meets pack j of the block. Rows are padded
/// with zeros to a whole number of blocks (padded_k).
inline int64_t padded_k(int64_t k, int lanes, int codes) {
  const int64_t block = static_cast<int64_t>(lanes) * codes;
  return (k + block - 1) / block * block;
}

/// Per-group sums of x are padded with zeros to a multiple of this.
constexpr int kGroupPad = 16;
inline int64_t padded_groups(int64_t groups) {
  return (groups + kGroupPad - 1) / kGroupPad * kGroupPad;
}

/// One quantized matrix times M activation rows:
///   out[m][n] = sum_g s[n,g] * sum_{k in g} x[m,k] q[n,k] + b[n,g] *
///   xsum[m,g].
struct QmmArgs {
  int bits;
  int group_size;
  int64_t k;         // codes per weight row (a multiple of group_size)
  const uint32_t* w; // row n at w + n * w_stride (words)
  int64_t w_stride;
  const void* scales; // row n at scales + n * s_stride (elements)
  const void* biases; // row n at biases + n * b_stride (elements)
  int64_t s_stride;
  int64_t b_stride;
  ElemType sb_type;
  int m;                    // activation rows
  const float* const* x;    // m rows in the layout above
  const float* const* xsum; // m rows of padded_groups(k / group_size) sums
  float* const* out; // m rows; the kernel writes out[i][n] for n in [n0, n1)
};

/// Kernels one instruction set provides.
struct Isa {
  const char* name;
  int lanes;
  /// Output rows [n0, n1) of a QmmArgs product.
  void (*qmm)(const QmmArgs& args, int64_t n0, int64_t n1);
  /// dst[i] = float(src[i * stride]) for i < n.
  void (*to_f32)(
      const void* src, ElemType type, int64_t n, int64_t stride, float* dst);
  /// dst[i] = T(src[i]) (round to nearest even) for i < n.
  void (*from_f32)(const float* src, ElemType type, int64_t n, void* dst);
};

const Isa& isa_scalar();
#if defined(__x86_64__)
const Isa& isa_avx2();
const Isa& isa_avx512();
#elif defined(__aarch64__)
const Isa& isa_neon();
#endif

/// Best SIMD level of this CPU: "avx512", "avx2", "neon" or "scalar".
const char* simd_level();

/// The instruction set the kernels use now: the best this CPU has, unless
/// set_isa() chose another (tests compare SIMD against scalar that way).
const Isa& active_isa();

/// Select "scalar", "avx2", "avx512" (x86-64), "neon" (aarch64) or "auto";
/// returns the previous name.
/// Throws std::invalid_argument when the CPU lacks the instruction set.
const char* set_isa(const char* name);

} // namespace jang::cpu
