// Instances of qmm_kernel for one width (JANG_BITS), included by
// qmm_b<bits>.cu so that the widths compile in parallel.
#include "cuda/qmm.cuh"

namespace jang::cuda {

namespace {

template <typename T, int GS, int MT, int RT, bool F32> void* qmm_fn() {
  return function_of(reinterpret_cast<const void*>(
      &qmm_kernel<T, JANG_BITS, GS, MT, RT, F32>));
}

// The compiled (MT, RT, out_f32) combinations: M <= 8 one weight tile (and the
// fp32 output of moe_gate_up), up to 32 rows two tiles, 64 rows one.
template <typename T, int GS> void* qmm_pick(int mt, int rt, bool out_f32) {
  if (out_f32) {
    return (mt == 1 && rt == 1) ? qmm_fn<T, GS, 1, 1, true>() : nullptr;
  }
  switch (mt * 10 + rt) {
  case 11:
    return qmm_fn<T, GS, 1, 1, false>();
  case 12:
    return qmm_fn<T, GS, 1, 2, false>();
  case 22:
    return qmm_fn<T, GS, 2, 2, false>();
  case 42:
    return qmm_fn<T, GS, 4, 2, false>();
  case 81:
    return qmm_fn<T, GS, 8, 1, false>();
  default:
    return nullptr;
  }
}

template <typename T> void* qmm_pick_gs(int gs, int mt, int rt, bool out_f32) {
  switch (gs) {
  case 32:
    return qmm_pick<T, 32>(mt, rt, out_f32);
  case 64:
    return qmm_pick<T, 64>(mt, rt, out_f32);
  case 128:
    return qmm_pick<T, 128>(mt, rt, out_f32);
  default:
    return nullptr;
  }
}

} // namespace

#define JANG_CAT2(a, b) a##b
#define JANG_CAT(a, b) JANG_CAT2(a, b)
void* JANG_CAT(qmm_function_b, JANG_BITS)(
    DT t, int gs, int mt, int rt, bool out_f32) {
  if (t == DT::f16) {
    return qmm_pick_gs<__half>(gs, mt, rt, out_f32);
  }
  if (t == DT::bf16) {
    return qmm_pick_gs<__nv_bfloat16>(gs, mt, rt, out_f32);
  }
  return nullptr;
}

} // namespace jang::cuda
