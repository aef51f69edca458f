// eval_gpu of jang's primitives on MLX's CUDA backend (CMake compiles this
// file when the installed MLX is the CUDA build, and csrc/no_gpu.cpp
// otherwise).
//
// This file talks to MLX (C++ compiler; nvcc cannot parse mlx/ops.h); the
// kernels live in csrc/cuda/*.cu and are reached through cuda/params.h. Each
// kernel is added to MLX's command encoder as a CUfunction node: the handles
// come from cudaGetFuncBySymbol in this library's CUDA runtime, since libmlx
// links its own static runtime, which does not know our kernels.
//
// Memory: arrays are read through gpu_ptr (array::data would move a device
// buffer to managed memory, synchronously). MLX exports only its managed
// allocator, whose reuse of a cached device buffer also copies it
// synchronously, so outputs and temporaries come from a stream-ordered pool of
// our own on MLX's stream (device_data).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <cuda.h>

#include "mlx/allocator.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"

#include "cuda/params.h"
#include "jang/primitives.h"

namespace jang {

namespace {

namespace cu = mx::cu;
using cuda::DT;

DT dt_of(mx::Dtype t) {
  if (t == mx::float16) {
    return DT::f16;
  }
  if (t == mx::bfloat16) {
    return DT::bf16;
  }
  if (t == mx::float32) {
    return DT::f32;
  }
  throw std::invalid_argument("[jang.cuda] unsupported floating point type");
}

bool is_half(mx::Dtype t) {
  return t == mx::float16 || t == mx::bfloat16;
}

cuda::Strided strided_of(const mx::array& a) {
  cuda::Strided s{};
  if (a.ndim() > static_cast<size_t>(cuda::kMaxDims)) {
    throw std::invalid_argument("[jang.cuda] arrays of more than 8 dimensions");
  }
  s.ndim = static_cast<int>(a.ndim());
  for (int d = 0; d < s.ndim; ++d) {
    s.shape[d] = a.shape(d);
    s.strides[d] = a.strides()[d];
  }
  if (s.ndim == 0) {
    s.ndim = 1;
    s.shape[0] = 1;
    s.strides[0] = 1;
  }
  return s;
}

void check_cu(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    const char* msg = nullptr;
    cuGetErrorString(r, &msg);
    throw std::runtime_error(
        std::string("[jang.cuda] ") + what + ": " +
        (msg ? msg : "unknown error"));
  }
}

// The memory pool of jang's outputs on `device` (kept, not returned to the
// system, between synchronizations).
CUmemoryPool pool_of(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, CUmemoryPool> pools;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = pools.find(device);
  if (it != pools.end()) {
    return it->second;
  }
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = device;
  CUmemoryPool pool = nullptr;
  check_cu(cuMemPoolCreate(&pool, &props), "cuMemPoolCreate");
  cuuint64_t keep = ~cuuint64_t(0);
  check_cu(
      cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep),
      "cuMemPoolSetAttribute");
  pools.emplace(device, pool);
  return pool;
}

// Device memory for an output or temporary, allocated and (when the array
// goes) freed in order on the encoder's stream. The buffer is an MLX
// CudaBuffer, so MLX reads it as its own (and moves it to managed memory
// itself if the CPU ever reads it).
mx::allocator::Data device_data(cu::CommandEncoder& enc, size_t nbytes) {
  if (nbytes == 0) {
    return mx::allocator::malloc(0);
  }
  const int device = enc.device().cuda_device();
  CUstream stream =
      reinterpret_cast<CUstream>(static_cast<cudaStream_t>(enc.stream()));
  CUcontext ctx = nullptr;
  check_cu(cuCtxGetCurrent(&ctx), "cuCtxGetCurrent");
  if (ctx == nullptr) {
    CUdevice dev = 0;
    check_cu(cuDeviceGet(&dev, device), "cuDeviceGet");
    check_cu(cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check_cu(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  }
  CUdeviceptr ptr = 0;
  check_cu(
      cuMemAllocFromPoolAsync(&ptr, nbytes, pool_of(device), stream),
      "cuMemAllocFromPoolAsync");
  auto* buf =
      new mx::cu::CudaBuffer{reinterpret_cast<void*>(ptr), nbytes, device};
  return mx::allocator::Data(
      mx::allocator::Buffer(buf), [stream, ctx](mx::allocator::Buffer b) {
        auto* cb = static_cast<mx::cu::CudaBuffer*>(b.ptr());
        CUcontext prev = nullptr;
        cuCtxGetCurrent(&prev);
        if (prev != ctx) {
          cuCtxSetCurrent(ctx);
        }
        if (cb->device >= 0) {
          cuMemFreeAsync(reinterpret_cast<CUdeviceptr>(cb->data), stream);
        } else if (cb->data != nullptr) {
          // MLX moved it to managed memory (read on the CPU).
          cuMemFree(reinterpret_cast<CUdeviceptr>(cb->data));
        }
        if (prev != ctx) {
          cuCtxSetCurrent(prev);
        }
        delete cb;
      });
}

template <typename T = void> auto ptr(const mx::array& a) {
  return mx::gpu_ptr<T>(a);
}

void* need(void* fn, const char* what) {
  if (fn == nullptr) {
    throw std::runtime_error(std::string("[jang.cuda] no kernel for ") + what);
  }
  return fn;
}

// Tuning knobs, read once from the environment (for measurements; the
// defaults are the measured choices of choose()): JANG_CUDA_QMV_RT (weight
// tiles of 16 rows per warp, 1 or 2), JANG_CUDA_QMV_NWR (row groups of warps
// per block), JANG_CUDA_QMV_WARPS (warps in flight per multiprocessor the k
// split aims at), JANG_CUDA_TILED_M (smallest M for the tiled kernel),
// JANG_CUDA_XS (0: never stage the activations of M <= 2 in shared memory),
// JANG_CUDA_QMT_KS (warps per 16-row tile of the tiled kernel, 1 or 2).
int knob(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::atoi(v) : fallback;
}

struct Tuning {
  int rt = knob("JANG_CUDA_QMV_RT", 0);
  int nwr = knob("JANG_CUDA_QMV_NWR", 0);
  int warps = knob("JANG_CUDA_QMV_WARPS", 0);
  int tiled_m = knob("JANG_CUDA_TILED_M", 0);
  int xs = knob("JANG_CUDA_XS", 1);
  int qmt_ks = knob("JANG_CUDA_QMT_KS", 2);
};

const Tuning& tuning() {
  static const Tuning t;
  return t;
}

// JANG_CUDA_HOST_TIMING=1: host time spent in QMatmul::eval_gpu and in its
// output allocation, printed at exit (to compare with MLX's own per-op cost).
struct HostTiming {
  bool on = knob("JANG_CUDA_HOST_TIMING", 0) != 0;
  std::atomic<int64_t> calls{0}, total_ns{0}, alloc_ns{0}, launch_ns{0},
      setup_ns{0};
  ~HostTiming() {
    if (on && calls > 0) {
      std::fprintf(
          stderr,
          "[jang.cuda] QMatmul::eval_gpu: %lld calls, %.2f us/call on the host "
          "(%.2f us/call allocating the output, %.2f us/call choosing the "
          "kernel and its launch, %.2f us/call adding the kernel node)\n",
          static_cast<long long>(calls.load()),
          total_ns.load() / 1e3 / calls.load(),
          alloc_ns.load() / 1e3 / calls.load(),
          setup_ns.load() / 1e3 / calls.load(),
          launch_ns.load() / 1e3 / calls.load());
    }
  }
};

HostTiming& host_timing() {
  static HostTiming t;
  return t;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename P>
void launch(
    cu::CommandEncoder& enc,
    void* fn,
    dim3 grid,
    dim3 block,
    uint32_t smem,
    P params) {
  auto& ht = host_timing();
  const int64_t t0 = ht.on ? now_ns() : 0;
  void* args[] = {&params};
  enc.add_kernel_node_raw(
      static_cast<CUfunction>(fn), grid, block, dim3(1, 1, 1), smem, args);
  if (ht.on) {
    ht.launch_ns += now_ns() - t0;
  }
}

mx::array temporary(cu::CommandEncoder& enc, mx::Shape shape, mx::Dtype t) {
  mx::array a(std::move(shape), t, nullptr, {});
  a.set_data(device_data(enc, a.nbytes()));
  enc.add_temporary(a);
  return a;
}

dim3 grid_1d(int64_t total, int threads) {
  const int64_t blocks =
      std::min<int64_t>((total + threads - 1) / threads, 65535);
  return dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1)));
}

// A row-contiguous view of `a` (itself when it is one), 16-byte aligned when
// `aligned` is set.
mx::array
contiguous(cu::CommandEncoder& enc, const mx::array& a, bool aligned = false) {
  if (a.flags().row_contiguous &&
      (!aligned || reinterpret_cast<uintptr_t>(ptr(a)) % 16 == 0)) {
    return a;
  }
  auto out = temporary(enc, a.shape(), a.dtype());
  if (a.size() == 0) {
    return out;
  }
  cuda::CopyParams p{};
  p.src = ptr(a);
  p.s = strided_of(a);
  p.dst = ptr(out);
  p.total = static_cast<int64_t>(a.size());
  enc.set_input_array(a);
  enc.set_output_array(out);
  launch(
      enc,
      need(cuda::copy_function(static_cast<int>(a.itemsize())), "copy"),
      grid_1d(p.total, 256),
      dim3(256),
      0,
      p);
  return out;
}

mx::array as_u32(cu::CommandEncoder& enc, const mx::array& idx) {
  if (idx.dtype() != mx::uint32) {
    throw std::invalid_argument("[jang.cuda] indices must be uint32");
  }
  return contiguous(enc, idx);
}

struct Batch {
  int z = 1;                      // products
  const mx::array* lhs = nullptr; // z -> activation batch
  const mx::array* rhs = nullptr; // z -> expert
  int x_div = 1;                  // without lhs: batch = z / x_div
  int x_batches = 1;
  int experts = 1;
  int64_t w_batch = 0, s_batch = 0; // per expert
  int64_t out_batch = 0;            // per z
};

// The kernel for a product of m activation rows at `bits`, as measured with
// bench/cuda_kernels.cu on an H200 (K = N = 8192, bench/results/cuda_h200.md):
// qmt_kernel from 17 rows on, and from 9 rows for 2/3/5/6 bits (32-row blocks
// up to 64 rows at 2/4 bits, else 64-row blocks); qmv_kernel below, with two
// 16-row tiles per warp (the activation fragments reused) except at 8 bits and
// at M <= 2, where the activations are staged in shared memory (not at 5/8
// bits, whose M = 1..2 kernels were measured faster without).
struct Choice {
  bool tiled;
  int mt; // tiled: m tiles of 8 rows per block
  int rt, nwr, warps;
  bool xs;
};

Choice choose(int bits, int m) {
  const auto& tu = tuning();
  Choice c{};
  c.tiled = tu.tiled_m > 0 ? m >= tu.tiled_m
                           : (m > 16 || (m > 8 && bits != 4 && bits != 8));
  c.mt = m <= 16                                 ? 2
         : m <= 32                               ? 4
         : (m <= 64 && (bits == 2 || bits == 4)) ? 4
                                                 : 8;
  const bool small = m <= 2;
  c.xs = tu.xs != 0 && small && bits != 5 && bits != 8;
  c.rt = tu.rt > 0 ? tu.rt : ((bits == 8 || c.xs) ? 1 : 2);
  c.nwr = tu.nwr > 0 ? tu.nwr : 1;
  c.warps = tu.warps > 0 ? tu.warps : (c.rt == 1 ? 16 : 8);
  return c;
}

void set_arrays(
    cu::CommandEncoder& enc,
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    const Batch& b,
    const mx::array& out) {
  enc.set_input_array(x);
  enc.set_input_array(w);
  enc.set_input_array(scales);
  enc.set_input_array(biases);
  if (b.lhs) {
    enc.set_input_array(*b.lhs);
  }
  if (b.rhs) {
    enc.set_input_array(*b.rhs);
  }
  enc.set_output_array(out);
}

// out (z, m, n) = x @ dequantize(w).T on the tensor cores; x, scales and
// biases of the 16-bit type T (the output is T, or fp32 when out_f32).
// M <= 16 (and the fp32 output of moe_gate_up): qmv_kernel, weights streamed
// through registers, k split over the warps of a block; larger M: qmt_kernel,
// 64 weight rows x up to 64 activation rows per block through shared memory.
void qmm_fast(
    cu::CommandEncoder& enc,
    const mx::array& x, // (x_batches * m, k), any strides
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    mx::array& out,
    int m,
    int n,
    int k,
    int bits,
    int group_size,
    const Batch& b,
    bool out_f32) {
  auto xc = contiguous(enc, x, true);
  const auto& tu = tuning();
  cuda::QmmParams p{};
  p.x = ptr(xc);
  p.w = ptr<uint32_t>(w);
  p.scales = ptr(scales);
  p.biases = ptr(biases);
  p.out = ptr(out);
  p.lhs = b.lhs ? ptr<uint32_t>(*b.lhs) : nullptr;
  p.rhs = b.rhs ? ptr<uint32_t>(*b.rhs) : nullptr;
  p.x_batch = static_cast<int64_t>(m) * k;
  p.w_batch = b.w_batch;
  p.s_batch = b.s_batch;
  p.out_batch = b.out_batch;
  p.m = m;
  p.n = n;
  p.k = k;
  p.x_div = b.x_div;
  p.x_batches = b.x_batches;
  p.experts = b.experts;
  const int64_t kw = static_cast<int64_t>(k) * bits / 32;
  p.aligned = (kw % 4 == 0) && (b.w_batch % 4 == 0) &&
              (reinterpret_cast<uintptr_t>(p.w) % 16 == 0);
  const int kg = k / group_size;
  p.s_aligned = (kg % 2 == 0) && (b.s_batch % 2 == 0) &&
                (reinterpret_cast<uintptr_t>(p.scales) % 4 == 0) &&
                (reinterpret_cast<uintptr_t>(p.biases) % 4 == 0);
  const auto dt = dt_of(x.dtype());
  set_arrays(enc, xc, w, scales, biases, b, out);

  auto& ht = host_timing();
  const int64_t t_setup = ht.on ? now_ns() : 0;
  const Choice ch = choose(bits, m);
  if (!out_f32 && ch.tiled) {
    const int mt = ch.mt;
    const int ks = tu.qmt_ks == 1 ? 1 : 2;
    void* fn = need(cuda::qmt_function(dt, bits, group_size, mt, ks), "qmt");
    const cuda::QmtSmem sm{bits, group_size, mt};
    const dim3 grid(
        static_cast<unsigned>((n + sm.bn() - 1) / sm.bn()),
        static_cast<unsigned>((m + sm.bm() - 1) / sm.bm()),
        static_cast<unsigned>(b.z));
    launch(
        enc,
        fn,
        grid,
        dim3(32 * cuda::kTiledWarps * ks),
        static_cast<uint32_t>(sm.total()),
        p);
    return;
  }

  const int mt = (out_f32 || m <= 8) ? 1 : 2;
  const int rt = out_f32 ? 1 : ch.rt;
  const int nwr = out_f32 ? 1 : ch.nwr;
  const int sms = cuda::sm_count(enc.device().cuda_device());
  const auto l = cuda::qmv_launch(
      bits, m, n, k, p.aligned, mt, rt, nwr, b.z, int64_t(sms) * ch.warps);
  p.nwr = nwr;
  const int xs_bytes = cuda::qmv_xs_bytes(m, k);
  const bool xs = ch.xs && mt == 1 && m <= 2 &&
                  xs_bytes + static_cast<int>(l.reduce_bytes) <=
                      cuda::kQmvXsMaxBytes;
  void* fn = need(
      cuda::qmv_function(dt, bits, group_size, mt, rt, out_f32, xs), "qmv");
  if (ht.on) {
    ht.setup_ns += now_ns() - t_setup;
  }
  launch(
      enc,
      fn,
      dim3(l.grid_x, l.grid_y, static_cast<unsigned>(b.z)),
      dim3(32 * nwr * l.nwk),
      l.reduce_bytes + (xs ? static_cast<uint32_t>(xs_bytes) : 0u),
      p);
}

// The same on the CUDA cores for any dtypes (out may be any float type).
void qmm_generic(
    cu::CommandEncoder& enc,
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    mx::array& out,
    int m,
    int n,
    int k,
    int bits,
    int group_size,
    const Batch& b) {
  cuda::GenericParams p{};
  p.x = ptr(x);
  p.xs = strided_of(x);
  p.w = ptr<uint32_t>(w);
  p.scales = ptr(scales);
  p.biases = ptr(biases);
  p.out = ptr(out);
  p.lhs = b.lhs ? ptr<uint32_t>(*b.lhs) : nullptr;
  p.rhs = b.rhs ? ptr<uint32_t>(*b.rhs) : nullptr;
  p.w_batch = b.w_batch;
  p.s_batch = b.s_batch;
  p.out_batch = b.out_batch;
  p.m = m;
  p.n = n;
  p.k = k;
  p.group_size = group_size;
  p.x_div = b.x_div;
  p.x_batches = b.x_batches;
  p.experts = b.experts;
  p.xdt = static_cast<int>(dt_of(x.dtype()));
  p.sdt = static_cast<int>(dt_of(scales.dtype()));
  p.bdt = static_cast<int>(dt_of(biases.dtype()));
  p.odt = static_cast<int>(dt_of(out.dtype()));
  set_arrays(enc, x, w, scales, biases, b, out);
  const int warps = 8;
  launch(
      enc,
      need(cuda::generic_function(bits), "generic qmm"),
      dim3((n + warps - 1) / warps, m, b.z),
      dim3(32 * warps),
      0,
      p);
}

// The product for any dtypes: the tensor-core kernels when x, scales and
// biases share the 16-bit type `t` of the primitive's output (out itself is t,
// or fp32 with out_f32), else the CUDA-core fallback.
void qmm(
    cu::CommandEncoder& enc,
    mx::Dtype t,
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    mx::array& out,
    int m,
    int n,
    int k,
    int bits,
    int group_size,
    const Batch& b,
    bool out_f32 = false) {
  if (k > 0 && is_half(t) && x.dtype() == t && scales.dtype() == t &&
      biases.dtype() == t) {
    qmm_fast(
        enc, x, w, scales, biases, out, m, n, k, bits, group_size, b, out_f32);
  } else {
    // k == 0: an empty sum, zeros through the generic kernel's loop bounds.
    qmm_generic(enc, x, w, scales, biases, out, m, n, k, bits, group_size, b);
  }
}

} // namespace

void Dequantize::eval_gpu(
    const std::vector<mx::array>& inputs, mx::array& out) {
  auto& enc = cu::get_command_encoder(stream());
  out.set_data(device_data(enc, out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype();
  if (inputs[2].dtype() != t) {
    throw std::invalid_argument(
        "[jang.dequantize] on CUDA, scales and biases must share a dtype");
  }
  auto w = contiguous(enc, inputs[0]);
  auto scales = contiguous(enc, inputs[1]);
  auto biases = contiguous(enc, inputs[2]);
  cuda::DequantParams p{};
  p.w = ptr<uint32_t>(w);
  p.scales = ptr(scales);
  p.biases = ptr(biases);
  p.out = ptr(out);
  p.k = out.shape(-1);
  p.rows = static_cast<int64_t>(out.size() / p.k);
  p.group_size = group_size_;
  enc.set_input_array(w);
  enc.set_input_array(scales);
  enc.set_input_array(biases);
  enc.set_output_array(out);
  launch(
      enc,
      need(cuda::dequant_function(dt_of(t), bits_), "dequantize"),
      grid_1d(p.rows * (p.k / 32), 128),
      dim3(128),
      0,
      p);
}

void QMatmul::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& ht = host_timing();
  const int64_t t0 = ht.on ? now_ns() : 0;
  auto& enc = cu::get_command_encoder(stream());
  out.set_data(device_data(enc, out.nbytes()));
  if (ht.on) {
    ht.alloc_ns += now_ns() - t0;
  }
  struct Done {
    HostTiming& ht;
    int64_t t0;
    ~Done() {
      if (ht.on) {
        ht.calls += 1;
        ht.total_ns += now_ns() - t0;
      }
    }
  } done{ht, t0};
  if (out.size() == 0) {
    return;
  }
  const auto& x = inputs[0];
  auto w = contiguous(enc, inputs[1]);
  auto scales = contiguous(enc, inputs[2]);
  auto biases = contiguous(enc, inputs[3]);
  const int k = x.shape(-1);
  const int n = out.shape(-1);
  const int m = static_cast<int>(out.size() / n);
  qmm(enc,
      out.dtype(),
      x,
      w,
      scales,
      biases,
      out,
      m,
      n,
      k,
      bits_,
      group_size_,
      Batch{});
}

void GatherQMM::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& enc = cu::get_command_encoder(stream());
  out.set_data(device_data(enc, out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto& x = inputs[0];           // (bx, m, k)
  auto w = contiguous(enc, inputs[1]); // (e, n, kw)
  auto scales = contiguous(enc, inputs[2]);
  auto biases = contiguous(enc, inputs[3]);
  auto lhs = as_u32(enc, inputs[4]);
  auto rhs = as_u32(enc, inputs[5]);
  const int m = x.shape(1);
  const int k = x.shape(2);
  const int n = w.shape(1);
  Batch b;
  b.z = static_cast<int>(lhs.size());
  b.lhs = &lhs;
  b.rhs = &rhs;
  b.x_batches = x.shape(0);
  b.experts = w.shape(0);
  b.w_batch = static_cast<int64_t>(w.shape(1)) * w.shape(2);
  b.s_batch = static_cast<int64_t>(scales.shape(1)) * scales.shape(2);
  b.out_batch = static_cast<int64_t>(m) * n;
  qmm(enc,
      out.dtype(),
      x,
      w,
      scales,
      biases,
      out,
      m,
      n,
      k,
      bits_,
      group_size_,
      b);
}

void MoeGateUp::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& enc = cu::get_command_encoder(stream());
  out.set_data(device_data(enc, out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto& x = inputs[0];         // (t, k)
  auto ids = as_u32(enc, inputs[7]); // (t, top_k)
  const int tokens = x.shape(0);
  const int k = x.shape(1);
  const int top_k = ids.shape(1);
  const int hidden = out.shape(2);
  const int pairs = tokens * top_k;
  auto gate = temporary(enc, {pairs, hidden}, mx::float32);
  auto up = temporary(enc, {pairs, hidden}, mx::float32);
  const auto t = out.dtype();
  for (int which = 0; which < 2; ++which) {
    auto w = contiguous(enc, inputs[which ? 4 : 1]);
    auto scales = contiguous(enc, inputs[which ? 5 : 2]);
    auto biases = contiguous(enc, inputs[which ? 6 : 3]);
    const int bits = which ? up_bits_ : gate_bits_;
    const int gs = which ? up_group_size_ : gate_group_size_;
    auto& dst = which ? up : gate;
    Batch b;
    b.z = pairs;
    b.rhs = &ids;
    b.x_div = top_k;
    b.x_batches = tokens;
    b.experts = w.shape(0);
    b.w_batch = static_cast<int64_t>(w.shape(1)) * w.shape(2);
    b.s_batch = static_cast<int64_t>(scales.shape(1)) * scales.shape(2);
    b.out_batch = hidden;
    qmm(enc, t, x, w, scales, biases, dst, 1, hidden, k, bits, gs, b, true);
  }
  cuda::SwigluParams p{};
  p.gate = ptr<float>(gate);
  p.up = ptr<float>(up);
  p.out = ptr(out);
  p.total = static_cast<int64_t>(out.size());
  enc.set_input_array(gate);
  enc.set_input_array(up);
  enc.set_output_array(out);
  launch(
      enc,
      need(cuda::swiglu_function(dt_of(t)), "swiglu"),
      grid_1d(p.total, 256),
      dim3(256),
      0,
      p);
}

} // namespace jang

