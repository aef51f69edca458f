// The quantized matmul kernel, written once over a small SIMD abstraction `V`
// and compiled once per instruction set (qmm_scalar.cpp, qmm_avx2.cpp,
// qmm_avx512.cpp, qmm_neon.cpp). Each of those files defines JANG_ISA (a
// namespace name) and the struct V inside namespace jang::cpu::JANG_ISA, then
// includes this file, so every function here is distinct per instruction set
// (no inline function compiled with AVX-512 can be picked by the linker for the
// scalar path).
//
// V provides: L (lanes), F (float vector), I (uint32 vector), zero(),
// set1(float), loadu / storeu, fma(a, b, c) = a*b + c, add, mul, hsum,
// load_words(p) (L consecutive words), load_words_partial(p, count) (the
// first count words, zeros after), load_lanes<S>(p, out) (out[w] lane j =
// p[j*S + w], reading exactly L*S words),
// srli<S>, slli<S>, and_mask<M>, or_, cvt (uint32 -> float, values < 2^24),
// expand(p, idx) (lane j = p[idx[j]]), make_expand_index(ppg) (idx[j] = j/ppg),
// to_f32 / from_f32 (row conversions).
//
// Blocking: a block is L packs of one weight row; lane j holds pack j, so code
// t of every pack is one shift-and-mask away (affine::Field). Activations are
// pre-permuted to match (see qmm.h). Per block each lane's pack dot product is
// scaled by its group's scale; the bias term is b . xsum once per row.
#ifndef JANG_ISA
#error "define JANG_ISA and V before including qmm_kernel.h"
#endif

namespace jang::cpu::JANG_ISA {

template <int N, class Fn>
inline __attribute__((always_inline)) void static_for(Fn&& fn) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (fn(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

template <int BITS, int T>
inline __attribute__((always_inline)) typename V::I
extract(const typename V::I* lw) {
  using Fd = affine::Field<BITS, T>;
  typename V::I v = lw[Fd::word];
  if constexpr (Fd::in_place) {
    // q << shift; the matching activation is pre-scaled by 2^-shift.
    return V::template and_mask<(affine::Pack<BITS>::mask << Fd::shift)>(v);
  }
  if constexpr (Fd::shift != 0) {
    v = V::template srli<Fd::shift>(v);
  }
  if constexpr (Fd::crosses) {
    v = V::or_(v, V::template slli<32 - Fd::shift>(lw[Fd::word + 1]));
  }
  if constexpr (Fd::needs_mask) {
    v = V::template and_mask<affine::Pack<BITS>::mask>(v);
  }
  return v;
}

// Rows [n0, n1) for activation rows [m0, m0 + MT), over blocks [b0, b1) of
// the row. With more than one pass over a row (K blocking), the vector
// accumulators of each (row, activation row) live in `accbuf` between passes;
// the last pass adds the bias term and writes the output.
template <int BITS, int MT>
void qmm_tile(
    const QmmArgs& a,
    int m0,
    int64_t n0,
    int64_t n1,
    int64_t b0,
    int64_t b1,
    float* accbuf,
    float* sf,
    float* bf) {
  using P = affine::Pack<BITS>;
  constexpr int L = V::L;
  constexpr int C = P::codes;
  constexpr int WD = P::words;
  constexpr int LC = L * C;
  // Independent FMA chains per activation row, so few rows still fill the
  // FMA pipelines (latency 4, two ports).
  constexpr int NC = MT >= 4 ? 1 : 4 / MT;
  using F = typename V::F;
  using I = typename V::I;

  const int64_t groups = a.k / a.group_size;
  const int64_t gpad = padded_groups(groups);
  const int64_t full_blocks = a.k / LC;
  const int64_t blocks = padded_k(a.k, L, C) / LC;
  const bool first = b0 == 0;
  const bool last = b1 == blocks;
  const int tail_packs = static_cast<int>((a.k - full_blocks * LC) / C);
  const int ppg = a.group_size / C; // packs per group
  const auto expand_idx = V::make_expand_index(ppg < L ? ppg : 1);
  // Groups this pass touches.
  const int64_t g_lo = b0 * LC / a.group_size;
  const int64_t g_hi =
      std::min<int64_t>(groups, (b1 * LC + a.group_size - 1) / a.group_size);

  const float* xr[MT];
  const float* xs[MT];
  for (int i = 0; i < MT; ++i) {
    xr[i] = a.x[m0 + i];
    xs[i] = a.xsum[m0 + i];
  }
  alignas(64) uint32_t tail_words[L * WD];
  const int64_t esize = a.sb_type == ElemType::f32 ? 4 : 2;
  const char* srow = static_cast<const char*>(a.scales);
  const char* brow = static_cast<const char*>(a.biases);

  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* wr = a.w + n * a.w_stride;
    V::to_f32(
        srow + (n * a.s_stride + g_lo) * esize,
        a.sb_type,
        g_hi - g_lo,
        1,
        sf + g_lo);
    float* accp = accbuf ? accbuf + (n - n0) * MT * L : nullptr;

    F acc[MT];
    for (int i = 0; i < MT; ++i) {
      acc[i] = first ? V::zero() : V::loadu(accp + i * L);
    }
    for (int64_t blk = b0; blk < b1; ++blk) {
      const uint32_t* wp = wr + blk * (L * WD);
      I lw[WD];
      if (blk == full_blocks) {
        // Tail: the row ends after tail_packs packs; missing lanes read zeros.
        if constexpr (WD == 1) {
          lw[0] = V::load_words_partial(wp, tail_packs);
        } else {
          __builtin_memset(tail_words, 0, sizeof(tail_words));
          __builtin_memcpy(tail_words, wp, tail_packs * WD * sizeof(uint32_t));
          V::template load_lanes<WD>(tail_words, lw);
        }
      } else if constexpr (WD == 1) {
        lw[0] = V::load_words(wp);
      } else {
        V::template load_lanes<WD>(wp, lw);
      }
      const int64_t pack0 = blk * L;
      const F sl = ppg >= L ? V::set1(sf[pack0 / ppg])
                            : V::expand(sf + pack0 / ppg, expand_idx);
      const int64_t xo = blk * LC;
      if constexpr (MT <= 4) {
        // Few rows: accumulate unscaled pack dots, scale once per block.
        F part[MT][NC];
        for (int i = 0; i < MT; ++i) {
          for (int c = 0; c < NC; ++c) {
            part[i][c] = V::zero();
          }
        }
        static_for<C>([&](auto t) {
          const F q = V::cvt(extract<BITS, t>(lw));
          for (int i = 0; i < MT; ++i) {
            part[i][t % NC] =
                V::fma(V::loadu(xr[i] + xo + t * L), q, part[i][t % NC]);
          }
        });
        for (int i = 0; i < MT; ++i) {
          F sum = part[i][0];
          for (int c = 1; c < NC; ++c) {
            sum = V::add(sum, part[i][c]);
          }
          acc[i] = V::fma(sum, sl, acc[i]);
        }
      } else {
        // Many rows: scale the codes once, reuse them for every row.
        static_for<C>([&](auto t) {
          const F q = V::mul(V::cvt(extract<BITS, t>(lw)), sl);
          for (int i = 0; i < MT; ++i) {
            acc[i] = V::fma(V::loadu(xr[i] + xo + t * L), q, acc[i]);
          }
        });
      }
    }
    if (!last) {
      for (int i = 0; i < MT; ++i) {
        V::storeu(accp + i * L, acc[i]);
      }
      continue;
    }
    // Bias term: b . xsum over the (zero-padded) groups.
    V::to_f32(brow + n * a.b_stride * esize, a.sb_type, groups, 1, bf);
    for (int i = 0; i < MT; ++i) {
      F bacc = acc[i];
      for (int64_t g = 0; g < gpad; g += L) {
        bacc = V::fma(V::loadu(bf + g), V::loadu(xs[i] + g), bacc);
      }
      a.out[m0 + i][n] = V::hsum(bacc);
    }
  }
}

template <int BITS, int MT>
void qmm_pass(
    const QmmArgs& a, int m0, int64_t c0, int64_t c1, float* sf, float* bf) {
  constexpr int LC = V::L * affine::Pack<BITS>::codes;
  const int64_t blocks = padded_k(a.k, V::L, affine::Pack<BITS>::codes) / LC;
  // K blocking: the slice of MT activation rows one pass reads stays in L1.
  const int64_t kb = std::max<int64_t>(1, (24 << 10) / (MT * 4 * LC));
  if (blocks <= kb || MT == 1) {
    qmm_tile<BITS, MT>(a, m0, c0, c1, 0, blocks, nullptr, sf, bf);
    return;
  }
  const size_t bytes = ((c1 - c0) * MT * V::L * sizeof(float) + 63) / 64 * 64;
  float* accbuf = static_cast<float*>(std::aligned_alloc(64, bytes));
  for (int64_t b0 = 0; b0 < blocks; b0 += kb) {
    qmm_tile<BITS, MT>(
        a, m0, c0, c1, b0, std::min(blocks, b0 + kb), accbuf, sf, bf);
  }
  std::free(accbuf);
}

template <int BITS> void qmm_bits(const QmmArgs& a, int64_t n0, int64_t n1) {
  const int64_t groups = a.k / a.group_size;
  // Scales and biases of one row in fp32, padded so that block reads past the
  // last group see zeros.
  const int64_t buf = padded_groups(groups) + 2 * V::L;
  float* sf = static_cast<float*>(__builtin_alloca(2 * buf * sizeof(float)));
  float* bf = sf + buf;
  for (int64_t i = 0; i < 2 * buf; ++i) {
    sf[i] = 0.0f;
  }
  // Cache blocking: a chunk of weight rows stays in L2 while every tile of
  // activation rows passes over it, so memory sees each weight byte once.
  const int64_t row_bytes = a.k * BITS / 8 + 1;
  const int64_t chunk =
      a.m <= 1 ? (n1 - n0) : std::max<int64_t>(4, (128 << 10) / row_bytes);
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    int m0 = 0;
    while (m0 < a.m) {
      const int rem = a.m - m0;
      if (V::kMaxTile >= 16 && rem >= 16) {
        qmm_pass<BITS, (V::kMaxTile >= 16 ? 16 : 8)>(a, m0, c0, c1, sf, bf);
        m0 += V::kMaxTile >= 16 ? 16 : 8;
      } else if (rem >= 8) {
        qmm_pass<BITS, 8>(a, m0, c0, c1, sf, bf);
        m0 += 8;
      } else if (rem >= 4) {
        qmm_pass<BITS, 4>(a, m0, c0, c1, sf, bf);
        m0 += 4;
      } else if (rem >= 2) {
        qmm_pass<BITS, 2>(a, m0, c0, c1, sf, bf);
        m0 += 2;
      } else {
        qmm_pass<BITS, 1>(a, m0, c0, c1, sf, bf);
        m0 += 1;
      }
    }
  }
}

inline void qmm(const QmmArgs& a, int64_t n0, int64_t n1) {
  affine::with_bits(
      a.bits,
      [&](auto b) { qmm_bits<decltype(b)::value>(a, n0, n1); },
      [] {});
}

} // namespace jang::cpu::JANG_ISA
