// dequantize: out = scale * q + bias, bit-exact with mx.dequantize.
//
// One thread per pack (the shortest run of codes that ends on a word
// boundary); threadgroups of 64 threads along a row, one row per grid row.
// Inputs are row-contiguous (the host copies strided ones).
#include "jang_metal.h"

using namespace jang;

template <typename T, int BITS>
[[kernel]] void jang_dequantize(
    const device uint32_t* w [[buffer(0)]],
    const device T* scales [[buffer(1)]],
    const device T* biases [[buffer(2)]],
    device T* out [[buffer(3)]],
    constant int& packs_per_row [[buffer(4)]],
    constant int& group_size [[buffer(5)]],
    uint3 tid [[thread_position_in_grid]]) {
  using P = affine::Pack<BITS>;
  const int pack = static_cast<int>(tid.x);
  if (pack >= packs_per_row) {
    return;
  }
  const int64_t row = tid.y;
  const int64_t groups = static_cast<int64_t>(packs_per_row) * P::codes / group_size;
  const int64_t g = static_cast<int64_t>(pack) * P::codes / group_size;
  const T s = scales[row * groups + g];
  const T b = biases[row * groups + g];
  const device uint32_t* words =
      w + (row * packs_per_row + pack) * P::words;
  uint32_t wv[P::words];
#pragma clang loop unroll(full)
  for (int i = 0; i < P::words; ++i) {
    wv[i] = words[i];
  }
  device T* o = out + (row * packs_per_row + pack) * P::codes;
#pragma clang loop unroll(full)
  for (int t = 0; t < P::codes; ++t) {
    o[t] = affine::dequant_value<T>(affine::code_at<BITS>(wv, t), s, b);
  }
}

#define instantiate_dequantize(bits, tname, type) \
  JANG_INSTANTIATE(                               \
      "jang_dequantize_" #tname "_b" #bits, jang_dequantize, type, bits)

#define instantiate_dequantize_bits(tname, type) \
  JANG_FOR_EACH_BITS(instantiate_dequantize, tname, type)

instantiate_dequantize_bits(float32, float)
instantiate_dequantize_bits(float16, half)
instantiate_dequantize_bits(bfloat16, bfloat)
