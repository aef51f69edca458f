// Scalar fp16/bf16 <-> fp32 conversions (round to nearest even), compiled into
// each instruction set's namespace (see qmm_kernel.h for why). Bit-level, so
// they need no compiler support for half types.
#ifndef JANG_ISA
#error "define JANG_ISA before including qmm_half.h"
#endif

namespace jang::cpu::JANG_ISA {

inline float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) {
    return bits_to_float(sign | 0x7f800000u | (man << 13));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) { // inf or nan
    return static_cast<uint16_t>(
        sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
  }
  if (a >= 0x477ff000u) { // rounds to >= 65520: overflow to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (a < 0x38800000u) { // below the smallest normal half: subnormal or zero
    // value * 2^24 rounded to nearest even, as an integer mantissa
    const float v = bits_to_float(a) * 16777216.0f;
    const float r = __builtin_nearbyintf(v);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

inline float bf16_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline void scalar_to_f32(
    const void* src, ElemType type, int64_t n, int64_t stride, float* dst) {
  if (type == ElemType::f32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = s[i * stride];
    }
  } else if (type == ElemType::f16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = half_to_float(s[i * stride]);
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = bf16_to_float(s[i * stride]);
    }
  }
}

inline void
scalar_from_f32(const float* src, ElemType type, int64_t n, void* dst) {
  if (type == ElemType::f32) {
    float* d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      d[i] = src[i];
    }
  } else if (type == ElemType::f16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      d[i] = float_to_half(src[i]);
    }
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      d[i] = float_to_bf16(src[i]);
    }
  }
}

} // namespace jang::cpu::JANG_ISA
