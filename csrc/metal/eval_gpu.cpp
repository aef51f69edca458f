// eval_gpu of jang's primitives on Metal (Apple silicon only; compiled when
// MLX is built with Metal, which also defines JANG_METAL and so removes the
// throwing stubs in csrc/primitives.cpp and csrc/qmatmul.cpp).
//
// Kernels come from jang.metallib, installed next to libjang; which kernel and
// grid each shape gets is decided by metal/plan.h, the same code the Linux
// emulation tests run the shaders with.
#ifdef JANG_METAL

#include <dlfcn.h>

#include <stdexcept>
#include <string>

#include "mlx/allocator.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"

#include "../../metal/plan.h"
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

void dispatch(
    mx::metal::CommandEncoder& enc,
    const plan::Dispatch& p,
    const mx::Stream& s) {
  enc.set_compute_pipeline_state(kernel(s, p.kernel));
  for (int i = 0; i < 2; ++i) {
    if (p.threadgroup_bytes[i]) {
      enc.set_threadgroup_memory_length(p.threadgroup_bytes[i], i);
    }
  }
  enc.dispatch_threadgroups(
      MTL::Size(p.groups[0], p.groups[1], p.groups[2]),
      MTL::Size(p.threads[0], p.threads[1], p.threads[2]));
}

int codes_per_pack(int bits) {
  switch (bits) {
    case 2:
      return affine::Pack<2>::codes;
    case 3:
      return affine::Pack<3>::codes;
    case 4:
      return affine::Pack<4>::codes;
    case 5:
      return affine::Pack<5>::codes;
    case 6:
      return affine::Pack<6>::codes;
    default:
      return affine::Pack<8>::codes;
  }
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
  const int ppr = row_len / codes_per_pack(bits_);
  auto p = plan::dequantize(bits_, to_plan(t), rows, ppr);
  auto& enc = mx::metal::get_command_encoder(s);
  enc.set_input_array(w, 0);
  enc.set_input_array(scales, 1);
  enc.set_input_array(biases, 2);
  enc.set_output_array(out, 3);
  enc.set_bytes(ppr, 4);
  enc.set_bytes(group_size_, 5);
  dispatch(enc, p, s);
}

void QMatmul::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& s = stream();
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const auto t = out.dtype(); // promote_types(x, scales)
  // Scales stay in their type; an fp32 output with 16-bit scales has its own
  // kernels, any other mix is computed in the output type.
  const auto st = inputs[2].dtype() == t || t == mx::float32 ? inputs[2].dtype()
                                                              : t;
  auto x = prepared(inputs[0], t, s);
  auto w = prepared(inputs[1], mx::uint32, s);
  auto scales = prepared(inputs[2], st, s);
  auto biases = prepared(inputs[3], st, s);
  const int k = x.shape(-1);
  const int n = out.shape(-1);
  const int m = static_cast<int>(x.size() / k);
  auto p = plan::qmatmul(bits_, to_plan(t), to_plan(st), m, n);
  auto& enc = mx::metal::get_command_encoder(s);
  enc.set_input_array(x, 0);
  enc.set_input_array(w, 1);
  enc.set_input_array(scales, 2);
  enc.set_input_array(biases, 3);
  enc.set_output_array(out, 4);
  enc.set_bytes(m, 5);
  enc.set_bytes(n, 6);
  enc.set_bytes(k, 7);
  enc.set_bytes(group_size_, 8);
  dispatch(enc, p, s);
}

void GatherQMM::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[jang.gather_qmm] no Metal kernel yet; run it on the CPU "
      "(stream=mx.cpu)");
}

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
  const int experts = static_cast<int>(inputs[2].size() / inputs[2].shape(-1) / hidden);
  const int64_t slots = ids.size();
  auto p = plan::moe_gate_up(gate_bits_, up_bits_, to_plan(t), slots, hidden);
  auto& enc = mx::metal::get_command_encoder(s);
  enc.set_input_array(x, 0);
  enc.set_input_array(ids, 1);
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
  dispatch(enc, p, s);
}

} // namespace jang

#endif // JANG_METAL
