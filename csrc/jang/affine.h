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
#endif

namespace jang {
namespace affine {

constexpr bool valid_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 ||
      bits == 8;
}

constexpr bool valid_group_size(int group_size) {
  return group_size == 32 || group_size == 64 || group_size == 128;
}

constexpr int gcd32(int bits) {
  return (bits % 8 == 0) ? 8 : (bits % 4 == 0) ? 4 : (bits % 2 == 0) ? 2 : 1;
}

// A pack is the shortest run of codes that ends on a word boundary:
// 2-bit 16 codes/1 word, 3-bit 32/3, 4-bit 8/1, 5-bit 32/5, 6-bit 16/3,
// 8-bit 4/1. Every supported group size is a whole number of packs.
template <int BITS>
struct Pack {
  static constexpr int codes = 32 / gcd32(BITS);
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

// One dequantized value, rounded exactly as mx.dequantize rounds it: the
// product is rounded to T before the bias is added (no fused multiply-add).
template <typename T>
inline T dequant_value(uint32_t q, T scale, T bias) {
  const T prod = static_cast<T>(static_cast<float>(q) * static_cast<float>(scale));
  return static_cast<T>(static_cast<float>(prod) + static_cast<float>(bias));
}

} // namespace affine
} // namespace jang
