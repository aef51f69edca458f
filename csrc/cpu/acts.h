// Activation rows into the kernels' layout (see QmmArgs in cpu/qmm.h), on raw
// pointers: used by the MLX drivers (cpu/qmatmul.cpp) and by the standalone
// kernel tests (tests/neon), so both feed the kernels the same bytes. Not
// included by the per-ISA kernel files.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/qmm.h"
#include "jang/affine.h"

namespace jang::cpu {

/// One row of k fp32 activations for an instruction set of `lanes` lanes and
/// weights of `bits` bits: dst gets padded_k(k, lanes, codes) values (blocks
/// permuted, codes read in place pre-scaled by 2^-shift, zero padding), sums
/// gets padded_groups(k / group_size) per-group sums of the unscaled row
/// (zero padding).
inline void pack_activation_row(
    const float* x,
    int64_t k,
    int lanes,
    int bits,
    int group_size,
    float* dst,
    float* sums) {
  const int codes = 32 / affine::gcd32(bits);
  const int64_t lc = static_cast<int64_t>(lanes) * codes;
  const int64_t kp = padded_k(k, lanes, codes);
  const int64_t groups = k / group_size;
  // Codes read in place arrive as q * 2^shift: pre-scale their activations
  // by 2^-shift (exact for normal floats).
  float scale[32];
  for (int t = 0; t < codes; ++t) {
    scale[t] = std::ldexp(1.0f, -affine::activation_shift(bits, t));
  }
  for (int64_t i = k; i < kp; ++i) {
    const int64_t in = i % lc;
    dst[i / lc * lc + (in % codes) * lanes + in / codes] = 0.0f;
  }
  for (int64_t i = 0; i < k; ++i) {
    const int64_t blk = i / lc;
    const int64_t in = i - blk * lc;
    const int64_t j = in / codes;
    const int64_t t = in - j * codes;
    dst[blk * lc + t * lanes + j] = x[i] * scale[t];
  }
  for (int64_t g = 0; g < groups; ++g) {
    float acc = 0.0f;
    for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
      acc += x[i];
    }
    sums[g] = acc;
  }
  for (int64_t g = groups; g < padded_groups(groups); ++g) {
    sums[g] = 0.0f;
  }
}

} // namespace jang::cpu
