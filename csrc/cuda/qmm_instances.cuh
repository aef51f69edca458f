// Instances of qmv_kernel or qmt_kernel for one width and activation type,
// included by the small files CMake generates from qmm_instance.cu.in, one per
// width (JANG_FOR_EACH_BITS), type and kernel, so that they compile in
// parallel: JANG_BITS, JANG_BF16 (0: fp16, 1: bf16), JANG_TILED (0:
// qmv_kernel, 1: qmt_kernel).
#include <cuda_runtime.h>

#include "cuda/qmm.cuh"

namespace jang::cuda {

namespace {

using T = std::conditional_t<JANG_BF16, __nv_bfloat16, __half>;

template <typename F> void* by_group(int gs, F&& f) {
  return affine::with_group_size(gs, f, [] { return static_cast<void*>(nullptr); });
}

#if JANG_TILED
template <int GS, int MT, int KS> void* qmt_fn() {
  const void* sym =
      reinterpret_cast<const void*>(&qmt_kernel<T, JANG_BITS, GS, MT, KS>);
  // Above 48 KB of dynamic shared memory a kernel must opt in, once.
  static const bool raised = [sym] {
    const int bytes = QmtSmem{JANG_BITS, GS, MT}.total();
    return cudaFuncSetAttribute(
               sym, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
           cudaSuccess;
  }();
  return raised ? function_of(sym) : nullptr;
}

template <int GS> void* qmt_pick(int mt, int ks) {
  switch (mt * 10 + ks) {
  case 21:
    return qmt_fn<GS, 2, 1>();
  case 22:
    return qmt_fn<GS, 2, 2>();
  case 41:
    return qmt_fn<GS, 4, 1>();
  case 42:
    return qmt_fn<GS, 4, 2>();
  case 81:
    return qmt_fn<GS, 8, 1>();
  case 82:
    return qmt_fn<GS, 8, 2>();
  default:
    return nullptr;
  }
}
#else
template <int GS, int MT, int RT, bool F32, bool XS> void* qmv_fn() {
  const void* sym = reinterpret_cast<const void*>(
      &qmv_kernel<T, JANG_BITS, GS, MT, RT, F32, XS>);
  if constexpr (XS) {
    // The staged activations may take more than the default 48 KB.
    static const bool raised =
        cudaFuncSetAttribute(
            sym, cudaFuncAttributeMaxDynamicSharedMemorySize, kQmvXsMaxBytes) ==
        cudaSuccess;
    if (!raised) {
      return nullptr;
    }
  }
  return function_of(sym);
}

// The compiled (MT, RT, out_f32, xs) combinations: 8 or 16 activation rows,
// 16 or 32 weight rows per warp, the fp32 output of moe_gate_up (one row),
// activations staged in shared memory (M <= 2).
template <int GS> void* qmv_pick(int mt, int rt, bool out_f32, bool xs) {
  if (out_f32) {
    if (mt != 1 || rt != 1) {
      return nullptr;
    }
    return xs ? qmv_fn<GS, 1, 1, true, true>()
              : qmv_fn<GS, 1, 1, true, false>();
  }
  switch (mt * 100 + rt * 10 + (xs ? 1 : 0)) {
  case 110:
    return qmv_fn<GS, 1, 1, false, false>();
  case 111:
    return qmv_fn<GS, 1, 1, false, true>();
  case 120:
    return qmv_fn<GS, 1, 2, false, false>();
  case 121:
    return qmv_fn<GS, 1, 2, false, true>();
  case 210:
    return qmv_fn<GS, 2, 1, false, false>();
  case 220:
    return qmv_fn<GS, 2, 2, false, false>();
  default:
    return nullptr;
  }
}
#endif

} // namespace

#define JANG_CAT3(a, b, c) a##b##c
#define JANG_NAME(a, b, c) JANG_CAT3(a, b, c)
#if JANG_TILED
void* JANG_NAME(qmt_function_b, JANG_BITS, JANG_SUFFIX)(
    int gs, int mt, int ks) {
  return by_group(gs, [&](auto g) {
    return qmt_pick<decltype(g)::value>(mt, ks);
  });
}
#else
void* JANG_NAME(qmv_function_b, JANG_BITS, JANG_SUFFIX)(
    int gs, int mt, int rt, bool out_f32, bool xs) {
  return by_group(gs, [&](auto g) {
    return qmv_pick<decltype(g)::value>(mt, rt, out_f32, xs);
  });
}
#endif

} // namespace jang::cuda
