// Runtime detection of the SIMD instruction sets jang's CPU kernels can use.
#include "jang/ops.h"

namespace jang {

std::string cpu_simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return "avx512";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return "avx2";
  }
  return "scalar";
#elif defined(__aarch64__) || defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

} // namespace jang
