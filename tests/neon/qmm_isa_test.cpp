// Standalone test of jang's CPU matmul kernels on raw pointers, no MLX: every
// SIMD instruction set this build has and this CPU runs (NEON on aarch64,
// AVX2 / AVX-512 on x86-64) against the scalar reference kernel, and the
// scalar kernel against a float64 dequantize-then-matmul reference; plus the
// fp16/bf16 row conversions and the runtime choice of instruction set.
//
// Built by tests/test_neon_kernels.py with a cross compiler and run under
// qemu-aarch64 (the project has no ARM machine), together with
// csrc/cpu/{cpu_features,qmm_scalar,qmm_neon}.cpp. Prints one line per
// failure and a summary; exits non-zero on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "cpu/acts.h"
#include "cpu/qmm.h"
#include "jang/affine.h"

using namespace jang;
using cpu::ElemType;
using cpu::Isa;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 40) {
      std::printf("FAIL %s\n", what.c_str());
    }
  }
}

std::vector<const Isa*> simd_isas() {
  std::vector<const Isa*> out;
#if defined(__aarch64__)
  out.push_back(&cpu::isa_neon());
#elif defined(__x86_64__) && defined(JANG_TEST_X86_SIMD)
  const std::string level = cpu::simd_level();
  if (level == "avx2" || level == "avx512") {
    out.push_back(&cpu::isa_avx2());
  }
  if (level == "avx512") {
    out.push_back(&cpu::isa_avx512());
  }
#endif
  return out;
}

const char* type_name(ElemType t) {
  return t == ElemType::f32 ? "f32" : t == ElemType::f16 ? "f16" : "bf16";
}

// A quantized matrix with padded rows (row strides larger than the row), its
// scales and biases stored as `sb` and decoded back to fp32 for the reference.
struct Matrix {
  int bits, group_size;
  int64_t n, k, groups, w_stride, sb_stride;
  ElemType sb;
  std::vector<uint32_t> w;
  std::vector<uint16_t> sb16; // scales then biases, when sb is f16 / bf16
  std::vector<float> sb32;    // scales then biases, when sb is f32
  std::vector<float> s, b;    // decoded, for the reference

  const void* scales() const {
    return sb == ElemType::f32 ? static_cast<const void*>(sb32.data())
                               : static_cast<const void*>(sb16.data());
  }
  const void* biases() const {
    const int64_t off = n * sb_stride;
    return sb == ElemType::f32 ? static_cast<const void*>(sb32.data() + off)
                               : static_cast<const void*>(sb16.data() + off);
  }
};

Matrix make_matrix(
    std::mt19937& rng,
    int bits,
    int group_size,
    int64_t n,
    int64_t k,
    ElemType sb) {
  Matrix a{};
  a.bits = bits;
  a.group_size = group_size;
  a.n = n;
  a.k = k;
  a.groups = k / group_size;
  a.w_stride = k * bits / 32 + 3;
  a.sb_stride = a.groups + 1;
  a.sb = sb;
  a.w.resize(n * a.w_stride);
  for (auto& v : a.w) {
    v = static_cast<uint32_t>(rng());
  }
  std::uniform_real_distribution<float> sd(0.001f, 0.05f), bd(-0.5f, 0.5f);
  std::vector<float> raw(2 * n * a.sb_stride);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < a.sb_stride; ++g) {
      raw[r * a.sb_stride + g] = sd(rng);
      raw[(n + r) * a.sb_stride + g] = bd(rng);
    }
  }
  const Isa& ref = cpu::isa_scalar();
  if (sb == ElemType::f32) {
    a.sb32 = raw;
  } else {
    a.sb16.resize(raw.size());
    ref.from_f32(raw.data(), sb, raw.size(), a.sb16.data());
  }
  // Decoded values, exactly as the kernels see them.
  std::vector<float> dec(raw.size());
  if (sb == ElemType::f32) {
    dec = raw;
  } else {
    ref.to_f32(a.sb16.data(), sb, raw.size(), 1, dec.data());
  }
  a.s.assign(dec.begin(), dec.begin() + n * a.sb_stride);
  a.b.assign(dec.begin() + n * a.sb_stride, dec.end());
  return a;
}

// The weight words in memory that ends exactly where the last row ends, with
// an inaccessible page after it: a kernel that reads past the row (a full
// vector load on a partial last block) faults instead of passing.
class GuardedWords {
public:
  explicit GuardedWords(const Matrix& a) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t used =
        ((a.n - 1) * a.w_stride + a.k * a.bits / 32) * sizeof(uint32_t);
    const size_t data_pages = (used + page - 1) / page;
    size_ = (data_pages + 1) * page;
    void* p = mmap(
        nullptr,
        size_,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS,
        -1,
        0);
    if (p == MAP_FAILED) {
      throw std::runtime_error("mmap failed");
    }
    base_ = static_cast<char*>(p);
    if (mprotect(base_ + data_pages * page, page, PROT_NONE) != 0) {
      throw std::runtime_error("mprotect failed");
    }
    words_ = reinterpret_cast<uint32_t*>(base_ + data_pages * page - used);
    std::memcpy(words_, a.w.data(), used);
  }
  ~GuardedWords() {
    munmap(base_, size_);
  }
  GuardedWords(const GuardedWords&) = delete;
  GuardedWords& operator=(const GuardedWords&) = delete;
  const uint32_t* words() const {
    return words_;
  }

private:
  char* base_ = nullptr;
  size_t size_ = 0;
  uint32_t* words_ = nullptr;
};

// out[m][n] through one instruction set, output rows split in two calls (as
// the thread pool splits them).
std::vector<float>
run_qmm(const Isa& isa, const Matrix& a, const std::vector<float>& x, int m) {
  const int codes = 32 / affine::gcd32(a.bits);
  const int64_t kp = cpu::padded_k(a.k, isa.lanes, codes);
  const int64_t gp = cpu::padded_groups(a.groups);
  // Garbage, not zeros, so the packing must write every padded value itself.
  std::vector<float> xp(m * kp, 12345.0f), xs(m * gp, -777.0f);
  std::vector<float> out(static_cast<size_t>(m) * a.n, 0.0f);
  std::vector<const float*> xr(m), sr(m);
  std::vector<float*> orow(m);
  for (int i = 0; i < m; ++i) {
    cpu::pack_activation_row(
        x.data() + i * a.k,
        a.k,
        isa.lanes,
        a.bits,
        a.group_size,
        xp.data() + i * kp,
        xs.data() + i * gp);
    xr[i] = xp.data() + i * kp;
    sr[i] = xs.data() + i * gp;
    orow[i] = out.data() + i * a.n;
  }
  const GuardedWords guarded(a);
  cpu::QmmArgs args{};
  args.bits = a.bits;
  args.group_size = a.group_size;
  args.k = a.k;
  args.w = guarded.words();
  args.w_stride = a.w_stride;
  args.scales = a.scales();
  args.biases = a.biases();
  args.s_stride = a.sb_stride;
  args.b_stride = a.sb_stride;
  args.sb_type = a.sb;
  args.m = m;
  args.x = xr.data();
  args.xsum = sr.data();
  args.out = orow.data();
  const int64_t half = a.n / 2 + 1;
  isa.qmm(args, 0, half);
  isa.qmm(args, half, a.n);
  return out;
}

void test_qmm(int bits, int group_size, int m, ElemType sb, uint32_t seed) {
  std::mt19937 rng(seed);
  // K: an odd number of groups, so most widths end in a partial SIMD block,
  // and long enough for the small-M path's K blocking to make several passes.
  const int64_t k = group_size * (group_size == 32   ? 35
                                  : group_size == 64 ? 17
                                                     : 9);
  const int64_t n = 37;
  const Matrix a = make_matrix(rng, bits, group_size, n, k, sb);
  std::vector<float> x(m * k);
  std::normal_distribution<float> xd(0.0f, 1.0f);
  for (auto& v : x) {
    v = xd(rng);
  }
  // float64 reference and the scale of each output (sum of |terms|).
  std::vector<double> ref(m * n), mag(m * n);
  for (int64_t r = 0; r < n; ++r) {
    const uint32_t* words = a.w.data() + r * a.w_stride;
    for (int i = 0; i < m; ++i) {
      double acc = 0.0, absacc = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        const int64_t g = c / group_size;
        uint32_t q = 0;
        switch (bits) {
        case 2:
          q = affine::code_at<2>(words, c);
          break;
        case 3:
          q = affine::code_at<3>(words, c);
          break;
        case 4:
          q = affine::code_at<4>(words, c);
          break;
        case 5:
          q = affine::code_at<5>(words, c);
          break;
        case 6:
          q = affine::code_at<6>(words, c);
          break;
        default:
          q = affine::code_at<8>(words, c);
          break;
        }
        const double wv = static_cast<double>(a.s[r * a.sb_stride + g]) * q +
                          a.b[r * a.sb_stride + g];
        const double t = static_cast<double>(x[i * k + c]) * wv;
        acc += t;
        absacc += std::fabs(t);
      }
      ref[i * n + r] = acc;
      mag[i * n + r] = absacc;
    }
  }
  const auto scalar = run_qmm(cpu::isa_scalar(), a, x, m);
  char tag[160];
  std::snprintf(
      tag,
      sizeof(tag),
      "bits=%d gs=%d m=%d k=%lld n=%lld sb=%s",
      bits,
      group_size,
      m,
      static_cast<long long>(k),
      static_cast<long long>(n),
      type_name(sb));
  for (int64_t i = 0; i < m * n; ++i) {
    const double err = std::fabs(scalar[i] - ref[i]);
    if (!(err <= 2e-6 * mag[i])) {
      check(
          false,
          std::string("scalar vs float64 ") + tag + " at " + std::to_string(i) +
              ": " + std::to_string(scalar[i]) + " vs " +
              std::to_string(ref[i]));
      break;
    }
  }
  check(true, tag);
  for (const Isa* isa : simd_isas()) {
    const auto out = run_qmm(*isa, a, x, m);
    bool ok = true;
    for (int64_t i = 0; i < m * n && ok; ++i) {
      // Only the summation order differs from the scalar kernel.
      const double err = std::fabs(static_cast<double>(out[i]) - scalar[i]);
      if (!(err <= 1e-6 * mag[i])) {
        check(
            false,
            std::string(isa->name) + " vs scalar " + tag + " at " +
                std::to_string(i) + ": " + std::to_string(out[i]) + " vs " +
                std::to_string(scalar[i]));
        ok = false;
      }
    }
    check(ok, tag);
  }
}

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b);
  }
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

bool same_half(uint16_t a, uint16_t b, ElemType t) {
  const bool nan_a =
      t == ElemType::f16 ? (a & 0x7fff) > 0x7c00 : (a & 0x7fff) > 0x7f80;
  const bool nan_b =
      t == ElemType::f16 ? (b & 0x7fff) > 0x7c00 : (b & 0x7fff) > 0x7f80;
  return nan_a || nan_b ? nan_a == nan_b : a == b;
}

void test_conversions() {
  const Isa& ref = cpu::isa_scalar();
  // Every 16-bit pattern, at an odd length (vector body plus tail), and a
  // strided read.
  std::vector<uint16_t> all(65536 + 3);
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = static_cast<uint16_t>(i * 40503u);
  }
  std::mt19937 rng(7);
  std::vector<float> vals;
  for (float v :
       {0.0f,
        -0.0f,
        1.0f,
        -1.5f,
        65504.0f,
        65519.0f,
        65520.0f,
        1e-8f,
        5.96e-8f,
        2.98e-8f,
        6.1e-5f,
        3.0e38f,
        INFINITY,
        -INFINITY,
        NAN}) {
    vals.push_back(v);
  }
  std::uniform_int_distribution<uint32_t> bitsd;
  while (vals.size() < 4099) {
    const uint32_t u = bitsd(rng);
    float f;
    std::memcpy(&f, &u, 4);
    vals.push_back(f);
    vals.push_back(f * 1e-30f);
    vals.push_back(std::ldexp(f, -100));
  }
  for (const Isa* isa : simd_isas()) {
    for (ElemType t : {ElemType::f16, ElemType::bf16}) {
      const std::string tag = std::string(isa->name) + " " + type_name(t);
      for (int64_t stride : {1, 3}) {
        const int64_t n = static_cast<int64_t>(all.size()) / stride;
        std::vector<float> a(n), b(n);
        isa->to_f32(all.data(), t, n, stride, a.data());
        ref.to_f32(all.data(), t, n, stride, b.data());
        bool ok = true;
        for (int64_t i = 0; i < n && ok; ++i) {
          ok = same_float(a[i], b[i]);
        }
        check(ok, tag + " to_f32 stride " + std::to_string(stride));
      }
      for (int64_t n : {static_cast<int64_t>(vals.size()), int64_t{3}}) {
        std::vector<uint16_t> a(n), b(n);
        isa->from_f32(vals.data(), t, n, a.data());
        ref.from_f32(vals.data(), t, n, b.data());
        bool ok = true;
        for (int64_t i = 0; i < n && ok; ++i) {
          ok = same_half(a[i], b[i], t);
          if (!ok) {
            std::printf(
                "  %s from_f32(%a) = %04x, scalar %04x\n",
                tag.c_str(),
                vals[i],
                a[i],
                b[i]);
          }
        }
        check(ok, tag + " from_f32 n " + std::to_string(n));
      }
    }
  }
}

void test_dispatch() {
  const std::string level = cpu::simd_level();
#if defined(__aarch64__)
  check(level == "neon", "simd_level() on aarch64 is neon, got " + level);
  cpu::set_isa("auto");
  check(
      std::string(cpu::active_isa().name) == "neon",
      "auto picks neon on aarch64");
  check(cpu::active_isa().lanes == 4, "neon has 4 lanes");
  cpu::set_isa("scalar");
  check(std::string(cpu::active_isa().name) == "scalar", "scalar selectable");
  check(std::string(cpu::set_isa("neon")) == "scalar", "set_isa returns old");
  check(std::string(cpu::active_isa().name) == "neon", "neon selectable");
#endif
  bool threw = false;
  try {
    cpu::set_isa("sse9");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "unknown name throws");
  cpu::set_isa("auto");
  std::printf(
      "simd level %s, auto isa %s\n", level.c_str(), cpu::active_isa().name);
}

} // namespace

int main() {
  test_dispatch();
  test_conversions();
  uint32_t seed = 1;
  const ElemType sbs[] = {ElemType::f16, ElemType::bf16, ElemType::f32};
  int cases = 0;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int gs : {32, 64, 128}) {
      for (int m : {1, 5, 16}) {
        test_qmm(bits, gs, m, sbs[seed % 3], seed);
        ++seed;
        ++cases;
      }
    }
  }
  std::string names = "scalar";
  for (const Isa* isa : simd_isas()) {
    names += std::string(" ") + isa->name;
  }
  std::printf(
      "isas: %s; %d qmm cases; %d checks, %d failures\n",
      names.c_str(),
      cases,
      g_checks,
      g_failures);
  return g_failures == 0 ? 0 : 1;
}
