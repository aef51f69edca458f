// eval_gpu of jang's primitives on MLX's CUDA backend (compiled when the
// installed MLX is the CUDA build: JANG_CUDA, which also removes the throwing
// stubs in csrc/primitives.cpp and csrc/qmatmul.cpp).
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
#ifdef JANG_CUDA

#include <algorithm>
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

template <typename P>
void launch(
    cu::CommandEncoder& enc,
    void* fn,
    dim3 grid,
    dim3 block,
    uint32_t smem,
    P params) {
  void* args[] = {&params};
  enc.add_kernel_node_raw(
      static_cast<CUfunction>(fn), grid, block, dim3(1, 1, 1), smem, args);
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

int tile_mt(int m) {
  return m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
}

// out (z, m, n) = x @ dequantize(w).T on the tensor cores; x, scales and
// biases of the 16-bit type T (the output is T, or fp32 when out_f32).
void qmm_fast(
    cu::CommandEncoder& enc,
    const mx::Stream& s,
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
  const int mt = out_f32 ? 1 : tile_mt(m);
  const int rt = out_f32 ? 1 : cuda::qmm_rt(mt, m);
  void* fn = need(
      cuda::qmm_function(dt_of(x.dtype()), bits, group_size, mt, rt, out_f32),
      "qmm");
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

  const int lane_codes = 4 * 32 * cuda::lane_units(bits);
  const int chunks = std::max(1, (k + lane_codes - 1) / lane_codes);
  const int rows_per_block = cuda::kRowsPerWarp * rt;
  const int64_t blocks =
      static_cast<int64_t>((n + rows_per_block - 1) / rows_per_block) *
      ((m + 8 * mt - 1) / (8 * mt)) * b.z;
  const int sms = cuda::sm_count(enc.device().cuda_device());
  const int64_t target = static_cast<int64_t>(sms) * 16; // warps in flight
  // Warps per block (splitting k): a power of two, so that a row's chunks,
  // usually a power of two, divide evenly among them.
  const int64_t want =
      std::clamp<int64_t>((target + blocks - 1) / blocks, 1, 16);
  int nw = 1;
  while (nw * 2 <= want) {
    nw *= 2;
  }
  nw = std::min({nw, chunks, cuda::qmm_max_threads(mt, rt) / 32});
  const uint32_t smem =
      static_cast<uint32_t>((nw - 1) * rt * mt * 4 * 32 * sizeof(float));
  const dim3 grid(
      static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block),
      static_cast<unsigned>((m + 8 * mt - 1) / (8 * mt)),
      static_cast<unsigned>(b.z));
  enc.set_input_array(xc);
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
  launch(enc, fn, grid, dim3(32 * nw), smem, p);
  (void)s;
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
  const int warps = 8;
  launch(
      enc,
      need(cuda::generic_function(bits), "generic qmm"),
      dim3((n + warps - 1) / warps, m, b.z),
      dim3(32 * warps),
      0,
      p);
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
  auto& enc = cu::get_command_encoder(stream());
  out.set_data(device_data(enc, out.nbytes()));
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
  Batch b;
  const auto t = out.dtype();
  if (k == 0) {
    // An empty sum: zeros through the generic kernel's loop bounds.
    qmm_generic(enc, x, w, scales, biases, out, m, n, k, bits_, group_size_, b);
    return;
  }
  if (is_half(t) && x.dtype() == t && scales.dtype() == t &&
      biases.dtype() == t) {
    qmm_fast(
        enc,
        stream(),
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
        b,
        false);
  } else {
    qmm_generic(enc, x, w, scales, biases, out, m, n, k, bits_, group_size_, b);
  }
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
  const auto t = out.dtype();
  if (k > 0 && is_half(t) && x.dtype() == t && scales.dtype() == t &&
      biases.dtype() == t) {
    qmm_fast(
        enc,
        stream(),
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
        b,
        false);
  } else {
    qmm_generic(enc, x, w, scales, biases, out, m, n, k, bits_, group_size_, b);
  }
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
    if (k > 0 && is_half(t) && x.dtype() == t && scales.dtype() == t &&
        biases.dtype() == t) {
      qmm_fast(
          enc,
          stream(),
          x,
          w,
          scales,
          biases,
          dst,
          1,
          hidden,
          k,
          bits,
          gs,
          b,
          true);
    } else {
      qmm_generic(enc, x, w, scales, biases, dst, 1, hidden, k, bits, gs, b);
    }
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

#endif // JANG_CUDA
