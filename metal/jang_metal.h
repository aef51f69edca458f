// Shared by jang's shaders: Metal's standard library, the affine arithmetic
// that the CPU kernels use too, and the instantiation macro.
#pragma once

#include <metal_stdlib>

#include "jang/affine.h"

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

} // namespace metal_kernels
} // namespace jang
