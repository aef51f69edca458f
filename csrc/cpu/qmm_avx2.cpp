// AVX2 + FMA instance of the quantized matmul kernel: 8 lanes, 8-row tiles.
// Compiled with -mavx2 -mfma -mf16c and only called after cpu_simd_level()
// found those extensions.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "cpu/qmm.h"
#include "jang/affine.h"

#define JANG_ISA avx2_isa
#include "cpu/qmm_half.h"

namespace jang::cpu::JANG_ISA {

struct V {
  static constexpr int L = 8;
  static constexpr int kMaxTile = 8;
  using F = __m256;
  using I = __m256i;
  using Index = __m256i;

  static F zero() {
    return _mm256_setzero_ps();
  }
  static F set1(float v) {
    return _mm256_set1_ps(v);
  }
  static F loadu(const float* p) {
    return _mm256_loadu_ps(p);
  }
  static F fma(F a, F b, F c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  static void storeu(float* p, F v) {
    _mm256_storeu_ps(p, v);
  }
  static F add(F a, F b) {
    return _mm256_add_ps(a, b);
  }
  static F mul(F a, F b) {
    return _mm256_mul_ps(a, b);
  }
  static float hsum(F a) {
    __m128 s =
        _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static I load_words_partial(const uint32_t* p, int count) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
    return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
  }
  static I load_words(const uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  template <int S> static void load_lanes(const uint32_t* p, I* out) {
    const __m256i idx =
        _mm256_setr_epi32(0, S, 2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S);
    for (int w = 0; w < S; ++w) {
      out[w] =
          _mm256_i32gather_epi32(reinterpret_cast<const int*>(p + w), idx, 4);
    }
  }
  template <int S> static I srli(I v) {
    return _mm256_srli_epi32(v, S);
  }
  template <int S> static I slli(I v) {
    return _mm256_slli_epi32(v, S);
  }
  template <uint32_t M> static I and_mask(I v) {
    return _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(M)));
  }
  static I or_(I a, I b) {
    return _mm256_or_si256(a, b);
  }
  static F cvt(I v) {
    return _mm256_cvtepi32_ps(v);
  }
  static Index make_expand_index(int ppg) {
    alignas(32) int idx[8];
    for (int j = 0; j < 8; ++j) {
      idx[j] = j / ppg;
    }
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
  }
  static F expand(const float* p, Index idx) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), idx);
  }

  static void to_f32(
      const void* src, ElemType type, int64_t n, int64_t stride, float* dst) {
    if (stride != 1 || type == ElemType::f32) {
      if (type == ElemType::f32 && stride == 1) {
        __builtin_memcpy(dst, src, n * sizeof(float));
        return;
      }
      scalar_to_f32(src, type, n, stride, dst);
      return;
    }
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    if (type == ElemType::f16) {
      for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(
            dst + i,
            _mm256_cvtph_ps(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
      }
    } else {
      for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_cvtepu16_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
        _mm256_storeu_ps(
            dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
    }
    if (i < n) { // tail through a zero-padded vector
      alignas(16) uint16_t pad[8] = {};
      alignas(32) float out[8];
      __builtin_memcpy(pad, s + i, (n - i) * sizeof(uint16_t));
      const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(pad));
      const __m256 v = type == ElemType::f16
                           ? _mm256_cvtph_ps(h)
                           : _mm256_castsi256_ps(_mm256_slli_epi32(
                                 _mm256_cvtepu16_epi32(h), 16));
      _mm256_store_ps(out, v);
      __builtin_memcpy(dst + i, out, (n - i) * sizeof(float));
    }
  }

  static void from_f32(const float* src, ElemType type, int64_t n, void* dst) {
    if (type == ElemType::f32) {
      __builtin_memcpy(dst, src, n * sizeof(float));
      return;
    }
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    if (type == ElemType::f16) {
      for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(
            reinterpret_cast<__m128i*>(d + i),
            _mm256_cvtps_ph(
                _mm256_loadu_ps(src + i),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
    }
    scalar_from_f32(src + i, type, n - i, d + i);
  }
};

} // namespace jang::cpu::JANG_ISA

#include "cpu/qmm_kernel.h"

namespace jang::cpu {

const Isa& isa_avx2() {
  static const Isa isa{
      "avx2", 8, &avx2_isa::qmm, &avx2_isa::V::to_f32, &avx2_isa::V::from_f32};
  return isa;
}

} // namespace jang::cpu
