// Plain structs shared by the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc)
// and the host code that launches them through MLX (csrc/cuda/eval_gpu.cpp,
// compiled by the C++ compiler: nvcc cannot parse MLX's headers). Nothing here
// includes MLX or CUDA headers.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef __CUDACC__
#define JANG_HD __host__ __device__
#else
#define JANG_HD
#endif

namespace jang::cuda {

enum class DT : int { f32 = 0, f16 = 1, bf16 = 2 };

constexpr int kMaxDims = 8;

// An array's shape and element strides; the kernels read strided activations
// and index arrays through it.
struct Strided {
  int ndim;
  int shape[kMaxDims];
  int64_t strides[kMaxDims];
};

// Offset (in elements) of row `r` of an array whose last dimension is the row:
// the row-major walk over every dimension but the last.
JANG_HD inline int64_t row_offset(const Strided& s, int64_t r) {
  int64_t off = 0;
  for (int d = s.ndim - 2; d >= 0; --d) {
    off += (r % s.shape[d]) * s.strides[d];
    r /= s.shape[d];
  }
  return off;
}

// Offset of the i-th element in row-major order.
JANG_HD inline int64_t elem_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.ndim - 1; d >= 0; --d) {
    off += (i % s.shape[d]) * s.strides[d];
    i /= s.shape[d];
  }
  return off;
}

// One batched quantized matmul on the tensor cores: for each z < gridDim.z,
//   out[z] (m, n) = x[xb(z)] (m, k) @ dequantize(w[e(z)]).T
// with xb(z) = lhs ? lhs[z] : z / x_div and e(z) = rhs ? rhs[z] : z; an
// index out of range gives zeros. x, w, scales, biases are row-contiguous,
// x 16-byte aligned.
struct QmmParams {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  void* out;
  const uint32_t* lhs;
  const uint32_t* rhs;
  int64_t x_batch;   // elements between activation batches of x
  int64_t w_batch;   // words between experts of w
  int64_t s_batch;   // elements between experts of scales / biases
  int64_t out_batch; // elements between outputs of consecutive z
  int m, n, k;
  int x_div;
  int x_batches; // valid range of xb(z)
  int experts;   // valid range of e(z)
  int aligned;   // w rows allow 16-byte loads
  int s_aligned; // scale / bias rows allow 4-byte loads (qmt_kernel)
  int nwr;       // qmv_kernel: row groups of warps per block
};

// The same product on the CUDA cores for any float types (fp32 activations,
// mixed dtypes): one warp per output element, fp32 arithmetic.
struct GenericParams {
  const void* x;
  Strided xs; // x viewed as (rows, k); row = xb * m + i
  const uint32_t* w;
  const void* scales;
  const void* biases;
  void* out;
  const uint32_t* lhs;
  const uint32_t* rhs;
  int64_t w_batch, s_batch, out_batch;
  int m, n, k, group_size;
  int x_div, x_batches, experts;
  int xdt, sdt, bdt, odt; // DT
};

struct DequantParams {
  const uint32_t* w;
  const void* scales;
  const void* biases;
  void* out;
  int64_t rows;
  int k, group_size;
};

struct CopyParams {
  const void* src;
  Strided s;
  void* dst;
  int64_t total;
};

struct SwigluParams {
  const float* gate;
  const float* up;
  void* out;
  int64_t total;
};

// Kernel handles (CUfunction), resolved in this library's CUDA runtime with
// cudaGetFuncBySymbol so that MLX's own runtime can launch them. nullptr when
// the combination is not compiled.
// qmv_kernel: MT m tiles of 8 rows, RT tiles of 16 weight rows per warp,
// activations staged in shared memory (xs: MT = 1, M <= 2).
void* qmv_function(
    DT t, int bits, int group_size, int mt, int rt, bool out_f32, bool xs);
// qmt_kernel: MT m tiles of 8 rows per block, KS warps per 16-row tile (the
// k16 steps of each unit split among them); its dynamic shared memory limit is
// raised to QmtSmem::total() on lookup.
void* qmt_function(DT t, int bits, int group_size, int mt, int ks);
void* generic_function(int bits);
void* dequant_function(DT t, int bits);
void* copy_function(int elem_bytes);
void* swiglu_function(DT t);

// Multiprocessors of `device` (the first call also makes it current for this
// library's runtime).
int sm_count(int device);

// Tiling shared by the host and the kernels.
constexpr int kRowsPerWarp = 16;
// Units (32 codes) each lane reads per row and chunk: U * bits words, a
// multiple of 4 so that a lane's words come in 16-byte loads.
JANG_HD constexpr int lane_units(int bits) {
  return (bits == 2 || bits == 3 || bits == 5) ? 4 : bits == 8 ? 1 : 2;
}

// Codes per row of one qmv_kernel chunk (a warp's unit of work and prefetch):
// 2/4/8 bits 4 lanes x 2 blocks of 16 bytes, 3/5/6 bits 4 lanes x U units.
JANG_HD constexpr int qmv_chunk_codes(int bits) {
  return (bits == 2 || bits == 4 || bits == 8) ? 4 * 2 * (128 / bits)
                                               : 4 * lane_units(bits) * 32;
}

// qmv_kernel with staged activations: shared memory for M rows of k codes
// (entries of 8 codes, one padding entry in 8), and its limit.
JANG_HD constexpr int qmv_xs_bytes(int m, int k) {
  return m * (k / 8 + k / 64 + 1) * 16;
}
constexpr int kQmvXsMaxBytes = 96 * 1024;

// Threads per block of qmv_kernel at most: 512 (128 registers a thread) for
// one 16-row tile and one m tile per warp, else 256 (more accumulators, or
// the 20-word chunks of 5 bits, need more registers).
JANG_HD constexpr int qmv_max_threads(int bits, int mt, int rt) {
  return (rt == 1 && mt == 1 && bits != 5) ? 512 : 256;
}

// How a qmv_kernel launch splits its work (eval_gpu.cpp launches it so, and
// bench/cuda_kernels.cu times the same launches): the grid over row groups and
// m tiles, `nwk` warps per row group sharing the k loop (a power of two, so
// that a row's chunks, usually a power of two, divide evenly among them; as
// many as it takes to give the device about `target_warps` warps), and the
// shared memory of their reduction.
struct QmvLaunch {
  unsigned grid_x = 1, grid_y = 1;
  int nwk = 1;
  uint32_t reduce_bytes = 0;
};

inline QmvLaunch qmv_launch(
    int bits,
    int m,
    int n,
    int k,
    bool aligned,
    int mt,
    int rt,
    int nwr,
    int64_t batches,
    int64_t target_warps) {
  const int max_warps = qmv_max_threads(bits, mt, rt) / 32;
  // Work items along k: chunks of the main loop, groups of 4 tail units.
  const int chunks = aligned ? k / qmv_chunk_codes(bits) : 0;
  const int tail_units = k / 32 - chunks * (qmv_chunk_codes(bits) / 32);
  const int work = std::max({1, chunks, (tail_units + 3) / 4});
  const int rows_per_block = kRowsPerWarp * rt * nwr;
  QmvLaunch l;
  l.grid_x = static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block);
  l.grid_y = static_cast<unsigned>((m + 8 * mt - 1) / (8 * mt));
  const int64_t blocks = static_cast<int64_t>(l.grid_x) * l.grid_y * batches;
  const int64_t want = std::clamp<int64_t>(
      (target_warps + blocks * nwr - 1) / (blocks * nwr), 1, max_warps / nwr);
  while (l.nwk * 2 <= want) {
    l.nwk *= 2;
  }
  l.nwk = std::max(1, std::min(l.nwk, work));
  l.reduce_bytes =
      static_cast<uint32_t>((l.nwk - 1) * nwr * rt * mt * 4 * 32 * sizeof(float));
  return l;
}

// qmt_kernel: warps per block (16 weight rows each), codes per row and stage,
// stages in flight.
constexpr int kTiledWarps = 4;
constexpr int kTiledCodes = 128;
constexpr int kTiledStages = 4;

// Shared-memory layout of qmt_kernel (bytes).
struct QmtSmem {
  int bits, gs, mt;
  JANG_HD constexpr int bm() const {
    return 8 * mt;
  }
  JANG_HD constexpr int bn() const {
    return 16 * kTiledWarps;
  }
  JANG_HD constexpr int xrow() const { // activations, padded
    return kTiledCodes * 2 + 16;
  }
  JANG_HD constexpr int wrow() const { // packed codes, padded for 8 bits
    return kTiledCodes * bits / 8 + (bits == 8 ? 16 : 0);
  }
  JANG_HD constexpr int swords() const { // 4-byte words of scales per row
    return kTiledCodes / gs > 2 ? kTiledCodes / gs / 2 : 1;
  }
  JANG_HD constexpr int x_stage() const {
    return bm() * xrow();
  }
  JANG_HD constexpr int w_stage() const {
    return bn() * wrow();
  }
  JANG_HD constexpr int s_stage() const {
    return 2 * bn() * swords() * 4;
  }
  JANG_HD constexpr int e_bytes() const { // permuted activations, 2 stages
    return 2 * 4 * mt * 32 * 16;
  }
  JANG_HD constexpr int total() const {
    return kTiledStages * (x_stage() + w_stage() + s_stage()) + e_bytes();
  }
};

} // namespace jang::cuda
