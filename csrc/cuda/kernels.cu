// Kernel lookup (cudaGetFuncBySymbol in this library's CUDA runtime, whose
// handles MLX's runtime can launch) and the small kernels' instances.
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <cuda_runtime.h>

#include "cuda/qmm.cuh"

namespace jang::cuda {

void* qmm_function_b2(DT, int, int, int, bool);
void* qmm_function_b3(DT, int, int, int, bool);
void* qmm_function_b4(DT, int, int, int, bool);
void* qmm_function_b5(DT, int, int, int, bool);
void* qmm_function_b6(DT, int, int, int, bool);
void* qmm_function_b8(DT, int, int, int, bool);

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
  cache.emplace(symbol, reinterpret_cast<void*>(f));
  return reinterpret_cast<void*>(f);
}

int sm_count(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  check(cudaSetDevice(device), "cudaSetDevice");
  auto it = cache.find(device);
  if (it != cache.end()) {
    return it->second;
  }
  int n = 0;
  check(
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
      "cudaDeviceGetAttribute");
  cache.emplace(device, n);
  return n;
}

void* qmm_function(
    DT t, int bits, int group_size, int mt, int rt, bool out_f32) {
  switch (bits) {
  case 2:
    return qmm_function_b2(t, group_size, mt, rt, out_f32);
  case 3:
    return qmm_function_b3(t, group_size, mt, rt, out_f32);
  case 4:
    return qmm_function_b4(t, group_size, mt, rt, out_f32);
  case 5:
    return qmm_function_b5(t, group_size, mt, rt, out_f32);
  case 6:
    return qmm_function_b6(t, group_size, mt, rt, out_f32);
  case 8:
    return qmm_function_b8(t, group_size, mt, rt, out_f32);
  default:
    return nullptr;
  }
}

#define JANG_BY_BITS(KERNEL, ...)                                              \
  switch (bits) {                                                              \
  case 2:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 2>)); \
  case 3:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 3>)); \
  case 4:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 4>)); \
  case 5:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 5>)); \
  case 6:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 6>)); \
  case 8:                                                                      \
    return function_of(reinterpret_cast<const void*>(&KERNEL<__VA_ARGS__ 8>)); \
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
