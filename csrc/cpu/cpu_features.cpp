// Runtime detection of the SIMD instruction sets jang's CPU kernels can use,
// and the choice among them. No MLX here: tests/neon builds this file with the
// kernels alone (for aarch64, run under qemu).
#include <atomic>
#include <stdexcept>
#include <string>

#include "cpu/qmm.h"

namespace jang::cpu {

const char* simd_level() {
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
#elif defined(__aarch64__)
  // Advanced SIMD is part of the AArch64 base architecture.
  return "neon";
#else
  return "scalar";
#endif
}

namespace {

std::atomic<const Isa*> g_isa{nullptr};

const Isa* best_isa() {
  [[maybe_unused]] const std::string level = simd_level();
#if defined(__x86_64__)
  if (level == "avx512") {
    return &isa_avx512();
  }
  if (level == "avx2") {
    return &isa_avx2();
  }
#elif defined(__aarch64__)
  return &isa_neon();
#endif
  return &isa_scalar();
}

} // namespace

const Isa& active_isa() {
  const Isa* isa = g_isa.load(std::memory_order_acquire);
  if (isa == nullptr) {
    isa = best_isa();
    g_isa.store(isa, std::memory_order_release);
  }
  return *isa;
}

const char* set_isa(const char* name) {
  const char* previous = active_isa().name;
  const std::string want(name);
  [[maybe_unused]] const std::string level = simd_level();
  const Isa* isa = nullptr;
  if (want == "auto") {
    isa = best_isa();
  } else if (want == "scalar") {
    isa = &isa_scalar();
#if defined(__x86_64__)
  } else if (want == "avx2") {
    if (level != "avx2" && level != "avx512") {
      throw std::invalid_argument(
          "[jang.set_cpu_kernel_isa] this CPU lacks AVX2 + FMA");
    }
    isa = &isa_avx2();
  } else if (want == "avx512") {
    if (level != "avx512") {
      throw std::invalid_argument(
          "[jang.set_cpu_kernel_isa] this CPU lacks AVX-512 F/BW/VL");
    }
    isa = &isa_avx512();
#elif defined(__aarch64__)
  } else if (want == "neon") {
    isa = &isa_neon();
#endif
  } else {
    throw std::invalid_argument(
        "[jang.set_cpu_kernel_isa] name must be one of auto, scalar, avx2, "
        "avx512 (on x86-64), neon (on aarch64); got '" +
        want + "'");
  }
  g_isa.store(isa, std::memory_order_release);
  return previous;
}

} // namespace jang::cpu
