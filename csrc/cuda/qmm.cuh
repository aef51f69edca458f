// CUDA kernels of jang's primitives in MLX's affine layout (see
// jang/affine.h): quantized matmul on the tensor cores, its CUDA-core
// fallback, dequantize, and the small helpers they need.
//
// The matmul (qmm_kernel) computes out = x @ dequantize(w).T with mma.sync
// m16n8k16 and fp32 accumulators, weights as the A operand ("swap AB"): a warp
// owns RT tiles of 16 output columns (rows of w) and up to 8*MT activation
// rows, so M = 1 wastes 7/8 of a small mma instead of 15/16 and all M up to 64
// read the weights once (larger M: one grid row per 64 activation rows).
//
// A lane (group g = lane/4, thread t = lane%4) reads rows g and g+8 of each of
// its 16-row tiles. Within a chunk of 4 lanes * U units (a unit is 32 codes =
// BITS words, always whole words), lane t reads its own U contiguous units of
// both rows with 16-byte loads. The mma's k slots 2t, 2t+1, 2t+8, 2t+9 of a
// k16 step then hold codes of lane t's units; since a dot product does not
// care about the order of k, each lane reads the activations in the same
// permuted order (load_x8: one or two loads and byte permutes).
// Within a unit the codes are taken in pairs that one AND extracts into the
// two 16-bit halves of a register (pair_lo / pair_hi), turned into fp16/bf16
// with the exponent trick (0x6400 | q is 1024 + q), then scaled: w = s*q + b.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>

#include "cuda/params.h"
#include "jang/affine.h"

namespace jang::cuda {

// ------------------------------------------------------------- types -----

template <typename T> struct Half2;
template <> struct Half2<__half> {
  using type = __half2;
  static constexpr uint32_t magic = 0x64006400u; // 1024.0 in each half
};
template <> struct Half2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static constexpr uint32_t magic = 0x43004300u; // 128.0 (codes < 128)
};

template <typename To, typename From>
__device__ __forceinline__ To bit_cast(const From& v) {
  static_assert(sizeof(To) == sizeof(From));
  To r;
  memcpy(&r, &v, sizeof(To));
  return r;
}

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float load_float(const void* p, int dt, int64_t i) {
  switch (dt) {
  case int(DT::f16):
    return __half2float(static_cast<const __half*>(p)[i]);
  case int(DT::bf16):
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  default:
    return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void
store_float(void* p, int dt, int64_t i, float v) {
  switch (dt) {
  case int(DT::f16):
    static_cast<__half*>(p)[i] = __float2half_rn(v);
    break;
  case int(DT::bf16):
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
    break;
  default:
    static_cast<float*>(p)[i] = v;
  }
}

// ------------------------------------------------------ code extraction -----

// Code c (0..31) of a unit whose BITS words are w[0..BITS): the bitstream of
// jang/affine.h (code_at), with a funnel shift for codes crossing words.
template <int BITS>
__device__ __forceinline__ uint32_t unit_code(const uint32_t* w, int c) {
  constexpr uint32_t mask = affine::Pack<BITS>::mask;
  const int bit = c * BITS;
  const int wi = bit >> 5;
  const int sh = bit & 31;
  uint32_t v;
  if (sh + BITS > 32) {
    v = __funnelshift_r(w[wi], w[wi + 1], sh);
  } else {
    v = w[wi] >> sh;
  }
  return v & mask;
}

// The two codes of pair p (0..15) of a unit. For 2/4/8 bits a code in the low
// half of a word pairs with the code 16 bits above it, so one shift and one
// AND give both; 3/5/6-bit codes pair as (p, p + 16).
template <int BITS> JANG_HD constexpr int pair_lo(int p) {
  if (BITS == 2 || BITS == 4 || BITS == 8) {
    return (p / (16 / BITS)) * (32 / BITS) + p % (16 / BITS);
  }
  return p;
}
template <int BITS> JANG_HD constexpr int pair_hi(int p) {
  return pair_lo<BITS>(p) +
         ((BITS == 2 || BITS == 4 || BITS == 8) ? 16 / BITS : 16);
}
// Which code of a unit sits in permuted slot r (slot 2p = pair_lo(p), slot
// 2p + 1 = pair_hi(p)): load_x8 puts activation sigma(r) in slot r.
template <int BITS> JANG_HD constexpr int sigma(int r) {
  return (r & 1) ? pair_hi<BITS>(r >> 1) : pair_lo<BITS>(r >> 1);
}

template <int BITS>
__device__ __forceinline__ uint32_t pair_bits(const uint32_t* w, int p) {
  constexpr uint32_t mask = affine::Pack<BITS>::mask;
  if constexpr (BITS == 2 || BITS == 4 || BITS == 8) {
    constexpr int per_half = 16 / BITS;
    return (w[p / per_half] >> ((p % per_half) * BITS)) & (mask | (mask << 16));
  } else {
    return unit_code<BITS>(w, pair_lo<BITS>(p)) |
           (unit_code<BITS>(w, pair_hi<BITS>(p)) << 16);
  }
}

// A group's scale and bias as the dequantization needs them.
template <typename T> struct ScaleBias {
  typename Half2<T>::type s, b;
  float sf, bf;
};

template <typename T>
__device__ __forceinline__ ScaleBias<T> scale_bias(T s, T b) {
  ScaleBias<T> r;
  if constexpr (std::is_same_v<T, __half>) {
    r.s = __half2half2(s);
    r.b = __half2half2(b);
  } else {
    r.s = __bfloat162bfloat162(s);
    r.b = __bfloat162bfloat162(b);
  }
  r.sf = to_float(s);
  r.bf = to_float(b);
  return r;
}

// Two codes (low / high 16 bits of `pr`) -> two weights s*q + b packed as the
// 16-bit pair the mma reads.
template <typename T, int BITS>
__device__ __forceinline__ uint32_t
dequant_pair(uint32_t pr, const ScaleBias<T>& sb) {
  using T2 = typename Half2<T>::type;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && BITS == 8) {
    // bf16 holds 128 + q exactly only for q < 128: go through fp32.
    const float lo = __uint_as_float(0x4B000000u | (pr & 0xFFFFu)) - 8388608.0f;
    const float hi = __uint_as_float(0x4B000000u | (pr >> 16)) - 8388608.0f;
    return bit_cast<uint32_t>(
        __floats2bfloat162_rn(fmaf(lo, sb.sf, sb.bf), fmaf(hi, sb.sf, sb.bf)));
  } else {
    constexpr uint32_t magic = Half2<T>::magic;
    const T2 q = __hsub2(bit_cast<T2>(pr | magic), bit_cast<T2>(magic));
    return bit_cast<uint32_t>(__hfma2(q, sb.s, sb.b));
  }
}

// ---------------------------------------------------------------- mma -----

template <typename T>
__device__ __forceinline__ void
mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint4 load_stream(const uint32_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The activations of permuted slots 8*jp .. 8*jp+7 of a unit (slot 2p holds
// code pair_lo(p)'s activation, slot 2p+1 pair_hi(p)'s), read from the
// unpermuted row `xu` (16-byte aligned, the unit's first element) with one or
// two loads and byte permutes.
template <int BITS, typename T>
__device__ __forceinline__ uint4 load_x8(const T* xu, int jp) {
  static_assert(sizeof(T) == 2);
  if constexpr (BITS == 4 || BITS == 8) {
    // 4-bit pairs (c, c+4), 8-bit pairs (c, c+2) within these 8 codes.
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(xu + 8 * jp));
    const uint32_t p0 = BITS == 4 ? v.x : v.x, q0 = BITS == 4 ? v.z : v.y;
    const uint32_t p1 = BITS == 4 ? v.y : v.z, q1 = BITS == 4 ? v.w : v.w;
    return make_uint4(
        __byte_perm(p0, q0, 0x5410),
        __byte_perm(p0, q0, 0x7632),
        __byte_perm(p1, q1, 0x5410),
        __byte_perm(p1, q1, 0x7632));
  } else {
    // 2-bit pairs (c, c+8) within 16 codes, 3/5/6-bit pairs (c, c+16).
    const int oa = BITS == 2 ? 16 * (jp >> 1) + 4 * (jp & 1) : 4 * jp;
    const int ob = oa + (BITS == 2 ? 8 : 16);
    const uint2 a = __ldg(reinterpret_cast<const uint2*>(xu + oa));
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(xu + ob));
    return make_uint4(
        __byte_perm(a.x, b.x, 0x5410),
        __byte_perm(a.x, b.x, 0x7632),
        __byte_perm(a.y, b.y, 0x5410),
        __byte_perm(a.y, b.y, 0x7632));
  }
}

// One unit (32 codes) of the lane's 2*RT weight rows (rows g and g+8 of each
// 16-row tile; words w[r] + u_off) against the activations of every m tile:
// 8 k16 steps, 2 per 16-byte activation fragment, each fragment used by the
// RT tiles.
template <typename T, int BITS, int MT, int RT, int WL>
__device__ __forceinline__ void unit_mma(
    float (&acc)[RT][MT][4],
    const uint32_t (&w)[2 * RT][WL],
    int u_off,
    const ScaleBias<T> (&sb)[2 * RT],
    const T* const (&xr)[MT],
    int unit,
    bool ok) {
#pragma unroll
  for (int jp = 0; jp < 4; ++jp) {
    uint32_t a[RT][2][4];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int jj = 2 * jp + h;
        const uint32_t* wa = &w[2 * rt][u_off];
        const uint32_t* wb = &w[2 * rt + 1][u_off];
        a[rt][h][0] =
            dequant_pair<T, BITS>(pair_bits<BITS>(wa, 2 * jj), sb[2 * rt]);
        a[rt][h][1] =
            dequant_pair<T, BITS>(pair_bits<BITS>(wb, 2 * jj), sb[2 * rt + 1]);
        a[rt][h][2] =
            dequant_pair<T, BITS>(pair_bits<BITS>(wa, 2 * jj + 1), sb[2 * rt]);
        a[rt][h][3] = dequant_pair<T, BITS>(
            pair_bits<BITS>(wb, 2 * jj + 1), sb[2 * rt + 1]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint4 xv = make_uint4(0, 0, 0, 0);
      if (ok && xr[mt] != nullptr) {
        xv = load_x8<BITS>(xr[mt] + unit * 32, jp);
      }
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
        mma16816<T>(acc[rt][mt], a[rt][0], xv.x, xv.y);
        mma16816<T>(acc[rt][mt], a[rt][1], xv.z, xv.w);
      }
    }
  }
}

template <typename T, int BITS, int GS, int MT, int RT, bool OUT_F32>
__global__ void __launch_bounds__(qmm_max_threads(MT, RT), 1)
    qmm_kernel(const QmmParams p) {
  constexpr int U = lane_units(BITS);
  constexpr int WL = U * BITS;
  constexpr int UPG = GS / 32;              // units per group
  constexpr int NG = U > UPG ? U / UPG : 1; // groups per lane-row and chunk
  constexpr int R = 2 * RT;                 // weight rows per lane
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int z = blockIdx.z;
  const int n0 = blockIdx.x * kRowsPerWarp * RT;
  const int m0 = blockIdx.y * 8 * MT;
  const int64_t kw = int64_t(p.k) * BITS / 32;
  const int kg = p.k / GS;
  const int units = p.k / 32;

  const int xb = p.lhs ? int(p.lhs[z]) : z / p.x_div;
  const uint32_t e = p.rhs ? p.rhs[z] : uint32_t(z);
  const bool live = xb >= 0 && xb < p.x_batches && e < uint32_t(p.experts);

  const T* sc = static_cast<const T*>(p.scales) + int64_t(e) * p.s_batch;
  const T* bi = static_cast<const T*>(p.biases) + int64_t(e) * p.s_batch;
  const uint32_t* wrow[R];
  const T* srow[R];
  const T* brow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = min(n0 + (r >> 1) * 16 + g + (r & 1) * 8, p.n - 1);
    wrow[r] = p.w + int64_t(e) * p.w_batch + row * kw;
    srow[r] = sc + int64_t(row) * kg;
    brow[r] = bi + int64_t(row) * kg;
  }

  const T* xr[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = m0 + mt * 8 + g;
    xr[mt] = (live && m < p.m) ? static_cast<const T*>(p.x) +
                                     int64_t(xb) * p.x_batch + int64_t(m) * p.k
                               : nullptr;
  }

  float acc[RT][MT][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[rt][mt][i] = 0.0f;
      }
    }
  }

  if (live) {
    // Main loop: chunks of 4 lanes x U units, 16-byte loads.
    const int nchunks = p.aligned ? units / (4 * U) : 0;
#pragma unroll 1
    for (int c = warp; c < nchunks; c += nwarps) {
      const int u0 = c * 4 * U + t * U;
      uint32_t w[R][WL];
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < WL / 4; ++i) {
          const uint4 v = load_stream(wrow[r] + int64_t(u0) * BITS + 4 * i);
          w[r][4 * i] = v.x, w[r][4 * i + 1] = v.y, w[r][4 * i + 2] = v.z,
                   w[r][4 * i + 3] = v.w;
        }
      }
      ScaleBias<T> sb[NG][R];
#pragma unroll
      for (int i = 0; i < NG; ++i) {
        const int grp = (u0 * 32) / GS + i;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          sb[i][r] = scale_bias<T>(srow[r][grp], brow[r][grp]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        unit_mma<T, BITS, MT, RT, WL>(
            acc, w, u * BITS, sb[(u * 32) / GS], xr, u0 + u, true);
      }
    }
    // Tail: one unit per lane, word loads.
    const int tail0 = nchunks * 4 * U;
    const int ntail = (units - tail0 + 3) / 4;
#pragma unroll 1
    for (int c = warp; c < ntail; c += nwarps) {
      const int u = tail0 + c * 4 + t;
      const bool ok = u < units;
      uint32_t w[R][BITS];
      ScaleBias<T> sb[R];
      const int grp = ok ? (u * 32) / GS : 0;
      const T zero = from_float<T>(0.0f);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < BITS; ++i) {
          w[r][i] = ok ? wrow[r][int64_t(u) * BITS + i] : 0u;
        }
        sb[r] =
            scale_bias<T>(ok ? srow[r][grp] : zero, ok ? brow[r][grp] : zero);
      }
      unit_mma<T, BITS, MT, RT, BITS>(acc, w, 0, sb, xr, u, ok);
    }
  }

  // Sum the warps' partial products (each took every nwarps-th chunk).
  constexpr int NACC = RT * MT * 4;
  if (nwarps > 1) {
    extern __shared__ float red[];
    float* flat = &acc[0][0][0];
    if (warp > 0) {
#pragma unroll
      for (int i = 0; i < NACC; ++i) {
        red[((warp - 1) * NACC + i) * 32 + lane] = flat[i];
      }
    }
    __syncthreads();
    if (warp != 0) {
      return;
    }
    for (int w2 = 0; w2 < nwarps - 1; ++w2) {
#pragma unroll
      for (int i = 0; i < NACC; ++i) {
        flat[i] += red[(w2 * NACC + i) * 32 + lane];
      }
    }
  }

  using OutT = std::conditional_t<OUT_F32, float, T>;
  OutT* out = static_cast<OutT*>(p.out) + int64_t(z) * p.out_batch;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n0 + rt * 16 + g + (i >= 2 ? 8 : 0);
        const int m = m0 + mt * 8 + 2 * t + (i & 1);
        if (n < p.n && m < p.m) {
          out[int64_t(m) * p.n + n] = from_float<OutT>(acc[rt][mt][i]);
        }
      }
    }
  }
}

// ------------------------------------------------------------ helpers -----

// dequantize: one thread per unit of 32 codes, rounded as mx.dequantize
// rounds (product to T, then the bias; never fused).
template <typename T, int BITS>
__global__ void dequant_kernel(const DequantParams p) {
  const int upr = p.k / 32;
  const int64_t total = p.rows * upr;
  const int64_t kw = int64_t(p.k) * BITS / 32;
  const int kg = p.k / p.group_size;
  const T* sc = static_cast<const T*>(p.scales);
  const T* bi = static_cast<const T*>(p.biases);
  T* out = static_cast<T*>(p.out);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / upr;
    const int u = int(i - r * upr);
    uint32_t w[BITS];
#pragma unroll
    for (int j = 0; j < BITS; ++j) {
      w[j] = p.w[r * kw + int64_t(u) * BITS + j];
    }
    const int grp = (u * 32) / p.group_size;
    const float s = to_float(sc[r * kg + grp]);
    const float b = to_float(bi[r * kg + grp]);
    T vals[32];
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float q = float(unit_code<BITS>(w, c));
      const T prod = from_float<T>(__fmul_rn(q, s));
      vals[c] = from_float<T>(__fadd_rn(to_float(prod), b));
    }
    uint4* dst = reinterpret_cast<uint4*>(out + r * p.k + int64_t(u) * 32);
    const uint4* src = reinterpret_cast<const uint4*>(vals);
#pragma unroll
    for (int j = 0; j < int(32 * sizeof(T) / 16); ++j) {
      dst[j] = src[j];
    }
  }
}

// Product on the CUDA cores for any float types: one warp per output element.
template <int BITS> __global__ void generic_kernel(const GenericParams p) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int i = blockIdx.y;
  const int z = blockIdx.z;
  if (n >= p.n) {
    return;
  }
  const int xb = p.lhs ? int(p.lhs[z]) : z / p.x_div;
  const uint32_t e = p.rhs ? p.rhs[z] : uint32_t(z);
  const bool live = xb >= 0 && xb < p.x_batches && e < uint32_t(p.experts);
  float acc = 0.0f;
  if (live) {
    const int64_t kw = int64_t(p.k) * BITS / 32;
    const int kg = p.k / p.group_size;
    const uint32_t* w = p.w + int64_t(e) * p.w_batch + int64_t(n) * kw;
    const int64_t srow = int64_t(e) * p.s_batch + int64_t(n) * kg;
    const int64_t xrow = row_offset(p.xs, int64_t(xb) * p.m + i);
    const int64_t xstep = p.xs.strides[p.xs.ndim - 1];
    for (int u = lane; u < p.k / 32; u += 32) {
      uint32_t words[BITS];
#pragma unroll
      for (int j = 0; j < BITS; ++j) {
        words[j] = w[int64_t(u) * BITS + j];
      }
      const int grp = (u * 32) / p.group_size;
      const float s = load_float(p.scales, p.sdt, srow + grp);
      const float b = load_float(p.biases, p.bdt, srow + grp);
      float xq = 0.0f, xs = 0.0f;
#pragma unroll
      for (int c = 0; c < 32; ++c) {
        const float xv =
            load_float(p.x, p.xdt, xrow + (int64_t(u) * 32 + c) * xstep);
        xq = fmaf(xv, float(unit_code<BITS>(words, c)), xq);
        xs += xv;
      }
      acc += s * xq + b * xs; // affine::group_dot
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      acc += __shfl_xor_sync(0xffffffffu, acc, o);
    }
  }
  if (lane == 0) {
    store_float(
        p.out, p.odt, int64_t(z) * p.out_batch + int64_t(i) * p.n + n, acc);
  }
}

template <typename E> __global__ void copy_kernel(const CopyParams p) {
  const E* src = static_cast<const E*>(p.src);
  E* dst = static_cast<E*>(p.dst);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.total;
       i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = src[elem_offset(p.s, i)];
  }
}

// SwiGLU of moe_gate_up: silu(gate) * up in fp32, rounded once.
template <typename T> __global__ void swiglu_kernel(const SwigluParams p) {
  T* out = static_cast<T*>(p.out);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = p.gate[i];
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * p.up[i]);
  }
}

// cudaGetFuncBySymbol, checked.
void* function_of(const void* symbol);

} // namespace jang::cuda
