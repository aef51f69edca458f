// A CPU emulation of Metal's execution model, for running jang's shaders on
// Linux. The .metal sources are compiled unchanged as C++20 by clang with
// include/ first on the include path, so `#include <metal_stdlib>` lands here.
//
// What it maps:
// * address spaces (device, constant, thread) to nothing, threadgroup to
//   volatile (see the #define at the end);
// * argument attributes ([[buffer(n)]], [[threadgroup(n)]], positions): clang
//   ignores them; the driver (emulator.py) reads them from the source and
//   emits a table binding each parameter, which invoke() below uses;
// * vector types with swizzles (clang ext_vector_type), half and bfloat as
//   storage types converting to float with round-to-nearest-even;
// * metal:: math, as_type, mem_flags, threadgroup_barrier, simdgroup_barrier,
//   simd_sum / simd_max / simd_min / simd_prefix_{ex,in}clusive_sum /
//   simd_shuffle* / simd_broadcast with 32-wide SIMD groups;
// * 8x8 float simdgroup matrices (load, store, multiply-accumulate) as
//   SIMD-group operations (see "simdgroup matrices" below).
//
// Execution: every thread of a threadgroup is a real thread. The threads of a
// threadgroup run one at a time, each until it blocks at a barrier or a SIMD
// operation (or returns), in an order chosen per launch: ascending thread
// index, descending, or a seeded shuffle. A kernel that lacks a barrier it
// needs therefore reads stale or poisoned threadgroup memory deterministically
// instead of by luck. Threadgroups run one after another over the grid;
// threadgroup memory is filled with 0xFF bytes (NaN) before each. A barrier
// that not every thread reaches, or SIMD operations that lanes reach in a
// different order, is reported as an error (a hang or undefined behaviour on
// a GPU).
#pragma once

#include <pthread.h>
#include <semaphore.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define JANG_METAL_EMU 1

// ------------------------------------------------------------- types -----

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong; // 64-bit, as in Metal

#define JANG_EMU_VEC(T, N) T __attribute__((ext_vector_type(N)))
typedef JANG_EMU_VEC(float, 2) float2;
typedef JANG_EMU_VEC(float, 3) float3;
typedef JANG_EMU_VEC(float, 4) float4;
typedef JANG_EMU_VEC(uint, 2) uint2;
typedef JANG_EMU_VEC(uint, 3) uint3;
typedef JANG_EMU_VEC(uint, 4) uint4;
typedef JANG_EMU_VEC(int, 2) int2;
typedef JANG_EMU_VEC(int, 3) int3;
typedef JANG_EMU_VEC(int, 4) int4;
typedef JANG_EMU_VEC(ushort, 2) ushort2;
typedef JANG_EMU_VEC(ushort, 3) ushort3;
typedef JANG_EMU_VEC(ushort, 4) ushort4;
typedef JANG_EMU_VEC(ulong, 2) ulong2;
#undef JANG_EMU_VEC

namespace jang_emu {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float -> IEEE binary16, round to nearest even (NaN stays NaN).
inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  }
  if (ax >= 0x477ff000u) { // rounds to >= 65520: overflow
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (ax < 0x38800000u) { // subnormal half (or zero)
    const float a = bits_f32(ax) * 16777216.0f; // * 2^24: the half ulp is 1
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a)));
  }
  uint32_t m = ax - 0x38000000u; // rebias exponent 127 -> 15
  m += 0xfffu + ((m >> 13) & 1u);
  return static_cast<uint16_t>(sign | (m >> 13));
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f; // 2^-24
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) {
    return bits_f32(sign | 0x7f800000u | (m << 13));
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

} // namespace jang_emu

// 16-bit floats are storage types here: arithmetic happens in float, which is
// what the shaders do anyway (they convert on load and round on store).
struct half {
  uint16_t bits;
  half() = default;
  half(float f) : bits(jang_emu::f32_to_f16(f)) {}
  half(double f) : half(static_cast<float>(f)) {}
  half(int i) : half(static_cast<float>(i)) {}
  half(uint i) : half(static_cast<float>(i)) {}
  operator float() const {
    return jang_emu::f16_to_f32(bits);
  }
};

struct bfloat {
  uint16_t bits;
  bfloat() = default;
  bfloat(float f) : bits(jang_emu::f32_to_bf16(f)) {}
  bfloat(double f) : bfloat(static_cast<float>(f)) {}
  bfloat(int i) : bfloat(static_cast<float>(i)) {}
  bfloat(uint i) : bfloat(static_cast<float>(i)) {}
  operator float() const {
    return jang_emu::bits_f32(static_cast<uint32_t>(bits) << 16);
  }
};
static_assert(sizeof(half) == 2 && sizeof(bfloat) == 2);

// ------------------------------------------------------ metal:: library -----

namespace metal {

enum class mem_flags : int {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
};

template <typename To, typename From>
inline To as_type(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

using std::abs;
using std::ceil;
using std::cos;
using std::exp;
using std::exp2;
using std::floor;
using std::isinf;
using std::isnan;
using std::log;
using std::log2;
using std::pow;
using std::round;
using std::sin;
using std::sqrt;
using std::tanh;

template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
inline float fma(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline float rsqrt(float a) {
  return 1.0f / std::sqrt(a);
}
template <typename T>
inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}

namespace fast {
using std::exp;
using std::log;
inline float rsqrt(float a) {
  return 1.0f / std::sqrt(a);
}
} // namespace fast

namespace precise {
using std::exp;
using std::log;
} // namespace precise

void threadgroup_barrier(mem_flags flags);
void simdgroup_barrier(mem_flags flags);

} // namespace metal

// ------------------------------------------------------------ runtime -----

namespace jang_emu {

constexpr int kSimdWidth = 32;

struct Abort {}; // unwinds emulated threads after an error

// What a kernel parameter is bound to (emitted by the driver from the
// source's attributes).
enum class Bind : int {
  buffer,
  threadgroup,
  thread_position_in_grid,
  thread_position_in_threadgroup,
  threadgroup_position_in_grid,
  threads_per_threadgroup,
  threadgroups_per_grid,
  threads_per_grid,
  thread_index_in_threadgroup,
  thread_index_in_simdgroup,
  simdgroup_index_in_threadgroup,
  simdgroups_per_threadgroup,
  threads_per_simdgroup,
};

struct Param {
  Bind kind;
  int index;
};

struct Launch;

// A meeting point: a threadgroup barrier, one SIMD group's next SIMD
// operation, or the end of a threadgroup.
struct Rendezvous {
  int expected = 0;
  int arrived = 0;
  int op = 0; // SIMD operation code of the first lane to arrive
  const char* what = "";
};

enum class State { runnable, waiting, done };

struct Thread {
  Launch* launch;
  int index; // linear index in the threadgroup
  State state = State::runnable;
  Rendezvous* waiting_on = nullptr;
  sem_t sem;
  uint3 tpos{}; // position in threadgroup
  uint3 tgpos{};
  // SIMD exchange slots
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
  int arg = 0;
};

struct Launch {
  void** buffers = nullptr;
  int nbuffers = 0;
  std::vector<std::vector<unsigned char>> tgmem;
  uint3 groups{};
  uint3 tg{};
  int nthreads = 0;
  std::vector<Thread> threads;
  std::vector<int> order; // scheduling priority
  Rendezvous barrier;
  Rendezvous tg_end;
  std::vector<Rendezvous> simd;
  bool aborted = false;
  std::string error;
  sem_t finished;
  std::function<void(Thread&)> body;
};

inline thread_local Thread* g_self = nullptr;

inline int simd_size_of(const Launch& l, int sid) {
  return std::min(kSimdWidth, l.nthreads - sid * kSimdWidth);
}

[[noreturn]] inline void fail(Launch& l, const std::string& msg) {
  if (!l.aborted) {
    l.aborted = true;
    l.error = msg;
    for (auto& t : l.threads) {
      if (&t != g_self) {
        sem_post(&t.sem);
      }
    }
    sem_post(&l.finished);
  }
  throw Abort{};
}

inline std::string where(const Thread& t) {
  return "thread " + std::to_string(t.index) + " of threadgroup (" +
      std::to_string(t.tgpos.x) + ", " + std::to_string(t.tgpos.y) + ", " +
      std::to_string(t.tgpos.z) + ")";
}

// Hand the baton to the first runnable thread in priority order and wait
// until it comes back. The caller holds the baton.
inline void yield(Thread& self) {
  Launch& l = *self.launch;
  int next = -1;
  for (int i : l.order) {
    if (l.threads[i].state == State::runnable) {
      next = i;
      break;
    }
  }
  if (next < 0) {
    bool all_done = true;
    std::string blocked;
    for (auto& t : l.threads) {
      if (t.state != State::done) {
        all_done = false;
        if (blocked.empty()) {
          blocked = where(t) + " waits at " + t.waiting_on->what;
        }
      }
    }
    if (all_done) {
      sem_post(&l.finished);
      return;
    }
    fail(
        l,
        "deadlock: " + blocked +
            " that the other threads never reach (divergent barrier or SIMD "
            "operation)");
  }
  if (next == self.index) {
    return;
  }
  sem_post(&l.threads[next].sem);
  if (self.state == State::done) {
    return;
  }
  sem_wait(&self.sem);
  if (l.aborted) {
    throw Abort{};
  }
}

// Arrive at `r`; `complete` runs once, in the last thread to arrive, before
// any participant continues.
template <typename F>
inline void arrive(Thread& self, Rendezvous& r, int op, F&& complete) {
  Launch& l = *self.launch;
  if (r.arrived == 0) {
    r.op = op;
  } else if (r.op != op) {
    fail(
        l,
        where(self) + " reached a different " + r.what +
            " than other threads of its group (divergent control flow)");
  }
  self.waiting_on = &r;
  self.state = State::waiting;
  if (++r.arrived == r.expected) {
    complete();
    r.arrived = 0;
    for (auto& t : l.threads) {
      if (t.waiting_on == &r && t.state == State::waiting) {
        t.state = State::runnable;
        t.waiting_on = nullptr;
      }
    }
  }
  yield(self);
}

inline Rendezvous& simd_of(Thread& t) {
  return t.launch->simd[t.index / kSimdWidth];
}

// One SIMD-group operation: every lane deposits `v` (and an argument), the
// last lane computes out[] for all lanes with `combine`.
template <typename T, typename Combine>
inline T simd_op(int op, T v, int arg, Combine&& combine) {
  static_assert(sizeof(T) <= 16);
  Thread& self = *g_self;
  Launch& l = *self.launch;
  const int sid = self.index / kSimdWidth;
  const int n = simd_size_of(l, sid);
  Thread* lanes = &l.threads[sid * kSimdWidth];
  std::memcpy(self.in, &v, sizeof(T));
  self.arg = arg;
  arrive(self, simd_of(self), op, [&] {
    T vals[kSimdWidth];
    for (int i = 0; i < n; ++i) {
      std::memcpy(&vals[i], lanes[i].in, sizeof(T));
    }
    for (int i = 0; i < n; ++i) {
      const T r = combine(vals, n, i, lanes[i].arg);
      std::memcpy(lanes[i].out, &r, sizeof(T));
    }
  });
  T r;
  std::memcpy(&r, self.out, sizeof(T));
  return r;
}

// Each new kernel instantiation registers how to call it.
struct Kernel {
  std::string function; // template name, key of the parameter table
  std::function<void(const std::vector<Param>&, Thread&)> invoke;
};

inline std::map<std::string, Kernel>& kernels() {
  static std::map<std::string, Kernel> k;
  return k;
}
inline std::map<std::string, std::vector<Param>>& param_tables() {
  static std::map<std::string, std::vector<Param>> t;
  return t;
}

template <typename A>
inline A bind(const Param& p, Thread& t) {
  Launch& l = *t.launch;
  using V = std::remove_cv_t<std::remove_reference_t<A>>;
  if constexpr (std::is_pointer_v<A> || std::is_reference_v<A>) {
    if (p.kind != Bind::buffer && p.kind != Bind::threadgroup) {
      fail(l, "a pointer or reference parameter must be a buffer(n) or threadgroup(n)");
    }
    void* ptr = nullptr;
    if (p.kind == Bind::buffer) {
      if (p.index >= l.nbuffers || l.buffers[p.index] == nullptr) {
        fail(l, "buffer(" + std::to_string(p.index) + ") is not set");
      }
      ptr = l.buffers[p.index];
    } else {
      if (p.index >= static_cast<int>(l.tgmem.size()) ||
          l.tgmem[p.index].empty()) {
        fail(l, "threadgroup(" + std::to_string(p.index) + ") has no memory");
      }
      ptr = l.tgmem[p.index].data();
    }
    if constexpr (std::is_pointer_v<A>) {
      return reinterpret_cast<A>(ptr);
    } else {
      return *reinterpret_cast<std::remove_reference_t<A>*>(ptr);
    }
  } else {
    if (p.kind == Bind::buffer || p.kind == Bind::threadgroup) {
      fail(l, "buffer(n) and threadgroup(n) parameters must be pointers or references");
    }
    uint3 v{};
    const uint3 tg = l.tg;
    switch (p.kind) {
      case Bind::thread_position_in_grid:
        v = t.tgpos * tg + t.tpos;
        break;
      case Bind::thread_position_in_threadgroup:
        v = t.tpos;
        break;
      case Bind::threadgroup_position_in_grid:
        v = t.tgpos;
        break;
      case Bind::threads_per_threadgroup:
        v = tg;
        break;
      case Bind::threadgroups_per_grid:
        v = l.groups;
        break;
      case Bind::threads_per_grid:
        v = l.groups * tg;
        break;
      case Bind::thread_index_in_threadgroup:
        v.x = t.index;
        break;
      case Bind::thread_index_in_simdgroup:
        v.x = t.index % kSimdWidth;
        break;
      case Bind::simdgroup_index_in_threadgroup:
        v.x = t.index / kSimdWidth;
        break;
      case Bind::simdgroups_per_threadgroup:
        v.x = (l.nthreads + kSimdWidth - 1) / kSimdWidth;
        break;
      case Bind::threads_per_simdgroup:
        v.x = kSimdWidth;
        break;
      default:
        break;
    }
    if constexpr (std::is_same_v<V, uint3>) {
      return v;
    } else if constexpr (std::is_same_v<V, uint2>) {
      return v.xy;
    } else if constexpr (std::is_same_v<V, ushort3>) {
      return __builtin_convertvector(v, ushort3);
    } else if constexpr (std::is_same_v<V, ushort2>) {
      return __builtin_convertvector(v.xy, ushort2);
    } else {
      return static_cast<V>(v.x);
    }
  }
}

template <typename... A, size_t... I>
inline void call(
    void (*f)(A...),
    const std::vector<Param>& params,
    Thread& t,
    std::index_sequence<I...>) {
  f(bind<A>(params[I], t)...);
}

template <typename... A>
struct Register {
  Register(const char* name, const char* function, void (*f)(A...)) {
    kernels()[name] = Kernel{
        function, [f, name = std::string(name)](const std::vector<Param>& p, Thread& t) {
          if (p.size() != sizeof...(A)) {
            fail(*t.launch, name + ": parameter table does not match the signature");
          }
          call(f, p, t, std::index_sequence_for<A...>{});
        }};
  }
};

struct ParamTable {
  ParamTable(const char* function, std::vector<Param> params) {
    param_tables()[function] = std::move(params);
  }
};

inline void* thread_main(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Launch& l = *t.launch;
  g_self = &t;
  try {
    sem_wait(&t.sem);
    if (l.aborted) {
      throw Abort{};
    }
    for (uint z = 0; z < l.groups.z; ++z) {
      for (uint y = 0; y < l.groups.y; ++y) {
        for (uint x = 0; x < l.groups.x; ++x) {
          t.tgpos = uint3{x, y, z};
          l.body(t);
          arrive(t, l.tg_end, 0, [&] {
            for (auto& m : l.tgmem) {
              std::fill(m.begin(), m.end(), 0xff);
            }
          });
        }
      }
    }
    t.state = State::done;
    t.waiting_on = nullptr;
    yield(t);
  } catch (const Abort&) {
  } catch (const std::exception& e) {
    try {
      fail(l, e.what());
    } catch (const Abort&) {
    }
  }
  return nullptr;
}

} // namespace jang_emu

namespace metal {

inline void threadgroup_barrier(mem_flags) {
  using namespace jang_emu;
  Thread& t = *g_self;
  arrive(t, t.launch->barrier, 1, [] {});
}

// Every lane must reach it, like a SIMD operation.
inline void simdgroup_barrier(mem_flags) {
  jang_emu::simd_op<int>(1, 0, 0, [](const int*, int, int, int) { return 0; });
}

template <typename T>
inline T simd_sum(T v) {
  // Lane order, like a fixed reduction tree would be deterministic on a GPU.
  return jang_emu::simd_op<T>(2, v, 0, [](const T* x, int n, int, int) {
    T s = x[0];
    for (int i = 1; i < n; ++i) {
      s = s + x[i];
    }
    return s;
  });
}

template <typename T>
inline T simd_max(T v) {
  return jang_emu::simd_op<T>(3, v, 0, [](const T* x, int n, int, int) {
    T s = x[0];
    for (int i = 1; i < n; ++i) {
      s = max(s, x[i]);
    }
    return s;
  });
}

template <typename T>
inline T simd_min(T v) {
  return jang_emu::simd_op<T>(4, v, 0, [](const T* x, int n, int, int) {
    T s = x[0];
    for (int i = 1; i < n; ++i) {
      s = min(s, x[i]);
    }
    return s;
  });
}

template <typename T>
inline T simd_shuffle(T v, ushort lane) {
  return jang_emu::simd_op<T>(
      5, v, lane, [](const T* x, int n, int, int src) { return x[src % n]; });
}

template <typename T>
inline T simd_broadcast(T v, ushort lane) {
  return jang_emu::simd_op<T>(
      6, v, lane, [](const T* x, int n, int, int src) { return x[src % n]; });
}

// Sum over the lanes below this one (exclusive) or up to it (inclusive).
template <typename T> inline T simd_prefix_exclusive_sum(T v) {
  return jang_emu::simd_op<T>(10, v, 0, [](const T* x, int, int i, int) {
    T s = T(0);
    for (int j = 0; j < i; ++j) {
      s = s + x[j];
    }
    return s;
  });
}

template <typename T> inline T simd_prefix_inclusive_sum(T v) {
  return jang_emu::simd_op<T>(11, v, 0, [](const T* x, int, int i, int) {
    T s = x[0];
    for (int j = 1; j <= i; ++j) {
      s = s + x[j];
    }
    return s;
  });
}

// Lanes whose source is out of range keep their own value, as on the GPU.
template <typename T>
inline T simd_shuffle_down(T v, ushort delta) {
  return jang_emu::simd_op<T>(7, v, delta, [](const T* x, int n, int i, int d) {
    return i + d < n ? x[i + d] : x[i];
  });
}

template <typename T>
inline T simd_shuffle_up(T v, ushort delta) {
  return jang_emu::simd_op<T>(8, v, delta, [](const T* x, int, int i, int d) {
    return i - d >= 0 ? x[i - d] : x[i];
  });
}

template <typename T>
inline T simd_shuffle_xor(T v, ushort mask) {
  return jang_emu::simd_op<T>(9, v, mask, [](const T* x, int n, int i, int m) {
    return (i ^ m) < n ? x[i ^ m] : x[i];
  });
}

// ------------------------------------------------- simdgroup matrices -----
//
// An 8 x 8 simdgroup_matrix is spread over the 32 lanes of a SIMD group on a
// GPU, in a layout the Metal specification leaves to the implementation. Here
// every lane holds the whole matrix, and load, store and multiply-accumulate
// are SIMD-group operations: every lane must reach them (a full SIMD group,
// in uniform control flow) with the same arguments, and the last lane to
// arrive performs them once for the group. So a kernel that sticks to these
// operations (no thread_elements(), which is not provided) computes what the
// GPU computes, up to the order of the fp32 additions inside one product.
// Only float matrices: half and bfloat products round in ways the
// specification does not pin down.

template <typename T, int Cols, int Rows> struct simdgroup_matrix {
  static_assert(
      std::is_same_v<T, float> && Cols == 8 && Rows == 8,
      "the emulation provides 8x8 float simdgroup matrices only");
  T e[Rows][Cols]; // row r, column c
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;

template <typename T, int Cols, int Rows>
inline simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
  simdgroup_matrix<T, Cols, Rows> m;
  for (auto& row : m.e) {
    for (auto& v : row) {
      v = value;
    }
  }
  return m;
}

} // namespace metal

namespace jang_emu {

// One lane's arguments to a simdgroup matrix operation.
struct MatrixCall {
  const volatile void* memory; // source or destination in memory
  unsigned long stride;
  bool transpose;
  void* mine;              // this lane's result matrix (load, multiply)
  const void* operands[3]; // this lane's operand matrices
};

// Runs `complete(lanes)` once for the SIMD group, after checking that every
// lane passed the same memory arguments; the lanes' calls are lanes[0..32).
template <typename Complete>
inline void
matrix_op(int op, const char* name, MatrixCall call, Complete&& complete) {
  Thread& self = *g_self;
  Launch& l = *self.launch;
  const int sid = self.index / kSimdWidth;
  const int n = simd_size_of(l, sid);
  Thread* lanes = &l.threads[sid * kSimdWidth];
  const MatrixCall* mine = &call;
  std::memcpy(self.in, &mine, sizeof(mine));
  arrive(self, simd_of(self), op, [&] {
    if (n != kSimdWidth) {
      fail(l, std::string(name) + " needs a full SIMD group of 32 threads");
    }
    const MatrixCall* calls[kSimdWidth];
    for (int i = 0; i < n; ++i) {
      std::memcpy(&calls[i], lanes[i].in, sizeof(calls[i]));
      if (calls[i]->memory != calls[0]->memory ||
          calls[i]->stride != calls[0]->stride ||
          calls[i]->transpose != calls[0]->transpose) {
        fail(
            l,
            where(lanes[i]) + " passed other arguments to " + name +
                " than lane 0 of its SIMD group");
      }
    }
    complete(calls);
  });
}

template <typename P>
inline void matrix_load(
    metal::simdgroup_float8x8& d, P* src, ulong stride, bool transpose) {
  MatrixCall c{src, stride, transpose, &d, {}};
  matrix_op(20, "simdgroup_load", c, [](const MatrixCall* const* calls) {
    const auto* s = static_cast<const volatile float*>(calls[0]->memory);
    metal::simdgroup_float8x8 m;
    for (int r = 0; r < 8; ++r) {
      for (int col = 0; col < 8; ++col) {
        m.e[r][col] = calls[0]->transpose ? s[col * calls[0]->stride + r]
                                          : s[r * calls[0]->stride + col];
      }
    }
    for (int i = 0; i < kSimdWidth; ++i) {
      *static_cast<metal::simdgroup_float8x8*>(calls[i]->mine) = m;
    }
  });
}

template <typename P>
inline void matrix_store(
    const metal::simdgroup_float8x8& m, P* dst, ulong stride, bool transpose) {
  MatrixCall c{dst, stride, transpose, nullptr, {&m}};
  matrix_op(21, "simdgroup_store", c, [](const MatrixCall* const* calls) {
    const auto& v =
        *static_cast<const metal::simdgroup_float8x8*>(calls[0]->operands[0]);
    auto* d = static_cast<volatile float*>(
        const_cast<volatile void*>(calls[0]->memory));
    for (int r = 0; r < 8; ++r) {
      for (int col = 0; col < 8; ++col) {
        (calls[0]->transpose ? d[col * calls[0]->stride + r]
                             : d[r * calls[0]->stride + col]) = v.e[r][col];
      }
    }
  });
}

} // namespace jang_emu

namespace metal {

// simdgroup_load / simdgroup_store from and to device (plain) or threadgroup
// (volatile) memory: elements_per_row is the row stride in elements; with
// transpose_matrix the matrix is read (written) column by column, so that
// loading an 8 x 8 block of a row-major B transposed gives B^T. The origin
// argument must be 0 (the emulation does not pin down its convention; pass
// an offset pointer instead).
inline void check_origin(ulong2 origin) {
  if (origin.x != 0 || origin.y != 0) {
    jang_emu::fail(
        *jang_emu::g_self->launch,
        "simdgroup_load/store with a nonzero matrix_origin is not emulated");
  }
}

inline void simdgroup_load(
    simdgroup_float8x8& d,
    const float* src,
    ulong elements_per_row = 8,
    ulong2 matrix_origin = 0,
    bool transpose_matrix = false) {
  check_origin(matrix_origin);
  jang_emu::matrix_load(d, src, elements_per_row, transpose_matrix);
}

inline void simdgroup_load(
    simdgroup_float8x8& d,
    const volatile float* src,
    ulong elements_per_row = 8,
    ulong2 matrix_origin = 0,
    bool transpose_matrix = false) {
  check_origin(matrix_origin);
  jang_emu::matrix_load(d, src, elements_per_row, transpose_matrix);
}

inline void simdgroup_store(
    const simdgroup_float8x8& m,
    float* dst,
    ulong elements_per_row = 8,
    ulong2 matrix_origin = 0,
    bool transpose_matrix = false) {
  check_origin(matrix_origin);
  jang_emu::matrix_store(m, dst, elements_per_row, transpose_matrix);
}

inline void simdgroup_store(
    const simdgroup_float8x8& m,
    volatile float* dst,
    ulong elements_per_row = 8,
    ulong2 matrix_origin = 0,
    bool transpose_matrix = false) {
  check_origin(matrix_origin);
  jang_emu::matrix_store(m, dst, elements_per_row, transpose_matrix);
}

// d = a * b + c, accumulated in fp32 in increasing k.
inline void simdgroup_multiply_accumulate(
    simdgroup_float8x8& d,
    const simdgroup_float8x8& a,
    const simdgroup_float8x8& b,
    const simdgroup_float8x8& c) {
  jang_emu::MatrixCall call{nullptr, 0, false, &d, {&a, &b, &c}};
  jang_emu::matrix_op(
      22,
      "simdgroup_multiply_accumulate",
      call,
      [](const jang_emu::MatrixCall* const* calls) {
        const auto& x =
            *static_cast<const simdgroup_float8x8*>(calls[0]->operands[0]);
        const auto& y =
            *static_cast<const simdgroup_float8x8*>(calls[0]->operands[1]);
        const auto& z =
            *static_cast<const simdgroup_float8x8*>(calls[0]->operands[2]);
        simdgroup_float8x8 r;
        for (int i = 0; i < 8; ++i) {
          for (int j = 0; j < 8; ++j) {
            float s = z.e[i][j];
            for (int k = 0; k < 8; ++k) {
              s += x.e[i][k] * y.e[k][j];
            }
            r.e[i][j] = s;
          }
        }
        for (int i = 0; i < jang_emu::kSimdWidth; ++i) {
          *static_cast<simdgroup_float8x8*>(calls[i]->mine) = r;
        }
      });
}

} // namespace metal

// Address spaces. `threadgroup` also names the [[threadgroup(n)]] argument
// attribute, so it cannot expand to nothing; it becomes `volatile`, a
// qualifier that is also a valid (ignored) attribute name. Shared memory being
// volatile costs speed only. ([[kernel]] and the other attributes are unknown
// to clang and ignored.)
#define device
#define constant
#define threadgroup volatile
#define thread

// A kernel instantiation: registered under its host name.
#define JANG_EMU_CAT2(a, b) a##b
#define JANG_EMU_CAT(a, b) JANG_EMU_CAT2(a, b)
#define JANG_INSTANTIATE(name, func, ...)                                     \
  static ::jang_emu::Register JANG_EMU_CAT(jang_emu_reg_, __COUNTER__)(        \
      name, #func, &func<__VA_ARGS__>);

// Entry points for the driver (ctypes). Everything else is compiled with
// hidden visibility, so that each shader library (and each broken test copy)
// keeps its own kernel registry even when several are loaded at once.
#define JANG_EMU_EXPORT __attribute__((visibility("default")))

extern "C" {

// Host names of every kernel instantiation in this library, '\n'-separated.
JANG_EMU_EXPORT int jang_emu_kernel_names(char* out, int capacity);

// Run kernel `name` over `groups` threadgroups of `tg` threads. `order`: 0
// ascending thread index, 1 descending, 2 shuffled with `seed`. Returns 0 or
// writes an error message and returns 1.
JANG_EMU_EXPORT int jang_emu_launch(
    const char* name,
    void** buffers,
    int nbuffers,
    const unsigned* groups,
    const unsigned* tg,
    const unsigned long* tgmem_bytes,
    int ntgmem,
    int order,
    unsigned seed,
    char* error,
    int error_capacity);
}

// The definitions, compiled into the same translation unit as the kernels (the
// driver defines JANG_EMU_MAIN after including the shader source).
#ifdef JANG_EMU_MAIN
extern "C" int jang_emu_kernel_names(char* out, int capacity) {
  std::string s;
  for (auto& [name, k] : jang_emu::kernels()) {
    s += name + "\n";
  }
  if (static_cast<int>(s.size()) + 1 > capacity) {
    return static_cast<int>(s.size()) + 1;
  }
  std::memcpy(out, s.c_str(), s.size() + 1);
  return 0;
}

extern "C" int jang_emu_launch(
    const char* name,
    void** buffers,
    int nbuffers,
    const unsigned* groups,
    const unsigned* tg,
    const unsigned long* tgmem_bytes,
    int ntgmem,
    int order,
    unsigned seed,
    char* error,
    int error_capacity) {
  using namespace jang_emu;
  auto report = [&](const std::string& msg) {
    std::snprintf(error, error_capacity, "%s", msg.c_str());
    return 1;
  };
  auto it = kernels().find(name);
  if (it == kernels().end()) {
    return report(std::string("no kernel instantiation named ") + name);
  }
  auto pt = param_tables().find(it->second.function);
  if (pt == param_tables().end()) {
    return report("no parameter table for " + it->second.function);
  }
  Launch l;
  l.buffers = buffers;
  l.nbuffers = nbuffers;
  l.groups = uint3{groups[0], groups[1], groups[2]};
  l.tg = uint3{tg[0], tg[1], tg[2]};
  l.nthreads = static_cast<int>(tg[0] * tg[1] * tg[2]);
  if (l.nthreads <= 0 || l.nthreads > 1024) {
    return report("threads per threadgroup must be in [1, 1024]");
  }
  size_t tg_total = 0;
  for (int i = 0; i < ntgmem; ++i) {
    l.tgmem.emplace_back(tgmem_bytes[i], 0xff);
    tg_total += tgmem_bytes[i];
  }
  if (tg_total > 32768) {
    return report("more than 32 KiB of threadgroup memory");
  }
  if (l.groups.x * l.groups.y * l.groups.z == 0) {
    return 0;
  }
  l.threads.resize(l.nthreads);
  const int nsimd = (l.nthreads + kSimdWidth - 1) / kSimdWidth;
  l.simd.resize(nsimd);
  for (int s = 0; s < nsimd; ++s) {
    l.simd[s].expected = simd_size_of(l, s);
    l.simd[s].what = "SIMD-group operation";
  }
  l.barrier.expected = l.nthreads;
  l.barrier.what = "threadgroup_barrier";
  l.tg_end.expected = l.nthreads;
  l.tg_end.what = "the end of the kernel";
  l.order.resize(l.nthreads);
  for (int i = 0; i < l.nthreads; ++i) {
    l.order[i] = order == 1 ? l.nthreads - 1 - i : i;
  }
  if (order == 2) {
    std::mt19937 rng(seed);
    std::shuffle(l.order.begin(), l.order.end(), rng);
  }
  const auto& params = pt->second;
  const auto& invoke = it->second.invoke;
  l.body = [&](Thread& t) { invoke(params, t); };
  sem_init(&l.finished, 0, 0);
  for (int i = 0; i < l.nthreads; ++i) {
    Thread& t = l.threads[i];
    t.launch = &l;
    t.index = i;
    t.tpos = uint3{
        static_cast<uint>(i) % tg[0],
        static_cast<uint>(i) / tg[0] % tg[1],
        static_cast<uint>(i) / (tg[0] * tg[1])};
    sem_init(&t.sem, 0, 0);
  }
  std::vector<pthread_t> handles(l.nthreads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 20);
  int started = 0;
  for (; started < l.nthreads; ++started) {
    if (pthread_create(&handles[started], &attr, thread_main, &l.threads[started])) {
      break;
    }
  }
  pthread_attr_destroy(&attr);
  if (started < l.nthreads) {
    l.aborted = true;
    l.error = "cannot start " + std::to_string(l.nthreads) + " threads";
    for (int i = 0; i < started; ++i) {
      sem_post(&l.threads[i].sem);
    }
  } else {
    sem_post(&l.threads[l.order[0]].sem);
    sem_wait(&l.finished);
  }
  for (int i = 0; i < started; ++i) {
    pthread_join(handles[i], nullptr);
  }
  for (auto& t : l.threads) {
    sem_destroy(&t.sem);
  }
  sem_destroy(&l.finished);
  if (l.aborted) {
    return report(l.error);
  }
  return 0;
}
#endif
