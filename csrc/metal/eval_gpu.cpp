// eval_gpu of jang's primitives on Metal (Apple silicon only; CMake compiles
// this file when MLX is built with Metal, and csrc/no_gpu.cpp otherwise).
//
// Kernels come from jang.metallib (the *.metal files here), installed next to
// libjang; which kernel and grid each shape gets is decided by plan.h, the
// same code the Linux emulation tests run the shaders with.

#include <dlfcn.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "mlx/allocator.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"

#include "metal/plan.h"
#include "jang/affine.h"
#include "jang/primitives.h"

namespace jang {

namespace {

namespace plan = metal_plan;

// The directory holding this library (libjang), where jang.metallib lives.
std::string metallib_path() {
  Dl_info info;
  if (dladdr(reinterpret_cast<const void*>(&metallib_path), &info) == 0 ||
      info.dli_fname == nullptr) {
    throw std::runtime_error("[jang] cannot locate libjang to find jang.metallib");
  }
  std::string path(info.dli_fname);
  path = path.substr(0, path.find_last_of('/') + 1);
  return path + "jang.metallib";
}

MTL::ComputePipelineState* kernel(const mx::Stream& s, const char* name) {
  auto& d = mx::metal::device(s.device);
  auto* lib = d.get_library("jang", metallib_path());
  return d.get_kernel(name, lib);
}

plan::Dtype to_plan(mx::Dtype t) {
  if (t == mx::float16) {
    return plan::Dtype::float16;
  }
  if (t == mx::bfloat16) {
    return plan::Dtype::bfloat16;
  }
  if (t == mx::float32) {
    return plan::Dtype::float32;
  }
  throw std::invalid_argument("[jang] unsupported dtype for the Metal kernels");
}

// A row-contiguous copy of `a` in dtype `t` (itself when it already is one).
mx::array prepared(const mx::array& a, mx::Dtype t, const mx::Stream& s) {
  if (a.flags().row_contiguous && a.dtype() == t) {
    return a;
  }
  mx::array out(a.shape(), t, nullptr, {});
  mx::copy_gpu(a, out, mx::CopyType::General, s);
  mx::metal::get_command_encoder(s).add_temporary(out);
  return out;
}

// Selects the plan's kernel and threadgroup memory on `enc`; the caller then
// sets the kernel's arguments and calls launch().
void use_kernel(
    mx::metal::CommandEncoder& enc,
    const plan::Dispatch& p,
    const mx::Stream& s) {
  enc.set_compute_pipeline_state(kernel(s, p.kernel));
  for (int i = 0; i < 2; ++i) {
    if (p.threadgroup_bytes[i]) {
      enc.set_threadgroup_memory_length(p.threadgroup_bytes[i], i);
    }
  }
}

void launch(mx::metal::CommandEncoder& enc, const plan::Dispatch& p) {
  enc.dispatch_threadgroups(
      MTL::Size(p.groups[0], p.groups[1], p.groups[2]),
      MTL::Size(p.threads[0], p.threads[1], p.threads[2]));
}

// A buffer for intermediate results, released with the command buffer.
mx::array temporary(mx::metal::CommandEncoder& enc, int64_t size, mx::Dtype t) {
  mx::array a({static_cast<int>(size)}, t, nullptr, {});
  a.set_data(mx::allocator::malloc(a.nbytes()));
  enc.add_temporary(a);
  return a;
}

// The sorted paths' routing (jang_moe_route): groups the uint32 `ids` into
// buckets 0 .. experts (the last for out-of-range ids). Returns the offsets
// (experts + 2) and the permutation (one per id), which the sorted kernel
// encoded next reads (the encoder orders the two dispatches).
std::pair<mx::array, mx::array> route(
    mx::metal::CommandEncoder& enc,
    const mx::array& ids,
    int experts,
    const mx::Stream& s) {
  auto offsets = temporary(enc, experts + 2, mx::uint32);
  auto perm = temporary(enc, ids.size(), mx::uint32);
  const int n = static_cast<int>(ids.size());
  const auto p = plan::moe_route(experts);
  use_kernel(enc, p, s);
  enc.set_input_array(ids, 0);
  enc.set_output_array(offsets, 1);
  enc.set_output_array(perm, 2);
  enc.set_bytes(n, 3);
  enc.set_bytes(experts, 4);
  launch(enc, p);
  return {offsets, perm};
}

// The scales' type of a quantized matmul with output type `out`: scales stay
// in their type when it is the output's, or 16-bit under an fp32 output (the
// kernels have those pairs); any other mix is computed in the output type.
mx::Dtype scale_type(mx::Dtype scales, mx::Dtype out) {
  return scales == out || out == mx::float32 ? scales : out;
}

} // namespace

void Dequantize::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  const auto& s = stream();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype();
  auto w = prepared(inputs[0], mx::uint32, s);
  auto scales = prepared(inputs[1], t, s);
  auto biases = prepared(inputs[2], t, s);
  const int row_len = out.shape(-1);
  const int64_t rows = out.size() / row_len;
  const int ppr = row_len / affine::codes_per_pack(bits_);
  const auto p = plan::dequantize(bits_, to_plan(t), rows, ppr);
  auto& enc = mx::metal::get_command_encoder(s);
  use_kernel(enc, p, s);
  enc.set_input_array(w, 0);
  enc.set_input_array(scales, 1);
  enc.set_input_array(biases, 2);
  enc.set_output_array(out, 3);
  enc.set_bytes(ppr, 4);
  enc.set_bytes(group_size_, 5);
  launch(enc, p);
}

void QMatmul::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& s = stream();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype(); // promote_types(x, scales)
  const auto st = scale_type(inputs[2].dtype(), t);
  auto x = prepared(inputs[0], t, s);
  auto w = prepared(inputs[1], mx::uint32, s);
  auto scales = prepared(inputs[2], st, s);
  auto biases = prepared(inputs[3], st, s);
  const int k = x.shape(-1);
  const int n = out.shape(-1);
  const int m = static_cast<int>(x.size() / k);
  const auto p = plan::qmatmul(bits_, to_plan(t), to_plan(st), m, n);
  auto& enc = mx::metal::get_command_encoder(s);
  use_kernel(enc, p, s);
  enc.set_input_array(x, 0);
  enc.set_input_array(w, 1);
  enc.set_input_array(scales, 2);
  enc.set_input_array(biases, 3);
  enc.set_output_array(out, 4);
  enc.set_bytes(m, 5);
  enc.set_bytes(n, 6);
  enc.set_bytes(k, 7);
  enc.set_bytes(group_size_, 8);
  launch(enc, p);
}

// Inputs {x (bx, m, k), w (experts, n, .), scales, biases, lhs, rhs}; lhs and
// rhs share the batch shape. Few rows: jang_gather_qmv, one grid row per
// output row. Many rows: route the batch entries by rhs, then
// jang_gather_qmm over each expert's rows (plan::use_sorted decides).
void GatherQMM::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& s = stream();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype(); // promote_types(x, scales)
  const auto st = scale_type(inputs[2].dtype(), t);
  auto x = prepared(inputs[0], t, s);
  auto w = prepared(inputs[1], mx::uint32, s);
  auto scales = prepared(inputs[2], st, s);
  auto biases = prepared(inputs[3], st, s);
  auto lhs = prepared(inputs[4], mx::uint32, s);
  auto rhs = prepared(inputs[5], mx::uint32, s);
  const int bx = x.shape(0);
  const int m = x.shape(1);
  const int k = x.shape(2);
  const int experts = w.shape(0);
  const int n = w.shape(1);
  const int64_t entries = lhs.size();
  const auto p =
      plan::gather_qmm(bits_, to_plan(t), to_plan(st), entries, m, n, experts);
  auto& enc = mx::metal::get_command_encoder(s);
  const bool sorted = plan::use_sorted(entries * m, experts);
  std::optional<std::pair<mx::array, mx::array>> routed;
  if (sorted) {
    routed = route(enc, rhs, experts, s);
  }
  use_kernel(enc, p, s);
  enc.set_input_array(x, 0);
  enc.set_input_array(w, 1);
  enc.set_input_array(scales, 2);
  enc.set_input_array(biases, 3);
  enc.set_output_array(out, 4);
  enc.set_bytes(m, 5);
  enc.set_bytes(n, 6);
  enc.set_bytes(k, 7);
  enc.set_bytes(group_size_, 8);
  enc.set_input_array(lhs, 9);
  enc.set_input_array(sorted ? routed->second : rhs, 10);
  enc.set_bytes(bx, 11);
  enc.set_bytes(experts, 12);
  if (sorted) {
    enc.set_input_array(routed->first, 13);
  }
  launch(enc, p);
}

// Inputs {x (t, k), gate_w, gate_scales, gate_biases, up_w, up_scales,
// up_biases, ids (t, top_k)}. Few (token, slot) rows: jang_moe_gate_up, one
// grid row per slot. Many (prefill): route the slots by expert, then
// jang_moe_gate_up_sorted over each expert's slots (plan::use_sorted decides).
void MoeGateUp::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  const auto& s = stream();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype();
  auto x = prepared(inputs[0], t, s);
  auto ids = prepared(inputs[7], mx::uint32, s);
  std::vector<mx::array> q;
  for (int i = 1; i <= 6; ++i) {
    q.push_back(prepared(inputs[i], i % 3 == 1 ? mx::uint32 : t, s));
  }
  const int k = x.shape(-1);
  const int hidden = out.shape(-1);
  const int top_k = ids.shape(-1);
  const int experts = inputs[1].shape(0);
  const int64_t slots = ids.size();
  const auto p = plan::moe_gate_up(
      gate_bits_, up_bits_, to_plan(t), slots, hidden, experts);
  auto& enc = mx::metal::get_command_encoder(s);
  const bool sorted = plan::use_sorted(slots, experts);
  std::optional<std::pair<mx::array, mx::array>> routed;
  if (sorted) {
    routed = route(enc, ids, experts, s);
  }
  use_kernel(enc, p, s);
  enc.set_input_array(x, 0);
  enc.set_input_array(sorted ? routed->second : ids, 1);
  for (int i = 0; i < 6; ++i) {
    enc.set_input_array(q[i], 2 + i);
  }
  enc.set_output_array(out, 8);
  enc.set_bytes(top_k, 9);
  enc.set_bytes(experts, 10);
  enc.set_bytes(hidden, 11);
  enc.set_bytes(k, 12);
  enc.set_bytes(gate_group_size_, 13);
  enc.set_bytes(up_group_size_, 14);
  if (sorted) {
    enc.set_input_array(routed->first, 15);
  }
  launch(enc, p);
}

} // namespace jang

