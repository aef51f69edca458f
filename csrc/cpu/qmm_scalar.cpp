// Scalar instance of the quantized matmul kernel: one lane, plain C++. This is
// the reference the SIMD instances are tested against, and the path on CPUs
// with neither AVX2 + FMA nor NEON.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "cpu/qmm.h"
#include "jang/affine.h"

#define JANG_ISA scalar_isa
#include "cpu/qmm_half.h"

namespace jang::cpu::JANG_ISA {

struct V {
  static constexpr int L = 1;
  static constexpr int kMaxTile = 16;
  using F = float;
  using I = uint32_t;
  using Index = int;

  static F zero() {
    return 0.0f;
  }
  static F set1(float v) {
    return v;
  }
  static F loadu(const float* p) {
    return *p;
  }
  static F fma(F a, F b, F c) {
    return a * b + c; // two roundings: no libm fma call on CPUs without FMA
  }
  static void storeu(float* p, F v) {
    *p = v;
  }
  static F add(F a, F b) {
    return a + b;
  }
  static F mul(F a, F b) {
    return a * b;
  }
  static float hsum(F a) {
    return a;
  }
  static I load_words_partial(const uint32_t* p, int count) {
    return count > 0 ? *p : 0u;
  }
  static I load_words(const uint32_t* p) {
    return *p;
  }
  template <int S> static void load_lanes(const uint32_t* p, I* out) {
    for (int w = 0; w < S; ++w) {
      out[w] = p[w];
    }
  }
  template <int S> static I srli(I v) {
    return v >> S;
  }
  template <int S> static I slli(I v) {
    return v << S;
  }
  template <uint32_t M> static I and_mask(I v) {
    return v & M;
  }
  static I or_(I a, I b) {
    return a | b;
  }
  static F cvt(I v) {
    return static_cast<float>(v);
  }
  static Index make_expand_index(int) {
    return 0;
  }
  static F expand(const float* p, Index) {
    return *p;
  }
  static void to_f32(
      const void* src, ElemType type, int64_t n, int64_t stride, float* dst) {
    scalar_to_f32(src, type, n, stride, dst);
  }
  static void from_f32(const float* src, ElemType type, int64_t n, void* dst) {
    scalar_from_f32(src, type, n, dst);
  }
};

} // namespace jang::cpu::JANG_ISA

#include "cpu/qmm_kernel.h"

namespace jang::cpu {

const Isa& isa_scalar() {
  static const Isa isa{
      "scalar",
      1,
      &scalar_isa::qmm,
      &scalar_isa::V::to_f32,
      &scalar_isa::V::from_f32};
  return isa;
}

} // namespace jang::cpu
