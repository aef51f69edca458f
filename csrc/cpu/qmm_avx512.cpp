// AVX-512 (F, BW, VL) instance of the quantized matmul kernel: 16 lanes,
// 8-row tiles. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c and
// only called after cpu_simd_level() found those extensions.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "cpu/qmm.h"
#include "jang/affine.h"

#define JANG_ISA avx512_isa
#include "cpu/qmm_half.h"

namespace jang::cpu::JANG_ISA {

struct V {
  static constexpr int L = 16;
  // 16-row tiles spill (16 accumulators plus 16 row pointers); 8 is faster.
  static constexpr int kMaxTile = 8;
  using F = __m512;
  using I = __m512i;
  using Index = __m512i;

  static F zero() {
    return _mm512_setzero_ps();
  }
  static F set1(float v) {
    return _mm512_set1_ps(v);
  }
  static F loadu(const float* p) {
    return _mm512_loadu_ps(p);
  }
  static F fma(F a, F b, F c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  static void storeu(float* p, F v) {
    _mm512_storeu_ps(p, v);
  }
  static F add(F a, F b) {
    return _mm512_add_ps(a, b);
  }
  static F mul(F a, F b) {
    return _mm512_mul_ps(a, b);
  }
  static float hsum(F a) {
    return _mm512_reduce_add_ps(a);
  }
  static I load_words_partial(const uint32_t* p, int count) {
    return _mm512_maskz_loadu_epi32(
        static_cast<__mmask16>((1u << count) - 1u), p);
  }
  static I load_words(const uint32_t* p) {
    return _mm512_loadu_si512(p);
  }
  // Lane j of out[w] = p[j*S + w]: S plain loads, then per w one two-source
  // permute per pair of loaded vectors and a masked merge (no gathers).
  template <int S> static void load_lanes(const uint32_t* p, I* out) {
    I z[S];
    for (int i = 0; i < S; ++i) {
      z[i] = _mm512_loadu_si512(p + 16 * i);
    }
    const __m512i lane =
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int w = 0; w < S; ++w) {
      const __m512i idx = _mm512_add_epi32(
          _mm512_mullo_epi32(lane, _mm512_set1_epi32(S)), _mm512_set1_epi32(w));
      __m512i r = _mm512_permutex2var_epi32(z[0], idx, z[1]);
      for (int i = 2; i < S; i += 2) {
        const __mmask16 k =
            _mm512_cmpge_epu32_mask(idx, _mm512_set1_epi32(32 * (i / 2)));
        const __m512i part =
            i + 1 < S ? _mm512_permutex2var_epi32(z[i], idx, z[i + 1])
                      : _mm512_permutexvar_epi32(idx, z[i]);
        r = _mm512_mask_mov_epi32(r, k, part);
      }
      out[w] = r;
    }
  }
  template <int S> static I srli(I v) {
    return _mm512_srli_epi32(v, S);
  }
  template <int S> static I slli(I v) {
    return _mm512_slli_epi32(v, S);
  }
  template <uint32_t M> static I and_mask(I v) {
    return _mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(M)));
  }
  static I or_(I a, I b) {
    return _mm512_or_si512(a, b);
  }
  static F cvt(I v) {
    return _mm512_cvtepi32_ps(v);
  }
  static Index make_expand_index(int ppg) {
    alignas(64) int idx[16];
    for (int j = 0; j < 16; ++j) {
      idx[j] = j / ppg;
    }
    return _mm512_load_si512(idx);
  }
  static F expand(const float* p, Index idx) {
    return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(p));
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
    // Whole vectors, then one masked vector for the tail (rows of scales are
    // short: k / group_size values).
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 k =
          n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
      const __m256i h = _mm256_maskz_loadu_epi16(k, s + i);
      const __m512 v = type == ElemType::f16
                           ? _mm512_cvtph_ps(h)
                           : _mm512_castsi512_ps(_mm512_slli_epi32(
                                 _mm512_cvtepu16_epi32(h), 16));
      _mm512_mask_storeu_ps(dst + i, k, v);
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
      for (; i + 16 <= n; i += 16) {
        _mm256_storeu_si256(
            reinterpret_cast<__m256i*>(d + i),
            _mm512_cvtps_ph(
                _mm512_loadu_ps(src + i),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
    }
    scalar_from_f32(src + i, type, n - i, d + i);
  }
};

} // namespace jang::cpu::JANG_ISA

#include "cpu/qmm_kernel.h"

namespace jang::cpu {

const Isa& isa_avx512() {
  static const Isa isa{
      "avx512",
      16,
      &avx512_isa::qmm,
      &avx512_isa::V::to_f32,
      &avx512_isa::V::from_f32};
  return isa;
}

} // namespace jang::cpu
