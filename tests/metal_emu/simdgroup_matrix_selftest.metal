// A test of the emulation itself (not part of jang.metallib): simdgroup
// matrix load (strided, transposed), fill, multiply-accumulate and store, and
// two misuses the emulation must report.
#include "jang_metal.h"

// MODE 0: out = A * B^T + 0.25 stored row-major (row stride 9) at out and
// transposed at out + 72; A is 8 rows of stride 11 in device memory, B a
// row-major 8 x 8 staged in threadgroup memory. MODE 1: half the lanes leave
// before a simdgroup_load. MODE 2: lanes pass different source pointers.
template <int MODE>
[[kernel]] void emu_simdgroup_matrix(
    const device float* a [[buffer(0)]],
    const device float* b [[buffer(1)]],
    device float* out [[buffer(2)]],
    threadgroup float* tg [[threadgroup(0)]],
    uint lane [[thread_index_in_simdgroup]]) {
  for (uint i = lane; i < 64; i += 32) {
    tg[i] = b[i];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 ma;
  simdgroup_float8x8 mb;
  simdgroup_load(ma, a + (MODE == 2 ? lane % 2 : 0), 11);
  if (MODE == 1 && lane >= 16) {
    return;
  }
  simdgroup_load(mb, tg, 8, ulong2(0), true);
  simdgroup_float8x8 mc = make_filled_simdgroup_matrix<float, 8, 8>(0.25f);
  simdgroup_multiply_accumulate(mc, ma, mb, mc);
  simdgroup_store(mc, out, 9);
  simdgroup_store(mc, out + 72, 8, ulong2(0), true);
}

JANG_INSTANTIATE("emu_simdgroup_matrix", emu_simdgroup_matrix, 0)
JANG_INSTANTIATE("emu_simdgroup_matrix_divergent", emu_simdgroup_matrix, 1)
JANG_INSTANTIATE("emu_simdgroup_matrix_lane_args", emu_simdgroup_matrix, 2)
