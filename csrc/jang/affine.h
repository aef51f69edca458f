// Shared arithmetic of MLX's affine quantization layout.
//
// Included by the CPU kernels (C++20) and by the Metal shaders, so it uses
// only what both languages have: integer arithmetic, templates, no std::.
//
// Layout: each row of a quantized matrix is one little-endian bitstream of
// uint32 words; code k occupies bits [k*BITS, (k+1)*BITS), so 3/5/6-bit codes
// cross word boundaries. A group of `group_size` consecutive codes shares one
// scale and one bias: w = scale * q + bias.
#pragma once

#ifndef __METAL_VERSION__
#include <cstdint>
#include <type_traits>
#endif

// The supported code widths and group sizes, each listed once: X(value, ...)
// for every one, the extra arguments passed through. They expand the CPU and
// CUDA dispatch switches and the Metal kernel instantiations; CMake reads the
// widths from the line below to generate the CUDA instance files, and a test
// checks both lists against jang.formats (the Python side).
// clang-format off
#define JANG_FOR_EACH_BITS(X, ...) X(2, __VA_ARGS__) X(3, __VA_ARGS__) X(4, __VA_ARGS__) X(5, __VA_ARGS__) X(6, __VA_ARGS__) X(8, __VA_ARGS__)
#define JANG_FOR_EACH_GROUP_SIZE(X, ...) X(32, __VA_ARGS__) X(64, __VA_ARGS__) X(128, __VA_ARGS__)
// clang-format on

namespace jang {
namespace affine {

#define JANG_IS_VALUE(V, x) (x) == V ||
constexpr bool valid_bits(int bits) {
  return JANG_FOR_EACH_BITS(JANG_IS_VALUE, bits) false;
}

constexpr bool valid_group_size(int group_size) {
  return JANG_FOR_EACH_GROUP_SIZE(JANG_IS_VALUE, group_size) false;
}
#undef JANG_IS_VALUE

#ifndef __METAL_VERSION__
// name(value, f, otherwise): f(std::integral_constant<int, V>{}) for the
// listed V equal to the run-time `value`, or otherwise() when none is: the
// one switch over widths (with_bits) and group sizes (with_group_size) that
// the CPU kernels and the GPU hosts dispatch through.
#define JANG_VALUE_CASE(V, ...)                                                \
  case V:                                                                      \
    return f(std::integral_constant<int, V>{});
#define JANG_DEFINE_DISPATCH(name, FOR_EACH)                                   \
  template <typename F, typename G>                                            \
  constexpr decltype(auto) name(int value, F&& f, G&& otherwise) {             \
    switch (value) {                                                           \
      FOR_EACH(JANG_VALUE_CASE, _)                                             \
    default:                                                                   \
      return otherwise();                                                      \
    }                                                                          \
  }
JANG_DEFINE_DISPATCH(with_bits, JANG_FOR_EACH_BITS)
JANG_DEFINE_DISPATCH(with_group_size, JANG_FOR_EACH_GROUP_SIZE)
#undef JANG_DEFINE_DISPATCH
#undef JANG_VALUE_CASE
#endif

constexpr int gcd32(int bits) {
  return (bits % 8 == 0) ? 8 : (bits % 4 == 0) ? 4 : (bits % 2 == 0) ? 2 : 1;
}

// A pack is the shortest run of codes that ends on a word boundary:
// 2-bit 16 codes/1 word, 3-bit 32/3, 4-bit 8/1, 5-bit 32/5, 6-bit 16/3,
// 8-bit 4/1. Every supported group size is a whole number of packs.
constexpr int codes_per_pack(int bits) {
  return 32 / gcd32(bits);
}

template <int BITS> struct Pack {
  static constexpr int codes = codes_per_pack(BITS);
  static constexpr int words = BITS / gcd32(BITS);
  static constexpr uint32_t mask = (1u << BITS) - 1u;
};

// Code k of a bitstream starting at `words` (any pointer-like type, so Metal
// address spaces pass through).
template <int BITS, typename Words>
inline uint32_t code_at(Words words, int k) {
  const int bit = k * BITS;
  const int word = bit >> 5;
  const int shift = bit & 31;
  uint32_t v = words[word] >> shift;
  if (shift + BITS > 32) {
    v |= words[word + 1] << (32 - shift);
  }
  return v & Pack<BITS>::mask;
}

// All codes of one pack, word-aligned at `words`, into out[0..codes).
template <int BITS, typename Words, typename Out>
inline void unpack_pack(Words words, Out out) {
  for (int k = 0; k < Pack<BITS>::codes; ++k) {
    out[k] = code_at<BITS>(words, k);
  }
}

// Where code T of a pack lives, as compile-time constants: it starts in word
// `word` of the pack at bit `shift`; when `crosses`, its high bits are the low
// bits of word `word + 1`. SIMD and Metal kernels extract codes with these
// constants (shift, or, and) instead of computing positions at run time.
template <int BITS, int T> struct Field {
  static constexpr int bit = T * BITS;
  static constexpr int word = bit >> 5;
  static constexpr int shift = bit & 31;
  static constexpr bool crosses = shift + BITS > 32;
  // The mask is needed unless the code ends exactly at the top of its word.
  static constexpr bool needs_mask = shift + BITS != 32;
  // Codes inside one word, not at its top: kernels may read them in place as
  // q << shift with a single AND (exact as a float: at most 8 significant
  // bits, below 2^31) and multiply by an activation pre-scaled by 2^-shift.
  static constexpr bool in_place = !crosses && needs_mask;
};

// The power of two (as a right shift) by which the matmul kernels pre-scale
// the activation that meets code t of a pack: Field<BITS, t>::shift for codes
// read in place, else 0.
constexpr int activation_shift(int bits, int t) {
  const int shift = (t * bits) & 31;
  const bool crosses = shift + bits > 32;
  const bool at_top = shift + bits == 32;
  return (!crosses && !at_top) ? shift : 0;
}

// Code T of a pack from its words (scalar form of what the SIMD kernels do
// per lane).
template <int BITS, int T, typename Words>
inline uint32_t field_of(Words words) {
  using F = Field<BITS, T>;
  uint32_t v = words[F::word] >> F::shift;
  if (F::crosses) {
    v |= words[F::word + 1] << (32 - F::shift);
  }
  return F::needs_mask ? (v & Pack<BITS>::mask) : v;
}

// One group's contribution to a dot product with dequantized weights:
//   sum_k x[k] * (scale * q[k] + bias) = scale * sum_k x[k] q[k] + bias * sum_k
//   x[k].
// The matmul kernels accumulate `xq = sum x*q` per group (or per pack and
// scale it) and add `bias * xsum` once per group from precomputed sums of x.
inline float group_dot(float scale, float bias, float xq, float xsum) {
  return scale * xq + bias * xsum;
}

// One dequantized value, rounded exactly as mx.dequantize rounds it: the
// product is rounded to T before the bias is added (no fused multiply-add).
template <typename T> inline T dequant_value(uint32_t q, T scale, T bias) {
  const T prod =
      static_cast<T>(static_cast<float>(q) * static_cast<float>(scale));
  return static_cast<T>(static_cast<float>(prod) + static_cast<float>(bias));
}

} // namespace affine
} // namespace jang
