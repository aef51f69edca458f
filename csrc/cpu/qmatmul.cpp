// eval_cpu of QMatmul, GatherQMM and MoeGateUp: convert activations into the
// kernel layout (cpu/qmm.h), split output rows over the thread pool and call
// the instruction set's kernel (chosen at run time in cpu/cpu_features.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#include "cpu/acts.h"
#include "cpu/qmm.h"
#include "cpu/strided.h"
#include "cpu/thread_pool.h"
#include "jang/affine.h"
#include "jang/ops.h"
#include "jang/primitives.h"

namespace jang {

std::string cpu_simd_level() {
  return cpu::simd_level();
}

std::string cpu_kernel_isa() {
  return cpu::active_isa().name;
}

std::string set_cpu_kernel_isa(const std::string& name) {
  return cpu::set_isa(name.c_str());
}

int cpu_num_threads() {
  return cpu::num_threads();
}

namespace {

using cpu::ElemType;
using cpu::Isa;

ElemType elem_type(mx::Dtype dtype) {
  if (dtype == mx::float32) {
    return ElemType::f32;
  }
  if (dtype == mx::float16) {
    return ElemType::f16;
  }
  if (dtype == mx::bfloat16) {
    return ElemType::bf16;
  }
  throw std::invalid_argument("[jang] unsupported floating point type");
}

// Memory offset (in elements) of the i-th element of `a` in row-major order.
int64_t elem_offset(const mx::array& a, int64_t i) {
  if (a.flags().row_contiguous) {
    return i;
  }
  int64_t loc = 0;
  for (int d = static_cast<int>(a.ndim()) - 1; d >= 0; --d) {
    const int64_t dim = a.shape(d);
    loc += (i % dim) * a.strides()[d];
    i /= dim;
  }
  return loc;
}

uint32_t index_at(const mx::array& idx, int64_t i) {
  return idx.data<uint32_t>()[elem_offset(idx, i)];
}

// Activation rows in the kernel layout for one (instruction set, bits,
// group size): x permuted and zero-padded per block, and per-group sums.
struct Acts {
  int64_t kp = 0;
  int64_t gp = 0;
  std::vector<float> x;
  std::vector<float> xsum;

  const float* row(int64_t r) const {
    return x.data() + r * kp;
  }
  const float* sums(int64_t r) const {
    return xsum.data() + r * gp;
  }
};

// `x` viewed as (rows, k) with any strides.
void prepare_acts(
    const Isa& isa, const mx::array& x, int bits, int group_size, Acts& acts) {
  const int64_t k = x.shape(-1);
  const int64_t rows = k ? static_cast<int64_t>(x.size()) / k : 0;
  const int codes = affine::codes_per_pack(bits);
  acts.kp = cpu::padded_k(k, isa.lanes, codes);
  acts.gp = cpu::padded_groups(k / group_size);
  acts.x.resize(rows * acts.kp);
  acts.xsum.resize(rows * acts.gp);
  const auto type = elem_type(x.dtype());
  const int64_t itemsize = x.itemsize();
  const int64_t stride = x.ndim() ? x.strides().back() : 1;
  const char* base = x.data<char>();
  auto prepare_row = [&](int64_t r, std::vector<float>& tmp) {
    tmp.resize(k);
    isa.to_f32(
        base + cpu::row_offset(x, r) * itemsize, type, k, stride, tmp.data());
    cpu::pack_activation_row(
        tmp.data(),
        k,
        isa.lanes,
        bits,
        group_size,
        acts.x.data() + r * acts.kp,
        acts.xsum.data() + r * acts.gp);
  };
  const int64_t tasks =
      rows >= 64 ? std::min<int64_t>(rows, 4 * cpu::num_threads()) : 1;
  cpu::parallel_for(tasks, [&](int64_t task) {
    std::vector<float> tmp;
    for (int64_t r = task * rows / tasks; r < (task + 1) * rows / tasks; ++r) {
      prepare_row(r, tmp);
    }
  });
}

// A quantized matrix (2-D) or stack of matrices (3-D) with unit-stride rows.
// Rows of other strides are copied once into owned buffers.
struct QMat {
  const uint32_t* w = nullptr;
  const char* s = nullptr;
  const char* b = nullptr;
  int64_t w_e = 0, w_n = 0, s_e = 0, s_n = 0, b_e = 0, b_n = 0;
  int64_t esize = 4;
  ElemType type = ElemType::f32;
  std::vector<char> owned_w, owned_s, owned_b;
};

// Pointer to `a`'s data with unit last stride; copies into `owned` if needed.
// Returns the leading strides through e_stride (dim -3) and n_stride (dim -2).
const char* unit_rows(
    const mx::array& a,
    std::vector<char>& owned,
    int64_t& e_stride,
    int64_t& n_stride) {
  const int nd = static_cast<int>(a.ndim());
  const int64_t cols = a.shape(-1);
  if (a.strides().back() == 1 || cols <= 1) {
    n_stride = nd >= 2 ? a.strides()[nd - 2] : 0;
    e_stride = nd >= 3 ? a.strides()[nd - 3] : 0;
    return a.data<char>();
  }
  const int64_t rows = cols ? static_cast<int64_t>(a.size()) / cols : 0;
  const int64_t item = a.itemsize();
  owned.resize(rows * cols * item);
  for (int64_t r = 0; r < rows; ++r) {
    const char* src = a.data<char>() + cpu::row_offset(a, r) * item;
    for (int64_t c = 0; c < cols; ++c) {
      std::memcpy(
          owned.data() + (r * cols + c) * item,
          src + c * a.strides().back() * item,
          item);
    }
  }
  n_stride = cols;
  e_stride = nd >= 3 ? cols * a.shape(nd - 2) : 0;
  return owned.data();
}

void make_qmat(
    const mx::array& w, const mx::array& s, const mx::array& b, QMat& q) {
  q.w =
      reinterpret_cast<const uint32_t*>(unit_rows(w, q.owned_w, q.w_e, q.w_n));
  q.s = unit_rows(s, q.owned_s, q.s_e, q.s_n);
  q.b = unit_rows(b, q.owned_b, q.b_e, q.b_n);
  q.type = elem_type(s.dtype());
  q.esize = s.itemsize();
}

cpu::QmmArgs
qmm_args(const QMat& q, int64_t expert, int bits, int group_size, int64_t k) {
  cpu::QmmArgs a{};
  a.bits = bits;
  a.group_size = group_size;
  a.k = k;
  a.w = q.w + expert * q.w_e;
  a.w_stride = q.w_n;
  a.scales = q.s + expert * q.s_e * q.esize;
  a.biases = q.b + expert * q.b_e * q.esize;
  a.s_stride = q.s_n;
  a.b_stride = q.b_n;
  a.sb_type = q.type;
  return a;
}

// Split n output rows into jobs: enough for the pool to balance, none so small
// that scheduling costs more than the work.
int64_t row_chunk(
    int64_t n, int64_t k, int bits, int64_t rows, int64_t parallel_units) {
  const int64_t bytes = n * k * bits / 8 * std::max<int64_t>(1, rows / 16);
  const int threads = cpu::num_threads();
  // Below ~0.5 MB of weights the work (tens of microseconds) is not worth a
  // wake-up of the pool, more so on a loaded machine.
  if (threads == 1 || bytes < (512 << 10)) {
    return n;
  }
  const int64_t jobs =
      std::max<int64_t>(1, 4 * threads / std::max<int64_t>(1, parallel_units));
  const int64_t chunk = (n + jobs - 1) / jobs;
  return std::max<int64_t>(std::min<int64_t>(n, 16), chunk);
}

// `out` must already own its memory (the task holds a weak copy of it).
template <typename F>
void dispatch_cpu(
    mx::Stream stream,
    const std::vector<mx::array>& inputs,
    mx::array& out,
    F&& fn) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) {
    encoder.set_input_array(in);
  }
  encoder.set_output_array(out);
  encoder.dispatch(std::forward<F>(fn));
}

// ------------------------------------------------------------ qmatmul -----

void qmatmul_cpu(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    const mx::array& out,
    int bits,
    int group_size) {
  const Isa& isa = cpu::active_isa();
  const int64_t k = x.shape(-1);
  const int64_t n = w.shape(0);
  const int64_t rows = n ? static_cast<int64_t>(out.size()) / n : 0;
  if (rows == 0 || n == 0) {
    return;
  }
  Acts acts;
  prepare_acts(isa, x, bits, group_size, acts);
  QMat q;
  make_qmat(w, scales, biases, q);
  const auto out_type = elem_type(out.dtype());
  std::vector<float> staging;
  float* outf = nullptr;
  if (out_type == ElemType::f32) {
    outf = const_cast<float*>(out.data<float>());
  } else {
    staging.resize(rows * n);
    outf = staging.data();
  }
  std::vector<const float*> xr(rows), xs(rows);
  std::vector<float*> orow(rows);
  for (int64_t r = 0; r < rows; ++r) {
    xr[r] = acts.row(r);
    xs[r] = acts.sums(r);
    orow[r] = outf + r * n;
  }
  auto args = qmm_args(q, 0, bits, group_size, k);
  args.m = static_cast<int>(rows);
  args.x = xr.data();
  args.xsum = xs.data();
  args.out = orow.data();
  const int64_t chunk = row_chunk(n, k, bits, rows, 1);
  const int64_t jobs = (n + chunk - 1) / chunk;
  char* dst = const_cast<char*>(out.data<char>());
  const int64_t item = out.itemsize();
  cpu::parallel_for(jobs, [&](int64_t j) {
    const int64_t n0 = j * chunk;
    const int64_t n1 = std::min(n, n0 + chunk);
    isa.qmm(args, n0, n1);
    if (out_type != ElemType::f32) {
      for (int64_t r = 0; r < rows; ++r) {
        isa.from_f32(
            orow[r] + n0, out_type, n1 - n0, dst + (r * n + n0) * item);
      }
    }
  });
}

// ---------------------------------------------------------- gather_qmm -----

void gather_qmm_cpu(
    const std::vector<mx::array>& in,
    const mx::array& out,
    int bits,
    int group_size) {
  const auto& x = in[0]; // (bx, m, k)
  const auto& lhs = in[4];
  const auto& rhs = in[5];
  const Isa& isa = cpu::active_isa();
  const int64_t bx = x.shape(0);
  const int64_t m = x.shape(1);
  const int64_t k = x.shape(2);
  const int64_t experts = in[1].shape(0);
  const int64_t n = in[1].shape(1);
  const int64_t bo = lhs.size();
  if (bo == 0 || m == 0 || n == 0) {
    return;
  }
  const auto out_type = elem_type(out.dtype());
  char* dst = const_cast<char*>(out.data<char>());
  const int64_t item = out.itemsize();
  Acts acts;
  prepare_acts(isa, x, bits, group_size, acts);
  QMat q;
  make_qmat(in[1], in[2], in[3], q);

  // Batch elements per expert; out-of-range ones are zero-filled.
  std::vector<std::vector<int64_t>> members(experts);
  std::vector<uint32_t> xrow_of(bo);
  for (int64_t i = 0; i < bo; ++i) {
    const uint32_t li = index_at(lhs, i);
    const uint32_t ri = index_at(rhs, i);
    if (li >= bx || ri >= experts) {
      std::memset(dst + i * m * n * item, 0, m * n * item);
      continue;
    }
    xrow_of[i] = li;
    members[ri].push_back(i);
  }
  int64_t active = 0;
  for (const auto& mem : members) {
    active += !mem.empty();
  }
  std::vector<float> staging;
  float* outf = nullptr;
  if (out_type == ElemType::f32) {
    outf = reinterpret_cast<float*>(dst);
  } else {
    staging.resize(bo * m * n);
    outf = staging.data();
  }
  struct Job {
    int64_t e, n0, n1;
  };
  std::vector<Job> jobs;
  for (int64_t e = 0; e < experts; ++e) {
    if (members[e].empty()) {
      continue;
    }
    const int64_t rows = static_cast<int64_t>(members[e].size()) * m;
    const int64_t chunk = row_chunk(n, k, bits, rows, active);
    for (int64_t n0 = 0; n0 < n; n0 += chunk) {
      jobs.push_back({e, n0, std::min(n, n0 + chunk)});
    }
  }
  cpu::parallel_for(static_cast<int64_t>(jobs.size()), [&](int64_t j) {
    const Job job = jobs[j];
    const auto& mem = members[job.e];
    const int64_t rows = static_cast<int64_t>(mem.size()) * m;
    std::vector<const float*> xr(rows), xs(rows);
    std::vector<float*> orow(rows);
    for (size_t b = 0; b < mem.size(); ++b) {
      for (int64_t r = 0; r < m; ++r) {
        const int64_t src = static_cast<int64_t>(xrow_of[mem[b]]) * m + r;
        const int64_t o = mem[b] * m + r;
        xr[b * m + r] = acts.row(src);
        xs[b * m + r] = acts.sums(src);
        orow[b * m + r] = outf + o * n;
      }
    }
    auto args = qmm_args(q, job.e, bits, group_size, k);
    args.m = static_cast<int>(rows);
    args.x = xr.data();
    args.xsum = xs.data();
    args.out = orow.data();
    isa.qmm(args, job.n0, job.n1);
    if (out_type != ElemType::f32) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = orow[r] - outf;
        isa.from_f32(
            orow[r] + job.n0,
            out_type,
            job.n1 - job.n0,
            dst + (o + job.n0) * item);
      }
    }
  });
}

// --------------------------------------------------------- moe_gate_up -----

void moe_gate_up_cpu(
    const std::vector<mx::array>& in,
    const mx::array& out,
    int gate_bits,
    int gate_gs,
    int up_bits,
    int up_gs) {
  const auto& x = in[0];   // (t, k)
  const auto& ids = in[7]; // (t, top_k)
  const Isa& isa = cpu::active_isa();
  const int64_t t = x.shape(0);
  const int64_t k = x.shape(1);
  const int64_t top_k = ids.shape(1);
  const int64_t experts = in[1].shape(0);
  const int64_t hidden = in[1].shape(1);
  const int64_t pairs = t * top_k;
  if (pairs == 0 || hidden == 0) {
    return;
  }
  const auto out_type = elem_type(out.dtype());
  char* dst = const_cast<char*>(out.data<char>());
  const int64_t item = out.itemsize();

  Acts acts_gate, acts_up_own;
  prepare_acts(isa, x, gate_bits, gate_gs, acts_gate);
  const bool shared =
      affine::codes_per_pack(gate_bits) == affine::codes_per_pack(up_bits) && gate_gs == up_gs;
  if (!shared) {
    prepare_acts(isa, x, up_bits, up_gs, acts_up_own);
  }
  const Acts& acts_up = shared ? acts_gate : acts_up_own;
  QMat gq, uq;
  make_qmat(in[1], in[2], in[3], gq);
  make_qmat(in[4], in[5], in[6], uq);

  std::vector<std::vector<int64_t>> members(experts);
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t e = index_at(ids, p);
    if (e >= experts) {
      std::memset(dst + p * hidden * item, 0, hidden * item);
      continue;
    }
    members[e].push_back(p);
  }
  int64_t active = 0;
  for (const auto& mem : members) {
    active += !mem.empty();
  }
  std::vector<float> gate_out(pairs * hidden), up_out(pairs * hidden);
  struct Job {
    int64_t e, n0, n1;
  };
  std::vector<Job> jobs;
  const int bits_max = std::max(gate_bits, up_bits);
  for (int64_t e = 0; e < experts; ++e) {
    if (members[e].empty()) {
      continue;
    }
    const int64_t chunk =
        row_chunk(hidden, 2 * k, bits_max, members[e].size(), active);
    for (int64_t n0 = 0; n0 < hidden; n0 += chunk) {
      jobs.push_back({e, n0, std::min(hidden, n0 + chunk)});
    }
  }
  cpu::parallel_for(static_cast<int64_t>(jobs.size()), [&](int64_t j) {
    const Job job = jobs[j];
    const auto& mem = members[job.e];
    const int64_t rows = static_cast<int64_t>(mem.size());
    std::vector<const float*> xg(rows), sg(rows), xu(rows), su(rows);
    std::vector<float*> og(rows), ou(rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t tok = mem[r] / top_k;
      xg[r] = acts_gate.row(tok);
      sg[r] = acts_gate.sums(tok);
      xu[r] = acts_up.row(tok);
      su[r] = acts_up.sums(tok);
      og[r] = gate_out.data() + mem[r] * hidden;
      ou[r] = up_out.data() + mem[r] * hidden;
    }
    auto ga = qmm_args(gq, job.e, gate_bits, gate_gs, k);
    ga.m = static_cast<int>(rows);
    ga.x = xg.data();
    ga.xsum = sg.data();
    ga.out = og.data();
    isa.qmm(ga, job.n0, job.n1);
    auto ua = qmm_args(uq, job.e, up_bits, up_gs, k);
    ua.m = static_cast<int>(rows);
    ua.x = xu.data();
    ua.xsum = su.data();
    ua.out = ou.data();
    isa.qmm(ua, job.n0, job.n1);
    // SwiGLU: silu(gate) * up, in fp32, rounded once to the output type.
    for (int64_t r = 0; r < rows; ++r) {
      float* g = og[r];
      const float* u = ou[r];
      for (int64_t i = job.n0; i < job.n1; ++i) {
        g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      }
      isa.from_f32(
          g + job.n0,
          out_type,
          job.n1 - job.n0,
          dst + (mem[r] * hidden + job.n0) * item);
    }
  });
}

} // namespace

void QMatmul::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  dispatch_cpu(
      stream(),
      inputs,
      out,
      [x = inputs[0],
       w = inputs[1],
       s = inputs[2],
       b = inputs[3],
       out = mx::array::unsafe_weak_copy(out),
       bits = bits_,
       gs = group_size_]() {
        qmatmul_cpu(x, w, s, b, out, bits, gs);
      });
}

void GatherQMM::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  dispatch_cpu(
      stream(),
      inputs,
      out,
      [in = inputs,
       out = mx::array::unsafe_weak_copy(out),
       bits = bits_,
       gs = group_size_]() {
        gather_qmm_cpu(in, out, bits, gs);
      });
}

void MoeGateUp::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  dispatch_cpu(
      stream(),
      inputs,
      out,
      [in = inputs,
       out = mx::array::unsafe_weak_copy(out),
       gb = gate_bits_,
       ggs = gate_group_size_,
       ub = up_bits_,
       ugs = up_group_size_]() {
        moe_gate_up_cpu(in, out, gb, ggs, ub, ugs);
      });
}

} // namespace jang
