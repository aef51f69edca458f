// Standalone timing of jang's CUDA matmul kernels, without MLX (kernel-level
// numbers; bench/cuda_bench.py gives the same products through MLX).
//
//   nvcc -O3 -std=c++20 --expt-relaxed-constexpr -arch=sm_90 -I csrc \
//        bench/cuda_kernels.cu -o /tmp/cuda_kernels
//   /tmp/cuda_kernels [--k 8192] [--n 8192] [--reps 200] [--bits 2 4 ...]
//                     [--ms 1 2 4 8 16 64] [--variants] [--only NAME]
//                     [--profile]
//
// Per width and M: every launch configuration ("variant") of the product
// x (M, K) @ dequantize(w).T (fp16, group size 64), checked against the fp32
// CUDA-core kernel, timed as the mean of `reps` launches captured in one CUDA
// graph (back to back, as consecutive layers run), weight sets rotating over
// more than 4x the L2 cache so that none is cached. GB/s counts the bytes a
// product must move (codes, scales, biases, x, out); "% copy" divides by the
// device-to-device copy bandwidth measured first (bytes read + written).
// With --variants every configuration is timed, else only the default one
// (the configuration eval_gpu.cpp picks). --profile (for Nsight Compute, e.g.
// ncu -k regex:"qmv|qmt" --section WarpStateStats ...): no bandwidth
// measurement, no check, no graph: each variant launched twice, on two weight
// sets (use the second). Build with -DJANG_OLD_QMM and
// -I<dir of qmm_old.cuh> to time the previous kernel ("old") alongside.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "cuda/qmm.cuh"

#ifdef JANG_OLD_QMM
#include "qmm_old.cuh"
#endif

namespace jang::cuda {
void* function_of(const void* symbol) {
  return const_cast<void*>(symbol);
}
} // namespace jang::cuda

using namespace jang::cuda;

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      std::fprintf(                                                            \
          stderr,                                                              \
          "%s:%d %s: %s\n",                                                    \
          __FILE__,                                                            \
          __LINE__,                                                            \
          #x,                                                                  \
          cudaGetErrorString(e_));                                             \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace {

__device__ uint32_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return uint32_t(x ^ (x >> 31));
}

__global__ void fill_u32(uint32_t* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = mix(seed * 0x100000001B3ull + i);
  }
}

// Uniform in [lo, hi).
__global__ void
fill_half(__half* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float u = (mix(seed * 0x100000001B3ull + i) >> 8) * (1.0f / 16777216);
    p[i] = __float2half_rn(lo + (hi - lo) * u);
  }
}

__global__ void read_kernel(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) {
    *sink = acc;
  }
}

struct Set {
  uint32_t* w;
  __half* s;
  __half* b;
};

struct Variant {
  std::string name;
  std::function<void(const Set&, cudaStream_t)> launch;
};

template <typename K, typename P>
void launch_raw(K kernel, dim3 g, dim3 b, size_t smem, cudaStream_t st, P p) {
  void* args[] = {&p};
  CK(cudaLaunchKernel(
      reinterpret_cast<const void*>(kernel), g, b, args, smem, st));
}

int g_sms = 132;

QmmParams base_params(
    const __half* x, __half* out, const Set& s, int m, int n, int k, int bits) {
  QmmParams p{};
  p.x = x;
  p.w = s.w;
  p.scales = s.s;
  p.biases = s.b;
  p.out = out;
  p.m = m;
  p.n = n;
  p.k = k;
  p.x_div = 1;
  p.x_batches = 1;
  p.experts = 1;
  p.aligned = (int64_t(k) * bits / 32) % 4 == 0;
  p.s_aligned = (k / 64) % 2 == 0;
  p.nwr = 1;
  return p;
}

template <int BITS, int MT, int RT, bool XS = false>
void add_qmv(
    std::vector<Variant>& v,
    const __half* x,
    __half* out,
    int m,
    int n,
    int k,
    int nwr,
    int per_sm,
    bool dflt) {
  // the launch eval_gpu.cpp makes (cuda/params.h), for one weight matrix
  const bool aligned = (int64_t(k) * BITS / 32) % 4 == 0;
  const QmvLaunch c =
      qmv_launch(BITS, m, n, k, aligned, MT, RT, nwr, 1, int64_t(g_sms) * per_sm);
  const dim3 grid(c.grid_x, c.grid_y, 1), block(32 * nwr * c.nwk);
  const size_t smem = c.reduce_bytes + (XS ? qmv_xs_bytes(m, k) : 0);
  const void* fn = reinterpret_cast<const void*>(
      qmv_kernel<__half, BITS, 64, MT, RT, false, XS>);
  if (XS) {
    CK(cudaFuncSetAttribute(
        fn, cudaFuncAttributeMaxDynamicSharedMemorySize, kQmvXsMaxBytes));
  }
  char name[96];
  std::snprintf(
      name,
      sizeof(name),
      "%sqmv mt%d rt%d nwr%d nwk%d w%d%s",
      dflt ? "*" : "",
      MT,
      RT,
      nwr,
      c.nwk,
      per_sm,
      XS ? " xs" : "");
  v.push_back({name, [=](const Set& s, cudaStream_t st) {
                 QmmParams p = base_params(x, out, s, m, n, k, BITS);
                 p.nwr = nwr;
                 void* args[] = {&p};
                 CK(cudaLaunchKernel(fn, grid, block, args, smem, st));
               }});
}

template <int BITS, int MT, int KS = 2>
void add_qmt(
    std::vector<Variant>& v,
    const __half* x,
    __half* out,
    int m,
    int n,
    int k,
    bool dflt) {
  const QmtSmem sm{BITS, 64, MT};
  const void* fn =
      reinterpret_cast<const void*>(qmt_kernel<__half, BITS, 64, MT, KS>);
  CK(cudaFuncSetAttribute(
      fn, cudaFuncAttributeMaxDynamicSharedMemorySize, sm.total()));
  const dim3 grid((n + sm.bn() - 1) / sm.bn(), (m + sm.bm() - 1) / sm.bm(), 1);
  char name[64];
  std::snprintf(
      name,
      sizeof(name),
      "%sqmt mt%d ks%d smem%dK",
      dflt ? "*" : "",
      MT,
      KS,
      sm.total() / 1024);
  v.push_back(
      {name, [=](const Set& s, cudaStream_t st) {
         QmmParams p = base_params(x, out, s, m, n, k, BITS);
         void* args[] = {&p};
         CK(cudaLaunchKernel(
             fn, grid, dim3(32 * kTiledWarps * KS), args, sm.total(), st));
       }});
}

#ifdef JANG_OLD_QMM
// The previous kernel with its own launch heuristic (eval_gpu.cpp of the
// first pass).
template <int BITS>
void add_old(
    std::vector<Variant>& v,
    const __half* x,
    __half* out,
    int m,
    int n,
    int k) {
  namespace o = jang::cuda_old;
  const int mt = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
  const int rt = o::qmm_rt(mt, m);
  const int lane_codes = 4 * 32 * o::lane_units(BITS);
  const int chunks = std::max(1, (k + lane_codes - 1) / lane_codes);
  const int rpb = o::kRowsPerWarp * rt;
  const int64_t blocks =
      int64_t((n + rpb - 1) / rpb) * ((m + 8 * mt - 1) / (8 * mt));
  const int64_t target = int64_t(g_sms) * 16;
  const int64_t want =
      std::clamp<int64_t>((target + blocks - 1) / blocks, 1, 16);
  int nw = 1;
  while (nw * 2 <= want) {
    nw *= 2;
  }
  nw = std::min({nw, chunks, o::qmm_max_threads(mt, rt) / 32});
  const size_t smem = size_t(nw - 1) * rt * mt * 4 * 32 * sizeof(float);
  const dim3 grid((n + rpb - 1) / rpb, (m + 8 * mt - 1) / (8 * mt), 1);
  auto pick = [&]() -> const void* {
    switch (mt * 10 + rt) {
    case 11:
      return reinterpret_cast<const void*>(
          o::qmm_kernel<__half, BITS, 64, 1, 1, false>);
    case 12:
      return reinterpret_cast<const void*>(
          o::qmm_kernel<__half, BITS, 64, 1, 2, false>);
    case 22:
      return reinterpret_cast<const void*>(
          o::qmm_kernel<__half, BITS, 64, 2, 2, false>);
    case 42:
      return reinterpret_cast<const void*>(
          o::qmm_kernel<__half, BITS, 64, 4, 2, false>);
    default:
      return reinterpret_cast<const void*>(
          o::qmm_kernel<__half, BITS, 64, 8, 1, false>);
    }
  };
  const void* fn = pick();
  char name[64];
  std::snprintf(name, sizeof(name), "old mt%d rt%d nw%d", mt, rt, nw);
  v.push_back({name, [=](const Set& s, cudaStream_t st) {
                 o::QmmParams p{};
                 p.x = x;
                 p.w = s.w;
                 p.scales = s.s;
                 p.biases = s.b;
                 p.out = out;
                 p.m = m;
                 p.n = n;
                 p.k = k;
                 p.x_div = 1;
                 p.x_batches = 1;
                 p.experts = 1;
                 p.aligned = 1;
                 void* args[] = {&p};
                 CK(cudaLaunchKernel(fn, grid, dim3(32 * nw), args, smem, st));
               }});
}
#endif

// eval_gpu.cpp's choose(): qmt from 17 rows on and from 9 rows for 2/3/5/6
// bits (32-row blocks up to 64 rows at 2/4 bits); qmv with two 16-row tiles
// per warp except at 8 bits and at M <= 2 (activations staged in shared
// memory there, except at 5/8 bits).
template <int BITS>
void variants(
    std::vector<Variant>& v,
    const __half* x,
    __half* out,
    int m,
    int n,
    int k,
    bool all,
    bool old) {
#ifdef JANG_OLD_QMM
  if (old) {
    add_old<BITS>(v, x, out, m, n, k);
  }
#else
  (void)old;
#endif
  constexpr int RT = BITS == 8 ? 1 : 2;
  constexpr int W = RT == 1 ? 16 : 8;
  constexpr bool XS = BITS != 5 && BITS != 8;
  const bool tiled = m > 16 || (m > 8 && BITS != 4 && BITS != 8);
  if (m <= 2) {
    if constexpr (XS) {
      add_qmv<BITS, 1, 1, true>(v, x, out, m, n, k, 1, 16, true);
      if (all) {
        add_qmv<BITS, 1, 2>(v, x, out, m, n, k, 1, 8, false);
      }
    } else {
      add_qmv<BITS, 1, RT>(v, x, out, m, n, k, 1, W, true);
      if (all) {
        add_qmv<BITS, 1, 1, true>(v, x, out, m, n, k, 1, 16, false);
      }
    }
  } else if (m <= 8) {
    add_qmv<BITS, 1, RT>(v, x, out, m, n, k, 1, W, true);
    if (all) {
      add_qmv<BITS, 1, 3 - RT>(v, x, out, m, n, k, 1, RT == 1 ? 8 : 16, false);
    }
  } else if (m <= 16) {
    if (tiled) {
      add_qmt<BITS, 2>(v, x, out, m, n, k, true);
    } else {
      add_qmv<BITS, 2, RT>(v, x, out, m, n, k, 1, W, true);
    }
    if (all) {
      if (tiled) {
        add_qmt<BITS, 2, 1>(v, x, out, m, n, k, false);
        add_qmv<BITS, 2, RT>(v, x, out, m, n, k, 1, W, false);
      } else {
        add_qmt<BITS, 2>(v, x, out, m, n, k, false);
      }
    }
  } else if (m <= 32 || (m <= 64 && (BITS == 2 || BITS == 4))) {
    add_qmt<BITS, 4>(v, x, out, m, n, k, true);
    if (all) {
      add_qmt<BITS, 4, 1>(v, x, out, m, n, k, false);
      if (m > 32) {
        add_qmt<BITS, 8>(v, x, out, m, n, k, false);
      }
    }
  } else {
    add_qmt<BITS, 8>(v, x, out, m, n, k, true);
    if (all) {
      add_qmt<BITS, 8, 1>(v, x, out, m, n, k, false);
      if (m <= 64) {
        add_qmt<BITS, 4>(v, x, out, m, n, k, false);
      }
    }
  }
}

void variants_of(
    int bits,
    std::vector<Variant>& v,
    const __half* x,
    __half* out,
    int m,
    int n,
    int k,
    bool all,
    bool old) {
  switch (bits) {
  case 2:
    return variants<2>(v, x, out, m, n, k, all, old);
  case 3:
    return variants<3>(v, x, out, m, n, k, all, old);
  case 4:
    return variants<4>(v, x, out, m, n, k, all, old);
  case 5:
    return variants<5>(v, x, out, m, n, k, all, old);
  case 6:
    return variants<6>(v, x, out, m, n, k, all, old);
  case 8:
    return variants<8>(v, x, out, m, n, k, all, old);
  }
}

const void* generic_of(int bits) {
  switch (bits) {
  case 2:
    return reinterpret_cast<const void*>(generic_kernel<2>);
  case 3:
    return reinterpret_cast<const void*>(generic_kernel<3>);
  case 4:
    return reinterpret_cast<const void*>(generic_kernel<4>);
  case 5:
    return reinterpret_cast<const void*>(generic_kernel<5>);
  case 6:
    return reinterpret_cast<const void*>(generic_kernel<6>);
  default:
    return reinterpret_cast<const void*>(generic_kernel<8>);
  }
}

float elapsed(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

} // namespace

int main(int argc, char** argv) {
  int k = 8192, n = 8192, reps = 200;
  std::vector<int> bits = {2, 3, 4, 5, 6, 8};
  std::vector<int> ms = {1, 2, 4, 8, 16, 64};
  bool all = false, old = false, profile = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto list = [&](std::vector<int>& out) {
      out.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') {
        out.push_back(std::atoi(argv[++i]));
      }
    };
    if (a == "--k") {
      k = std::atoi(argv[++i]);
    } else if (a == "--n") {
      n = std::atoi(argv[++i]);
    } else if (a == "--reps") {
      reps = std::atoi(argv[++i]);
    } else if (a == "--bits") {
      list(bits);
    } else if (a == "--ms") {
      list(ms);
    } else if (a == "--variants") {
      all = true;
    } else if (a == "--old") {
      old = true;
    } else if (a == "--profile") {
      profile = true;
    } else if (a == "--only") {
      only = argv[++i];
    }
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  int driver = 0, runtime = 0;
  CK(cudaDriverGetVersion(&driver));
  CK(cudaRuntimeGetVersion(&runtime));
  std::printf(
      "device: %s, %d SMs, L2 %d MB, %.0f GB memory; driver API %d, runtime "
      "%d\n",
      prop.name,
      prop.multiProcessorCount,
      prop.l2CacheSize >> 20,
      prop.totalGlobalMem / 1e9,
      driver,
      runtime);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));

  // Copy bandwidth (bytes read + written) and read-only bandwidth.
  const size_t big = size_t(1) << (profile ? 20 : 30);
  void *a, *b;
  uint32_t* sink;
  CK(cudaMalloc(&a, big));
  CK(cudaMalloc(&b, big));
  CK(cudaMalloc(&sink, 4));
  fill_u32<<<1024, 256, 0, st>>>(static_cast<uint32_t*>(a), big / 4, 1);
  for (int i = 0; i < 3; ++i) {
    CK(cudaMemcpyAsync(b, a, big, cudaMemcpyDeviceToDevice, st));
  }
  CK(cudaEventRecord(e0, st));
  for (int i = 0; i < 20; ++i) {
    CK(cudaMemcpyAsync(b, a, big, cudaMemcpyDeviceToDevice, st));
  }
  CK(cudaEventRecord(e1, st));
  CK(cudaEventSynchronize(e1));
  const double copy_bw = 2.0 * big * 20 / (elapsed(e0, e1) / 1e3);
  read_kernel<<<prop.multiProcessorCount * 8, 512, 0, st>>>(
      static_cast<const uint4*>(a), big / 16, sink);
  CK(cudaEventRecord(e0, st));
  for (int i = 0; i < 20; ++i) {
    read_kernel<<<prop.multiProcessorCount * 8, 512, 0, st>>>(
        static_cast<const uint4*>(a), big / 16, sink);
  }
  CK(cudaEventRecord(e1, st));
  CK(cudaEventSynchronize(e1));
  const double read_bw = double(big) * 20 / (elapsed(e0, e1) / 1e3);
  std::printf(
      "copy bandwidth (D2D cudaMemcpy 1 GiB, read + write): %.0f GB/s; "
      "read-only kernel 1 GiB: %.0f GB/s\n",
      copy_bw / 1e9,
      read_bw / 1e9);
  CK(cudaFree(a));
  CK(cudaFree(b));

  const int mmax = *std::max_element(ms.begin(), ms.end());
  __half *x, *out;
  float* ref;
  CK(cudaMalloc(&x, size_t(mmax) * k * 2));
  CK(cudaMalloc(&out, size_t(mmax) * n * 2));
  CK(cudaMalloc(&ref, size_t(mmax) * n * 4));
  fill_half<<<256, 256, 0, st>>>(x, int64_t(mmax) * k, 7, -1.0f, 1.0f);
  std::vector<float> h_out(size_t(mmax) * n), h_ref(size_t(mmax) * n);
  std::vector<__half> h_outh(size_t(mmax) * n);

  std::printf(
      "\nK = %d, N = %d, group 64, fp16; mean of %d launches in one CUDA "
      "graph, "
      "weights rotating over >= 256 MB\n\n",
      k,
      n,
      reps);
  std::printf("| bits | M | variant | us | GB/s | %% copy BW | max err / max "
              "|ref| |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int bt : bits) {
    const int64_t wwords = int64_t(n) * k * bt / 32;
    const int64_t sn = int64_t(n) * (k / 64);
    const size_t one = wwords * 4 + sn * 4;
    const int nsets =
        profile ? 2 : std::max<int>(2, int((size_t(256) << 20) / one + 1));
    std::vector<Set> sets(nsets);
    for (int i = 0; i < nsets; ++i) {
      CK(cudaMalloc(&sets[i].w, wwords * 4));
      CK(cudaMalloc(&sets[i].s, sn * 2));
      CK(cudaMalloc(&sets[i].b, sn * 2));
      fill_u32<<<1024, 256, 0, st>>>(sets[i].w, wwords, 100 + i);
      fill_half<<<256, 256, 0, st>>>(sets[i].s, sn, 200 + i, 0.001f, 0.021f);
      fill_half<<<256, 256, 0, st>>>(sets[i].b, sn, 300 + i, -0.02f, 0.02f);
    }
    for (int m : ms) {
      if (profile) {
        std::vector<Variant> vs;
        variants_of(bt, vs, x, out, m, n, k, all, old);
        for (auto& v : vs) {
          if (!only.empty() && v.name.find(only) == std::string::npos) {
            continue;
          }
          std::fprintf(stderr, "bits=%d m=%d %s\n", bt, m, v.name.c_str());
          v.launch(sets[0], st);
          v.launch(sets[1], st);
          CK(cudaStreamSynchronize(st));
        }
        continue;
      }
      // fp32 reference of set 0.
      GenericParams gp{};
      gp.x = x;
      gp.xs.ndim = 2;
      gp.xs.shape[0] = m;
      gp.xs.shape[1] = k;
      gp.xs.strides[0] = k;
      gp.xs.strides[1] = 1;
      gp.w = sets[0].w;
      gp.scales = sets[0].s;
      gp.biases = sets[0].b;
      gp.out = ref;
      gp.m = m;
      gp.n = n;
      gp.k = k;
      gp.group_size = 64;
      gp.x_div = 1;
      gp.x_batches = 1;
      gp.experts = 1;
      gp.xdt = int(DT::f16);
      gp.sdt = int(DT::f16);
      gp.bdt = int(DT::f16);
      gp.odt = int(DT::f32);
      {
        void* args[] = {&gp};
        CK(cudaLaunchKernel(
            generic_of(bt), dim3((n + 7) / 8, m, 1), dim3(256), args, 0, st));
      }
      CK(cudaMemcpyAsync(
          h_ref.data(), ref, size_t(m) * n * 4, cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      double refmax = 0;
      for (size_t i = 0; i < size_t(m) * n; ++i) {
        refmax = std::max(refmax, double(std::fabs(h_ref[i])));
      }
      std::vector<Variant> vs;
      variants_of(bt, vs, x, out, m, n, k, all, old);
      for (auto& v : vs) {
        if (!only.empty() && v.name.find(only) == std::string::npos) {
          continue;
        }
        // Check: poison, run on set 0, compare.
        CK(cudaMemsetAsync(out, 0xFF, size_t(m) * n * 2, st));
        v.launch(sets[0], st);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(
            h_outh.data(), out, size_t(m) * n * 2, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        double err = 0;
        for (size_t i = 0; i < size_t(m) * n; ++i) {
          const double o = __half2float(h_outh[i]);
          const double e = std::isfinite(o) ? std::fabs(o - h_ref[i]) : 1e30;
          err = std::max(err, e);
        }
        // Time: reps launches in one graph, rotating sets.
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int r = 0; r < reps; ++r) {
          v.launch(sets[r % nsets], st);
        }
        CK(cudaStreamEndCapture(st, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        CK(cudaGraphLaunch(exec, st));
        float best = 1e30f;
        for (int t = 0; t < 3; ++t) {
          CK(cudaEventRecord(e0, st));
          CK(cudaGraphLaunch(exec, st));
          CK(cudaEventRecord(e1, st));
          CK(cudaEventSynchronize(e1));
          best = std::min(best, elapsed(e0, e1));
        }
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
        const double us = best * 1e3 / reps;
        const double bytes = double(one) + 2.0 * m * k + 2.0 * m * n;
        const double gbs = bytes / (us * 1e-6) / 1e9;
        std::printf(
            "| %d | %d | %s | %.2f | %.0f | %.0f%% | %.2g |\n",
            bt,
            m,
            v.name.c_str(),
            us,
            gbs,
            100.0 * gbs * 1e9 / copy_bw,
            err / refmax);
        std::fflush(stdout);
      }
    }
    for (auto& s : sets) {
      CK(cudaFree(s.w));
      CK(cudaFree(s.s));
      CK(cudaFree(s.b));
    }
  }
  return 0;
}
