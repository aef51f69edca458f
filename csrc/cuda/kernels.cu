// Kernel lookup (cudaGetFuncBySymbol in this library's CUDA runtime, whose
// handles MLX's runtime can launch) and the small kernels' instances.
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/qmm.cuh"

namespace jang::cuda {

// Defined by the instance files CMake generates per width and type
// (qmm_instance.cu.in).
#define JANG_DECLARE(B, ...)                                                   \
  void* qmv_function_b##B##_f16(int, int, int, bool, bool);                    \
  void* qmv_function_b##B##_bf16(int, int, int, bool, bool);                   \
  void* qmt_function_b##B##_f16(int, int, int);                                \
  void* qmt_function_b##B##_bf16(int, int, int);
JANG_FOR_EACH_BITS(JANG_DECLARE, _)
#undef JANG_DECLARE

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(
        std::string("[jang.cuda] ") + what + ": " + cudaGetErrorString(err));
  }
}

} // namespace

void* function_of(const void* symbol) {
  static std::mutex mutex;
  static std::unordered_map<const void*, void*> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(symbol);
  if (it != cache.end()) {
    return it->second;
  }
  cudaFunction_t f = nullptr;
  check(cudaGetFuncBySymbol(&f, symbol), "cudaGetFuncBySymbol");
#if CUDA_VERSION >= 12040
  // Load it now (lazy loading would otherwise defer it to a first launch).
  cuFuncLoad(reinterpret_cast<CUfunction>(f));
#endif
  cache.emplace(symbol, reinterpret_cast<void*>(f));
  return reinterpret_cast<void*>(f);
}

int sm_count(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) {
    return it->second;
  }
  // Only the first time: a runtime call on every product measured ~28 us of
  // host time per op under MLX's CUDA graphs (bench/results/cuda_h200.md).
  check(cudaSetDevice(device), "cudaSetDevice");
  int n = 0;
  check(
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
      "cudaDeviceGetAttribute");
  cache.emplace(device, n);
  return n;
}

// Per width and type, from the generated instance files.
#define JANG_PICK(B, ...)                                                      \
  case B:                                                                      \
    return t == DT::f16    ? FN(B, _f16)(__VA_ARGS__)                          \
           : t == DT::bf16 ? FN(B, _bf16)(__VA_ARGS__)                         \
                           : nullptr;

void* qmv_function(
    DT t, int bits, int group_size, int mt, int rt, bool out_f32, bool xs) {
#define FN(B, S) qmv_function_b##B##S
  switch (bits) {
    JANG_FOR_EACH_BITS(JANG_PICK, group_size, mt, rt, out_f32, xs)
  default:
    return nullptr;
  }
#undef FN
}

void* qmt_function(DT t, int bits, int group_size, int mt, int ks) {
#define FN(B, S) qmt_function_b##B##S
  switch (bits) {
    JANG_FOR_EACH_BITS(JANG_PICK, group_size, mt, ks)
  default:
    return nullptr;
  }
#undef FN
}
#undef JANG_PICK

// KERNEL<TYPE, bits> (or KERNEL<bits> when TYPE is empty) for the run-time
// width `bits`.
#define JANG_KERNEL_CASE(B, KERNEL, ...)                                       \
  case B:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ B>));
#define JANG_BY_BITS(KERNEL, ...)                                              \
  switch (bits) {                                                              \
    JANG_FOR_EACH_BITS(JANG_KERNEL_CASE, KERNEL, __VA_ARGS__)                  \
  default:                                                                     \
    return nullptr;                                                            \
  }

void* generic_function(int bits) {
  JANG_BY_BITS(generic_kernel, )
}

void* dequant_function(DT t, int bits) {
  if (t == DT::f16) {
    JANG_BY_BITS(dequant_kernel, __half, )
  }
  if (t == DT::bf16) {
    JANG_BY_BITS(dequant_kernel, __nv_bfloat16, )
  }
  JANG_BY_BITS(dequant_kernel, float, )
}

void* copy_function(int elem_bytes) {
  switch (elem_bytes) {
  case 1:
    return function_of(reinterpret_cast<const void*>(&copy_kernel<uint8_t>));
  case 2:
    return function_of(reinterpret_cast<const void*>(&copy_kernel<uint16_t>));
  case 4:
    return function_of(reinterpret_cast<const void*>(&copy_kernel<uint32_t>));
  case 8:
    return function_of(reinterpret_cast<const void*>(&copy_kernel<uint64_t>));
  default:
    return nullptr;
  }
}

void* swiglu_function(DT t) {
  switch (t) {
  case DT::f16:
    return function_of(reinterpret_cast<const void*>(&swiglu_kernel<__half>));
  case DT::bf16:
    return function_of(
        reinterpret_cast<const void*>(&swiglu_kernel<__nv_bfloat16>));
  default:
    return function_of(reinterpret_cast<const void*>(&swiglu_kernel<float>));
  }
}

} // namespace jang::cuda
