// CUDA kernels of jang's primitives in MLX's affine layout (see
// jang/affine.h): quantized matmul on the tensor cores, its CUDA-core
// fallback, dequantize, and the small helpers they need.
//
// The matmuls compute out = x @ dequantize(w).T with mma.sync m16n8k16 and
// fp32 accumulators, weights as the A operand ("swap AB"): a warp owns tiles
// of 16 output columns (rows of w) and 8*MT activation rows, so M = 1 wastes
// 7/8 of a small mma instead of 15/16. qmv_kernel (M <= 16 per grid row)
// streams the weights through registers with a chunk always in flight;
// qmt_kernel (larger M) stages weights and activations through shared memory
// with cp.async and shares each stage's activations among its warps.
//
// A lane (group g = lane/4, thread t = lane%4) reads rows g and g+8 of each of
// its 16-row tiles, and its own segments of those rows (whole 16-byte blocks of
// 2/4/8-bit codes, whole units of 32 3/5/6-bit codes). The mma's k slots 2t,
// 2t+1, 2t+8, 2t+9 of a k16 step then hold codes of lane t's segment; since a
// dot product does not care about the order of k, each lane reads the
// activations in the same permuted order (load_x8: one or two loads and byte
// permutes). The codes are taken in pairs 16 bits apart (2/4/8 bits: within a
// word; 3/5/6 bits: gathered into one register by a "run"), converted to
// fp16/bf16 two at a time with the exponent trick (dq), then scaled:
// w = s*q + b.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>
#include <utility>

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

// Compile-time loop: f(std::integral_constant<int, I>{}) for I = 0 .. N-1.
template <int N, typename F> __device__ __forceinline__ void static_for(F&& f) {
  if constexpr (N > 0) {
    [&]<int... I>(std::integer_sequence<int, I...>) {
      (f(std::integral_constant<int, I>{}), ...);
    }
    (std::make_integer_sequence<int, N>{});
  }
}

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

// Codes -> 16-bit floats with "magic" exponents: a code q of BITS bits placed
// at bit o of a half's mantissa, under the exponent of 2^(MANT - o), reads as
// 2^(MANT - o) + q exactly; subtracting that power of two leaves q. Placing
// the code where it already sits (o = its bit offset in the half, when the
// code fits in the mantissa there) saves the shift that moves it to bit 0;
// codes higher up are shifted down by a multiple of WIN first. Both halves of
// a register are converted at once (a pair of codes 16 bits apart).
template <typename T, int BITS> struct Cvt {
  static constexpr int MANT = std::is_same_v<T, __half> ? 10 : 7;
  static constexpr int MAXOFF = MANT - BITS;
  static constexpr bool fast = MAXOFF >= 0; // false only for bf16 8-bit
  static constexpr int WIN = fast ? ((MAXOFF + BITS) / BITS) * BITS : 1;
  static constexpr int shift(int off) {
    return (off / WIN) * WIN;
  }
  static constexpr uint32_t magic(int o) {
    const uint32_t h = std::is_same_v<T, __half> ? uint32_t(25 - o) << 10
                                                 : uint32_t(134 - o) << 7;
    return h | (h << 16);
  }
  static constexpr uint32_t mask(int o) {
    return (affine::Pack<BITS>::mask * 0x00010001u) << o;
  }
};

// The two codes at bit OFF of the low and high halves of `v` -> the two
// weights s*q + b as the 16-bit pair the mma reads (q exact, one rounding).
template <typename T, int BITS, int OFF>
__device__ __forceinline__ uint32_t dq(uint32_t v, const ScaleBias<T>& sb) {
  using C = Cvt<T, BITS>;
  using T2 = typename Half2<T>::type;
  if constexpr (!C::fast) {
    // bf16 holds 128 + q exactly only for q < 128: 8-bit codes go through fp32.
    const uint32_t pr = (OFF ? v >> OFF : v) & C::mask(0);
    const float lo = __uint_as_float(0x4B000000u | (pr & 0xFFFFu)) - 8388608.0f;
    const float hi = __uint_as_float(0x4B000000u | (pr >> 16)) - 8388608.0f;
    return bit_cast<uint32_t>(
        __floats2bfloat162_rn(fmaf(lo, sb.sf, sb.bf), fmaf(hi, sb.sf, sb.bf)));
  } else {
    constexpr int sh = C::shift(OFF);
    constexpr int o = OFF - sh;
    // (v & mask) | magic in one LOP3 (C++ would give two: one immediate each).
    uint32_t bits;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n"
        : "=r"(bits)
        : "r"(sh ? v >> sh : v), "r"(C::mask(o)), "r"(C::magic(o)));
    const T2 q = __hsub2(bit_cast<T2>(bits), bit_cast<T2>(C::magic(o)));
    return bit_cast<uint32_t>(__hfma2(q, sb.s, sb.b));
  }
}

// 3/5/6-bit units (32 codes in BITS words) pair code p with code p + 16 (48,
// 80 or 96 bits further). A "run" gathers the bits of 16 / BITS consecutive
// low codes into the low half of a register and their partners into the high
// half (two shifts or funnel shifts and one byte permute), so that each pair
// is then one masked conversion, as for 2/4/8 bits.
template <int P, int NBITS>
__device__ __forceinline__ uint32_t bits_at(const uint32_t* w) {
  constexpr int i = P / 32;
  constexpr int o = P % 32;
  if constexpr (o == 0) {
    return w[i];
  } else if constexpr (o + NBITS <= 32) {
    return w[i] >> o;
  } else {
    return __funnelshift_r(w[i], w[i + 1], o);
  }
}

template <int BITS> constexpr int kCodesPerRun = 16 / BITS;
template <int BITS>
constexpr int kRuns = (16 + kCodesPerRun<BITS> - 1) / kCodesPerRun<BITS>;

template <int BITS, int R>
__device__ __forceinline__ uint32_t run_of(const uint32_t* w) {
  constexpr int cpr = kCodesPerRun<BITS>;
  constexpr int c0 = R * cpr;
  constexpr int n = (16 - c0) < cpr ? 16 - c0 : cpr;
  constexpr int plo = BITS * c0;
  constexpr int phi = plo + 16 * BITS;
  return __byte_perm(
      bits_at<plo, BITS * n>(w), bits_at<phi, BITS * n>(w), 0x5410);
}

// ---------------------------------------------------------------- mma -----

template <typename T>
__device__ __forceinline__ void
mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Weight loads, 16 bytes, issued where they stand (volatile: the prefetch
// must not sink to its use). Interleaved layouts read whole sectors per
// instruction and skip L1; the per-lane contiguous layout of 3/5/6 bits reads
// half sectors, whose other half the next instruction finds in L1.
template <bool L1>
__device__ __forceinline__ uint4 load_stream(const uint32_t* p) {
  uint4 v;
  if constexpr (L1) {
    asm volatile("ld.global.nc.L1::evict_first.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  }
  return v;
}

template <typename V, bool GLOBAL>
__device__ __forceinline__ V load_vec(const void* p) {
  if constexpr (GLOBAL) {
    return __ldg(reinterpret_cast<const V*>(p));
  } else {
    return *reinterpret_cast<const V*>(p);
  }
}

// The activations of 8 codes (two k16 steps) of a segment in the order of the
// weight pairs: from the unpermuted row `xs` (16-byte aligned, the segment's
// first code), group G. 2/4/8 bits: pairs (c, c + 16/BITS) of a word;
// 3/5/6 bits: pairs (c, c + 16) of a unit. One or two loads, four permutes.
template <int BITS, bool GLOBAL = true, typename T>
__device__ __forceinline__ uint4 load_x8(const T* xs, int G) {
  static_assert(sizeof(T) == 2);
  if constexpr (BITS == 4 || BITS == 8) {
    const uint4 v = load_vec<uint4, GLOBAL>(xs + 8 * G);
    const uint32_t p0 = v.x, q0 = BITS == 4 ? v.z : v.y;
    const uint32_t p1 = BITS == 4 ? v.y : v.z, q1 = v.w;
    return make_uint4(
        __byte_perm(p0, q0, 0x5410),
        __byte_perm(p0, q0, 0x7632),
        __byte_perm(p1, q1, 0x5410),
        __byte_perm(p1, q1, 0x7632));
  } else {
    const int oa = BITS == 2 ? 16 * (G >> 1) + 4 * (G & 1) : 4 * G;
    const int ob = oa + (BITS == 2 ? 8 : 16);
    const uint2 a = load_vec<uint2, GLOBAL>(xs + oa);
    const uint2 b = load_vec<uint2, GLOBAL>(xs + ob);
    return make_uint4(
        __byte_perm(a.x, b.x, 0x5410),
        __byte_perm(a.x, b.x, 0x7632),
        __byte_perm(a.y, b.y, 0x5410),
        __byte_perm(a.y, b.y, 0x7632));
  }
}

// One segment of the lane's 2*RT weight rows (rows g and g+8 of each 16-row
// tile): words w[r][WOFF .. WOFF + NWS) (2/4/8 bits: any whole words; 3/5/6
// bits: one unit of BITS words), scale and bias sb[r][SOFF + group of the
// word]. The lane's k16 slots take 4 codes of the segment per step; xf(mt, G)
// gives the activations of steps 2G, 2G+1 for m tile mt (load_x8's order).
template <
    typename T,
    int BITS,
    int GS,
    int MT,
    int RT,
    int NWS,
    int WOFF,
    int SOFF,
    int WL,
    int NSB,
    int G0 = 0,  // first 2-step group of the segment to compute
    int NGS = 0, // groups to compute (0: all from G0)
    typename XF>
__device__ __forceinline__ void seg_mma(
    float (&acc)[RT][MT][4],
    const uint32_t (&w)[2 * RT][WL],
    const ScaleBias<T> (&sb)[2 * RT][NSB],
    XF&& xf) {
  constexpr bool POW2 = (BITS & (BITS - 1)) == 0;
  if constexpr (POW2) {
    constexpr int SPW = 8 / BITS;  // k16 steps per word
    constexpr int CPW = 32 / BITS; // codes per word
    constexpr int NG = NWS * SPW / 2;
    static_for<(NGS ? NGS : NG - G0)>([&](auto gc) {
      constexpr int G = G0 + decltype(gc)::value;
      uint4 xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        xv[mt] = xf(mt, G);
      }
      static_for<2>([&](auto sc) {
        constexpr int S = 2 * G + decltype(sc)::value;
        constexpr int wi = S / SPW;
        constexpr int st = S % SPW;
        constexpr int grp = SOFF + (wi * CPW) / GS;
        uint32_t a[RT][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          const uint32_t w0 = w[2 * rt][WOFF + wi];
          const uint32_t w1 = w[2 * rt + 1][WOFF + wi];
          a[rt][0] = dq<T, BITS, 2 * st * BITS>(w0, sb[2 * rt][grp]);
          a[rt][1] = dq<T, BITS, 2 * st * BITS>(w1, sb[2 * rt + 1][grp]);
          a[rt][2] = dq<T, BITS, (2 * st + 1) * BITS>(w0, sb[2 * rt][grp]);
          a[rt][3] = dq<T, BITS, (2 * st + 1) * BITS>(w1, sb[2 * rt + 1][grp]);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
            if constexpr (decltype(sc)::value == 0) {
              mma16816<T>(acc[rt][mt], a[rt], xv[mt].x, xv[mt].y);
            } else {
              mma16816<T>(acc[rt][mt], a[rt], xv[mt].z, xv[mt].w);
            }
          }
        }
      });
    });
  } else {
    static_assert(NWS == BITS, "3/5/6-bit segments are whole units");
    constexpr int CPR = kCodesPerRun<BITS>;
    constexpr int NR = kRuns<BITS>;
    uint32_t runs[2 * RT][NR];
#pragma unroll
    for (int r = 0; r < 2 * RT; ++r) {
      static_for<NR>([&](auto rc) {
        runs[r][decltype(rc)::value] =
            run_of<BITS, decltype(rc)::value>(&w[r][WOFF]);
      });
    }
    static_for<(NGS ? NGS : 4 - G0)>([&](auto gc) {
      constexpr int G = G0 + decltype(gc)::value;
      uint4 xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        xv[mt] = xf(mt, G);
      }
      static_for<2>([&](auto sc) {
        constexpr int jj = 2 * G + decltype(sc)::value;
        constexpr int p0 = 2 * jj, p1 = 2 * jj + 1;
        uint32_t a[RT][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          const auto& s0 = sb[2 * rt][SOFF];
          const auto& s1 = sb[2 * rt + 1][SOFF];
          a[rt][0] = dq<T, BITS, (p0 % CPR) * BITS>(runs[2 * rt][p0 / CPR], s0);
          a[rt][1] =
              dq<T, BITS, (p0 % CPR) * BITS>(runs[2 * rt + 1][p0 / CPR], s1);
          a[rt][2] = dq<T, BITS, (p1 % CPR) * BITS>(runs[2 * rt][p1 / CPR], s0);
          a[rt][3] =
              dq<T, BITS, (p1 % CPR) * BITS>(runs[2 * rt + 1][p1 / CPR], s1);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
            if constexpr (decltype(sc)::value == 0) {
              mma16816<T>(acc[rt][mt], a[rt], xv[mt].x, xv[mt].y);
            } else {
              mma16816<T>(acc[rt][mt], a[rt], xv[mt].z, xv[mt].w);
            }
          }
        }
      });
    });
  }
}

// The units [tail0, units) that the 16-byte main loop leaves (or all of them
// when rows are not 16-byte aligned): one unit per lane, word loads, groups of
// 4 units c = first, first + stride, ...
template <typename T, int BITS, int GS, int MT, int RT>
__device__ __forceinline__ void tail_mma(
    float (&acc)[RT][MT][4],
    const uint32_t* const* wrow, // [2 * RT]
    const T* const* srow,        // [2 * RT]
    const T* const* brow,        // [2 * RT]
    const T* const* xr,          // [MT]
    int tail0,
    int units,
    int first,
    int stride,
    int t) {
  const int ntail = (units - tail0 + 3) / 4;
  const T zero = from_float<T>(0.0f);
#pragma unroll 1
  for (int c = first; c < ntail; c += stride) {
    const int u = tail0 + c * 4 + t;
    const bool ok = u < units;
    uint32_t w[2 * RT][BITS];
    ScaleBias<T> sb[2 * RT][1];
    const int grp = ok ? (u * 32) / GS : 0;
#pragma unroll
    for (int r = 0; r < 2 * RT; ++r) {
#pragma unroll
      for (int i = 0; i < BITS; ++i) {
        w[r][i] = ok ? wrow[r][int64_t(u) * BITS + i] : 0u;
      }
      sb[r][0] =
          scale_bias<T>(ok ? srow[r][grp] : zero, ok ? brow[r][grp] : zero);
    }
    const int code0 = u * 32;
    seg_mma<T, BITS, GS, MT, RT, BITS, 0, 0, BITS, 1>(
        acc, w, sb, [&](int mt, int G) {
          return (ok && xr[mt] != nullptr) ? load_x8<BITS>(xr[mt] + code0, G)
                                           : make_uint4(0, 0, 0, 0);
        });
  }
}

// Which batch / expert a z index reads (lhs, rhs), and whether it is in range.
struct Route {
  int xb;
  uint32_t e;
  bool live;
};
__device__ __forceinline__ Route route_of(const QmmParams& p, int z) {
  Route r;
  r.xb = p.lhs ? int(p.lhs[z]) : z / p.x_div;
  r.e = p.rhs ? p.rhs[z] : uint32_t(z);
  r.live = r.xb >= 0 && r.xb < p.x_batches && r.e < uint32_t(p.experts);
  return r;
}

// ----------------------------------------------------- small M (qmv) -----
//
// out = x @ dequantize(w).T for up to 8*MT activation rows per grid row
// (blockIdx.y), reading each weight once. A warp owns RT tiles of 16 weight
// rows and a share of k; a block is nwr x nwk warps (warp w: row group
// w % nwr, k share w / nwr), the k shares summed in shared memory.
//
// Weights stream in chunks (per lane and row: 32 bytes of 2/4/8-bit codes,
// four 16-byte blocks of a row interleaved over the 4 lanes of a row so that
// each load instruction reads whole 32-byte sectors; 3/5/6 bits: U whole
// units, contiguous per lane). Each warp loads chunk c + nwk (codes, scales,
// biases) into registers before it computes chunk c: one chunk of every warp
// is always in flight.
template <int BITS> struct QmvLayout {
  static constexpr bool POW2 = (BITS & (BITS - 1)) == 0;
  static constexpr int NB = 2; // 16-byte blocks / lane-row
  static constexpr int U = POW2 ? 0 : lane_units(BITS); // units / lane-row
  static constexpr int WL = POW2 ? 4 * NB : U * BITS;   // words / lane-row
  static constexpr int CPB = 128 / BITS;                // codes per block
  static constexpr int CHUNK = POW2 ? 4 * NB * CPB : 4 * U * 32; // codes/row
  static_assert(CHUNK == qmv_chunk_codes(BITS));
};

template <typename T, int BITS, int GS, int MT, int RT, bool OUT_F32, bool XS>
__global__ void __launch_bounds__(qmv_max_threads(BITS, MT, RT))
    qmv_kernel(const QmmParams p) {
  static_assert(!XS || MT == 1);
  using L = QmvLayout<BITS>;
  constexpr bool POW2 = L::POW2;
  constexpr int WL = L::WL;
  constexpr int R = 2 * RT;
  constexpr int NGB = L::CPB > GS ? L::CPB / GS : 1; // groups per block
  constexpr int NSB =
      POW2 ? L::NB * NGB : (L::U * 32 > GS ? L::U * 32 / GS : 1);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwr = p.nwr;
  const int nwk = (blockDim.x >> 5) / nwr;
  const int wr = warp % nwr;
  const int wk = warp / nwr;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int z = blockIdx.z;
  const int n0 = (blockIdx.x * nwr + wr) * kRowsPerWarp * RT;
  const int m0 = blockIdx.y * 8 * MT;
  const int64_t kw = int64_t(p.k) * BITS / 32;
  const int kg = p.k / GS;
  const int units = p.k / 32;
  const Route ro = route_of(p, z);

  const T* sc = static_cast<const T*>(p.scales) + int64_t(ro.e) * p.s_batch;
  const T* bi = static_cast<const T*>(p.biases) + int64_t(ro.e) * p.s_batch;
  const uint32_t* wrow[R];
  const T* srow[R];
  const T* brow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = min(n0 + (r >> 1) * 16 + g + (r & 1) * 8, p.n - 1);
    wrow[r] = p.w + int64_t(ro.e) * p.w_batch + row * kw;
    srow[r] = sc + int64_t(row) * kg;
    brow[r] = bi + int64_t(row) * kg;
  }
  // Activation rows; a lane past the last row reads the last one instead:
  // its products land in output columns that are never stored.
  const T* xr[MT];
  const T* xt[MT]; // the same, nullptr past the last row (tail loop)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = m0 + mt * 8 + g;
    xr[mt] = static_cast<const T*>(p.x) + int64_t(ro.xb) * p.x_batch +
             int64_t(min(m, p.m - 1)) * p.k;
    xt[mt] = m < p.m ? xr[mt] : nullptr;
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

  // XS (M <= 2): the activation rows, permuted once per block into shared
  // memory for all of k (entry e = 8 codes in load_x8's order, slot(e) padded
  // one entry in 8 so that the 4 lanes of a row, whose segments are 8 entries
  // apart or a multiple of it, hit different banks); lanes read one 16-byte
  // entry per two k16 steps. Otherwise every lane reads its own fragments from
  // memory.
  extern __shared__ __align__(16) uint8_t qsm[];
  uint4* xsm = reinterpret_cast<uint4*>(qsm);
  const int xs_row = p.k / 8 + p.k / 64 + 1; // slots per activation row
  const int xs_bytes = XS ? qmv_xs_bytes(p.m, p.k) : 0;
  // slot(e + G) = slot(e) + G for a segment's first entry e and its G: the
  // segments are aligned to their entry count (at most 8).
  auto xs_slot = [](int e) {
    return e + (e >> 3);
  };
  const int xs_base = min(g, p.m - 1) * xs_row; // the lane's activation row
  // The lane's first entry of its next chunk to compute.
  int ex = ((POW2 ? t * L::CPB : t * L::U * 32) + wk * L::CHUNK) / 8;
  const int step_e = nwk * (L::CHUNK / 8);

  struct Frag {
    uint32_t w[R][WL];
    T s[R][NSB];
    T b[R][NSB];
  };
  // Running pointers to the lane's codes, scales and biases of the next chunk
  // to load, and to its activations of the next chunk to compute (chunks
  // wk, wk + nwk, ... in order). 2/4/8 bits: block b of the lane is block
  // 4b + t of the chunk; 3/5/6 bits: units t*U .. t*U + U - 1.
  constexpr int CW = L::CHUNK * BITS / 32;       // words per row and chunk
  constexpr int CS = L::CHUNK / GS;              // groups per row and chunk
  const int lw = POW2 ? 4 * t : t * L::U * BITS; // lane's first word
  const int ls = POW2 ? (t * L::CPB) / GS : (t * L::U * 32) / GS;
  const int lx = POW2 ? t * L::CPB : t * L::U * 32; // lane's first code
  const uint32_t* pw[R];
  const T* ps[R];
  const T* pb[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    pw[r] = wrow[r] + lw + int64_t(wk) * CW;
    ps[r] = srow[r] + ls + int64_t(wk) * CS;
    pb[r] = brow[r] + ls + int64_t(wk) * CS;
  }
  const T* px[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    px[mt] = xr[mt] + lx + int64_t(wk) * L::CHUNK;
  }
  const int64_t step_w = int64_t(nwk) * CW;
  const int step_s = nwk * CS;
  const int step_x = nwk * L::CHUNK;

  auto load = [&](Frag& f) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if constexpr (POW2) {
#pragma unroll
        for (int b = 0; b < L::NB; ++b) {
          const uint4 v = load_stream<false>(pw[r] + 16 * b);
          f.w[r][4 * b] = v.x, f.w[r][4 * b + 1] = v.y;
          f.w[r][4 * b + 2] = v.z, f.w[r][4 * b + 3] = v.w;
#pragma unroll
          for (int j = 0; j < NGB; ++j) {
            const int gi = (b * 4 * L::CPB) / GS + j;
            f.s[r][b * NGB + j] = ps[r][gi];
            f.b[r][b * NGB + j] = pb[r][gi];
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < WL / 4; ++i) {
          const uint4 v = load_stream<true>(pw[r] + 4 * i);
          f.w[r][4 * i] = v.x, f.w[r][4 * i + 1] = v.y;
          f.w[r][4 * i + 2] = v.z, f.w[r][4 * i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < NSB; ++j) {
          f.s[r][j] = ps[r][j];
          f.b[r][j] = pb[r][j];
        }
      }
      pw[r] += step_w;
      ps[r] += step_s;
      pb[r] += step_s;
    }
  };
  auto compute = [&](const Frag& f) {
    ScaleBias<T> sb[R][NSB];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int j = 0; j < NSB; ++j) {
        sb[r][j] = scale_bias<T>(f.s[r][j], f.b[r][j]);
      }
    }
    if constexpr (POW2) {
      static_for<L::NB>([&](auto bc) {
        constexpr int b = decltype(bc)::value;
        seg_mma<T, BITS, GS, MT, RT, 4, 4 * b, b * NGB, WL, NSB>(
            acc, f.w, sb, [&](int mt, int G) {
              if constexpr (XS) {
                return xsm[xs_base + xs_slot(ex + b * 4 * L::CPB / 8) + G];
              } else {
                return load_x8<BITS>(px[mt] + b * 4 * L::CPB, G);
              }
            });
      });
    } else {
      static_for<L::U>([&](auto uc) {
        constexpr int u = decltype(uc)::value;
        seg_mma<T, BITS, GS, MT, RT, BITS, u * BITS, (u * 32) / GS, WL, NSB>(
            acc, f.w, sb, [&](int mt, int G) {
              if constexpr (XS) {
                return xsm[xs_base + xs_slot(ex + u * 4) + G];
              } else {
                return load_x8<BITS>(px[mt] + u * 32, G);
              }
            });
      });
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      px[mt] += step_x;
    }
    ex += step_e;
  };

  const int nchunks = (ro.live && p.aligned) ? p.k / L::CHUNK : 0;
  int c = wk;
  Frag f0, f1;
  if (c < nchunks) {
    load(f0);
  }
  if constexpr (XS) {
    // Stage the activations while the first chunk's weights are on their way.
    if (ro.live) {
      const int ne = p.k / 8;
      for (int i = threadIdx.x; i < p.m * ne; i += blockDim.x) {
        const int row = i / ne, e = i - row * ne;
        const T* xrow = static_cast<const T*>(p.x) +
                        int64_t(ro.xb) * p.x_batch + int64_t(row) * p.k;
        xsm[row * xs_row + xs_slot(e)] =
            POW2 ? load_x8<BITS>(xrow, e)
                 : load_x8<BITS>(xrow + 32 * (e >> 2), e & 3);
      }
    }
    __syncthreads();
  }
  if (ro.live) {
#pragma unroll 1
    while (c < nchunks) {
      const int c1 = c + nwk;
      if (c1 < nchunks) {
        load(f1);
      }
      compute(f0);
      if (c1 >= nchunks) {
        break;
      }
      const int c2 = c1 + nwk;
      if (c2 < nchunks) {
        load(f0);
      }
      compute(f1);
      c = c2;
    }
    tail_mma<T, BITS, GS, MT, RT>(
        acc,
        wrow,
        srow,
        brow,
        xt,
        nchunks * (L::CHUNK / 32),
        units,
        wk,
        nwk,
        t);
  }

  // Sum the k shares of each row group.
  constexpr int NACC = RT * MT * 4;
  if (nwk > 1) {
    float* red = reinterpret_cast<float*>(qsm + xs_bytes);
    float* flat = &acc[0][0][0];
    if (wk > 0) {
#pragma unroll
      for (int i = 0; i < NACC; ++i) {
        red[(((wk - 1) * nwr + wr) * NACC + i) * 32 + lane] = flat[i];
      }
    }
    __syncthreads();
    if (wk != 0) {
      return;
    }
    for (int w2 = 0; w2 < nwk - 1; ++w2) {
#pragma unroll
      for (int i = 0; i < NACC; ++i) {
        flat[i] += red[((w2 * nwr + wr) * NACC + i) * 32 + lane];
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

// ----------------------------------------------------- large M (qmt) -----
//
// A block of kTiledWarps warps owns 16 * kTiledWarps weight rows and 8 * MT
// activation rows over all of k. Stages of kTiledCodes codes per row go
// global -> shared with cp.async, kTiledStages deep: the packed weights (each
// weight read once from memory per block), their scales and biases, and the
// activations. Each stage's activations are then permuted once in shared
// memory into the lane order of the mma fragments (the order the weight pairs
// come in), and every warp reads them from there: one 16-byte load per m tile
// and two k16 steps. Each warp dequantizes its own 16 rows in registers (one
// unit of 32 codes per lane and row per stage) and runs the mma for all MT.
__device__ __forceinline__ void
cp_async16(void* smem, const void* gmem, int n) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s),
               "l"(gmem),
               "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Slot of lane (g, t)'s permuted activations: conflict-free for the 8 lanes
// of a quarter warp both when the warps read them (g in {2i, 2i+1}, any t)
// and when the permutation writes them (any g, one t).
__device__ __forceinline__ int e_slot(int G, int mt, int MT, int g, int t) {
  return (G * MT + mt) * 32 + g * 4 + (t ^ ((g >> 1) & 3));
}

template <typename T, int BITS, int GS, int MT, int KS>
__global__ void __launch_bounds__(kTiledWarps * 32 * KS)
    qmt_kernel(const QmmParams p) {
  static_assert(KS == 1 || KS == 2);
  constexpr QmtSmem S{BITS, GS, MT};
  constexpr int NW = kTiledWarps * KS;
  constexpr int NT = NW * 32;
  constexpr int BM = S.bm();
  constexpr int BN = S.bn();
  constexpr int CC = kTiledCodes;
  constexpr int NS = kTiledStages;
  constexpr int SW = S.swords();
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* xs = smem;
  uint8_t* ws = xs + NS * S.x_stage();
  uint8_t* ss = ws + NS * S.w_stage();
  uint4* es = reinterpret_cast<uint4*>(ss + NS * S.s_stage());

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int z = blockIdx.z;
  const int nb0 = blockIdx.x * BN;
  // KS = 2: warps w and w + kTiledWarps share a 16-row tile and take the
  // first and the second half of each unit's k16 steps (kh), summed at the end.
  const int tile = warp % kTiledWarps;
  const int kh = warp / kTiledWarps;
  const int n0 = nb0 + tile * 16;
  const int m0 = blockIdx.y * BM;
  const int64_t kw = int64_t(p.k) * BITS / 32;
  const int kg = p.k / GS;
  const int units = p.k / 32;
  const Route ro = route_of(p, z);

  const T* sc = static_cast<const T*>(p.scales) + int64_t(ro.e) * p.s_batch;
  const T* bi = static_cast<const T*>(p.biases) + int64_t(ro.e) * p.s_batch;
  const uint32_t* wb = p.w + int64_t(ro.e) * p.w_batch;
  const T* xb = static_cast<const T*>(p.x) + int64_t(ro.xb) * p.x_batch;

  float acc[1][MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc[0][mt][i] = 0.0f;
    }
  }

  const int nchunks = (ro.live && p.aligned && p.s_aligned) ? p.k / CC : 0;
  // This thread's share of a stage, fixed but for the stage's k offset:
  // activations XJ pieces of 16 bytes (rows xr0 + 8j... of piece xp), codes WJ
  // pieces, scales / biases SJ words.
  constexpr int XP = CC / 8;          // 16-byte pieces per activation row
  constexpr int XJ = BM * XP / NT;    // per thread
  constexpr int WP = CC * BITS / 128; // 16-byte pieces per weight row
  constexpr int WJ = (BN * WP + NT - 1) / NT;
  constexpr int SJ = (2 * BN * SW + NT - 1) / NT;
  static_assert(NT % XP == 0 && (BM * XP) % NT == 0);
  const int xp = tid % XP;
  const int xr0 = tid / XP;
  // Rows past the last activation row copy the last one: their products land
  // in output columns that are never stored.
  const T* xsj[XJ];
#pragma unroll
  for (int j = 0; j < XJ; ++j) {
    const int m = min(m0 + xr0 + j * (NT / XP), p.m - 1);
    xsj[j] = xb + int64_t(m) * p.k + xp * 8;
  }
  int64_t woff[WJ];
  int wdst[WJ];
#pragma unroll
  for (int j = 0; j < WJ; ++j) {
    const int i = min(tid + j * NT, BN * WP - 1);
    const int row = i / WP, piece = i % WP;
    woff[j] = int64_t(min(nb0 + row, p.n - 1)) * kw + piece * 4;
    wdst[j] = row * S.wrow() + piece * 16;
  }
  const T* soff[SJ];
  int sdst[SJ];
#pragma unroll
  for (int j = 0; j < SJ; ++j) {
    const int i = min(tid + j * NT, 2 * BN * SW - 1);
    const int arr = i / (BN * SW), rem = i % (BN * SW);
    const int row = rem / SW, jw = rem % SW;
    soff[j] = (arr ? bi : sc) + int64_t(min(nb0 + row, p.n - 1)) * kg + 2 * jw;
    sdst[j] = i * 4;
  }
  // cp.async of stage c (codes [c*CC, (c+1)*CC) of every row).
  auto issue = [&](int c) {
    const int st = c % NS;
    uint8_t* xd = xs + st * S.x_stage() + xr0 * S.xrow() + xp * 16;
#pragma unroll
    for (int j = 0; j < XJ; ++j) {
      cp_async16(xd + j * (NT / XP) * S.xrow(), xsj[j] + c * CC, 16);
    }
    uint8_t* wd = ws + st * S.w_stage();
    const uint32_t* wsc = wb + int64_t(c) * (CC * BITS / 32);
#pragma unroll
    for (int j = 0; j < WJ; ++j) {
      if (tid + j * NT < BN * WP) {
        cp_async16(wd + wdst[j], wsc + woff[j], 16);
      }
    }
    uint8_t* sd = ss + st * S.s_stage();
    const int word0 = (c * CC / GS) / 2;
#pragma unroll
    for (int j = 0; j < SJ; ++j) {
      if (tid + j * NT < 2 * BN * SW) {
        cp_async4(sd + sdst[j], soff[j] + 2 * word0);
      }
    }
  };

  // Permute stage c's activations into the tile `e` of load_x8's order.
  auto permute = [&](int c, uint4* e) {
    const T* xsrc = reinterpret_cast<const T*>(xs + (c % NS) * S.x_stage());
#pragma unroll
    for (int j = 0; j < 4 * MT * 32 / NT; ++j) {
      const int i = tid + j * NT;
      const int eg = i & 7, et = (i >> 3) & 3, rest = i >> 5;
      const int emt = rest % MT, eG = rest / MT;
      const T* row = xsrc + (emt * 8 + eg) * (S.xrow() / 2) + et * 32;
      e[e_slot(eG, emt, MT, eg, et)] = load_x8<BITS, false>(row, eG);
    }
  };

#pragma unroll
  for (int s = 0; s < NS - 1; ++s) {
    if (s < nchunks) {
      issue(s);
    }
    cp_async_commit();
  }
  if (nchunks > 0) {
    cp_async_wait<NS - 2>();
    __syncthreads();
    permute(0, es);
  }
  const int row_lo = tile * 16 + g;
#pragma unroll 1
  for (int c = 0; c < nchunks; ++c) {
    // One barrier a stage: stage c+1 landed, tile c permuted, and every warp
    // is done with stage c-1 and tile c-1 (whose buffers are refilled now).
    cp_async_wait<NS - 3>();
    __syncthreads();
    if (c + NS - 1 < nchunks) {
      issue(c + NS - 1);
    }
    cp_async_commit();
    uint4* ecur = es + (c & 1) * (4 * MT * 32);
    // The next tile (past the last stage: stale data, never read).
    permute(c + 1, es + ((c + 1) & 1) * (4 * MT * 32));
    const int st = c % NS;
    uint32_t w[2][BITS];
    ScaleBias<T> sb[2][1];
    const uint8_t* wsrc = ws + st * S.w_stage();
    const uint8_t* ssrc = ss + st * S.s_stage();
    const int gi = (c * CC + t * 32) / GS;
    const int sj = gi - 2 * ((c * CC / GS) / 2); // T index in the row's words
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row_lo + 8 * r;
      const uint32_t* src =
          reinterpret_cast<const uint32_t*>(wsrc + row * S.wrow()) + t * BITS;
      if constexpr (BITS % 4 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 4; ++i) {
          const uint4 v = reinterpret_cast<const uint4*>(src)[i];
          w[r][4 * i] = v.x, w[r][4 * i + 1] = v.y;
          w[r][4 * i + 2] = v.z, w[r][4 * i + 3] = v.w;
        }
      } else if constexpr (BITS % 2 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 2; ++i) {
          const uint2 v = reinterpret_cast<const uint2*>(src)[i];
          w[r][2 * i] = v.x, w[r][2 * i + 1] = v.y;
        }
      } else {
#pragma unroll
        for (int i = 0; i < BITS; ++i) {
          w[r][i] = src[i];
        }
      }
      const T* srow = reinterpret_cast<const T*>(ssrc + row * SW * 4);
      const T* brow = reinterpret_cast<const T*>(ssrc + (BN + row) * SW * 4);
      sb[r][0] = scale_bias<T>(srow[sj], brow[sj]);
    }
    auto xf = [&](int mt, int G) {
      return ecur[e_slot(G, mt, MT, g, t)];
    };
    if constexpr (KS == 1) {
      seg_mma<T, BITS, GS, MT, 1, BITS, 0, 0, BITS, 1>(acc, w, sb, xf);
    } else if (kh == 0) {
      seg_mma<T, BITS, GS, MT, 1, BITS, 0, 0, BITS, 1, 0, 2>(acc, w, sb, xf);
    } else {
      seg_mma<T, BITS, GS, MT, 1, BITS, 0, 0, BITS, 1, 2, 2>(acc, w, sb, xf);
    }
  }
  cp_async_wait<0>();
  if constexpr (KS == 2) {
    // The second half's partial sums, through the (now idle) activation stages.
    float* red = reinterpret_cast<float*>(xs);
    float* flat = &acc[0][0][0];
    __syncthreads();
    if (kh == 1) {
#pragma unroll
      for (int i = 0; i < MT * 4; ++i) {
        red[(i * kTiledWarps + tile) * 32 + lane] = flat[i];
      }
    }
    __syncthreads();
    if (kh == 1) {
      return;
    }
#pragma unroll
    for (int i = 0; i < MT * 4; ++i) {
      flat[i] += red[(i * kTiledWarps + tile) * 32 + lane];
    }
  }

  if (ro.live) {
    // Units the staged loop did not cover (k % kTiledCodes, or everything
    // when rows are not aligned for cp.async), activations from memory.
    const uint32_t* wrow[2];
    const T* srow[2];
    const T* brow[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = min(n0 + g + 8 * r, p.n - 1);
      wrow[r] = wb + row * kw;
      srow[r] = sc + int64_t(row) * kg;
      brow[r] = bi + int64_t(row) * kg;
    }
    const T* xr[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      xr[mt] = xb + int64_t(min(m0 + mt * 8 + g, p.m - 1)) * p.k;
    }
    tail_mma<T, BITS, GS, MT, 1>(
        acc, wrow, srow, brow, xr, nchunks * (CC / 32), units, 0, 1, t);
  }

  T* out = static_cast<T*>(p.out) + int64_t(z) * p.out_batch;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = n0 + g + (i >= 2 ? 8 : 0);
      const int m = m0 + mt * 8 + 2 * t + (i & 1);
      if (n < p.n && m < p.m) {
        out[int64_t(m) * p.n + n] = from_float<T>(acc[0][mt][i]);
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
