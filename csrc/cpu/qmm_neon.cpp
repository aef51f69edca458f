// NEON (AArch64 Advanced SIMD) instance of the quantized matmul kernel: 4
// lanes, 16-row tiles. Advanced SIMD, including the fp16 <-> fp32 conversions
// used here, is part of every AArch64 CPU, so this file needs no extra -m flags
// and no runtime check beyond being built for aarch64 (cpu_features.cpp picks
// it there). Optional extensions (dotprod, fp16 arithmetic) are not used: the
// kernel's arithmetic is fp32 FMA on converted codes, as on x86.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "cpu/qmm.h"
#include "jang/affine.h"

#define JANG_ISA neon_isa
#include "cpu/qmm_half.h"

namespace jang::cpu::JANG_ISA {

struct V {
  static constexpr int L = 4;
  // 32 vector registers hold a 16-row tile's accumulators, scaled codes and
  // activation loads (GCC 12 keeps 2/4/8-bit tiles in registers; 3/5/6-bit
  // ones, with 3 or 5 words per pack, spill a few values to the stack). Not
  // timed: this project has no ARM machine, only qemu.
  static constexpr int kMaxTile = 16;
  using F = float32x4_t;
  using I = uint32x4_t;
  // Byte indices for a table lookup (expand).
  using Index = uint8x16_t;

  static F zero() {
    return vdupq_n_f32(0.0f);
  }
  static F set1(float v) {
    return vdupq_n_f32(v);
  }
  static F loadu(const float* p) {
    return vld1q_f32(p);
  }
  static F fma(F a, F b, F c) {
    return vfmaq_f32(c, a, b);
  }
  static void storeu(float* p, F v) {
    vst1q_f32(p, v);
  }
  static F add(F a, F b) {
    return vaddq_f32(a, b);
  }
  static F mul(F a, F b) {
    return vmulq_f32(a, b);
  }
  static float hsum(F a) {
    return vaddvq_f32(a);
  }
  static I load_words_partial(const uint32_t* p, int count) {
    // Lane loads only: nothing past p[count - 1] is touched.
    I v = vdupq_n_u32(0);
    if (count > 0) {
      v = vld1q_lane_u32(p, v, 0);
    }
    if (count > 1) {
      v = vld1q_lane_u32(p + 1, v, 1);
    }
    if (count > 2) {
      v = vld1q_lane_u32(p + 2, v, 2);
    }
    if (count > 3) {
      v = vld1q_lane_u32(p + 3, v, 3);
    }
    return v;
  }
  static I load_words(const uint32_t* p) {
    return vld1q_u32(p);
  }
  // Lane j of out[w] = p[j*S + w]: the de-interleaving loads (LD2/LD3/LD4)
  // do exactly this for S <= 4; 5-word packs are assembled lane by lane.
  template <int S> static void load_lanes(const uint32_t* p, I* out) {
    if constexpr (S == 2) {
      const uint32x4x2_t v = vld2q_u32(p);
      out[0] = v.val[0];
      out[1] = v.val[1];
    } else if constexpr (S == 3) {
      const uint32x4x3_t v = vld3q_u32(p);
      out[0] = v.val[0];
      out[1] = v.val[1];
      out[2] = v.val[2];
    } else if constexpr (S == 4) {
      const uint32x4x4_t v = vld4q_u32(p);
      out[0] = v.val[0];
      out[1] = v.val[1];
      out[2] = v.val[2];
      out[3] = v.val[3];
    } else {
      for (int w = 0; w < S; ++w) {
        I v = vld1q_dup_u32(p + w);
        v = vld1q_lane_u32(p + S + w, v, 1);
        v = vld1q_lane_u32(p + 2 * S + w, v, 2);
        v = vld1q_lane_u32(p + 3 * S + w, v, 3);
        out[w] = v;
      }
    }
  }
  template <int S> static I srli(I v) {
    return vshrq_n_u32(v, S);
  }
  template <int S> static I slli(I v) {
    return vshlq_n_u32(v, S);
  }
  template <uint32_t M> static I and_mask(I v) {
    return vandq_u32(v, vdupq_n_u32(M));
  }
  static I or_(I a, I b) {
    return vorrq_u32(a, b);
  }
  static F cvt(I v) {
    return vcvtq_f32_u32(v);
  }
  static Index make_expand_index(int ppg) {
    alignas(16) uint8_t idx[16];
    for (int j = 0; j < 4; ++j) {
      for (int b = 0; b < 4; ++b) {
        idx[4 * j + b] = static_cast<uint8_t>(4 * (j / ppg) + b);
      }
    }
    return vld1q_u8(idx);
  }
  static F expand(const float* p, Index idx) {
    return vreinterpretq_f32_u8(
        vqtbl1q_u8(vreinterpretq_u8_f32(vld1q_f32(p)), idx));
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
      for (; i + 4 <= n; i += 4) {
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s + i))));
      }
    } else {
      for (; i + 4 <= n; i += 4) {
        vst1q_f32(
            dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(s + i), 16)));
      }
    }
    scalar_to_f32(s + i, type, n - i, 1, dst + i);
  }

  static void from_f32(const float* src, ElemType type, int64_t n, void* dst) {
    if (type == ElemType::f32) {
      __builtin_memcpy(dst, src, n * sizeof(float));
      return;
    }
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    if (type == ElemType::f16) {
      // FCVTN rounds to nearest even under the default FPCR, as
      // float_to_half does.
      for (; i + 4 <= n; i += 4) {
        vst1_u16(d + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
      }
    }
    scalar_from_f32(src + i, type, n - i, d + i);
  }
};

} // namespace jang::cpu::JANG_ISA

#include "cpu/qmm_kernel.h"

namespace jang::cpu {

const Isa& isa_neon() {
  static const Isa isa{
      "neon", 4, &neon_isa::qmm, &neon_isa::V::to_f32, &neon_isa::V::from_f32};
  return isa;
}

} // namespace jang::cpu

#endif // defined(__aarch64__)
