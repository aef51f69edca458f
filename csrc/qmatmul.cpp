// qmatmul, gather_qmm and moe_gate_up: op constructors (argument checks, graph
// nodes) and the backend-independent parts of their primitives (shapes,
// equivalence, vmap, vjp, jvp). eval_cpu lives in csrc/cpu/qmatmul.cpp.
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "mlx/ops.h"
#include "mlx/transforms.h"

#include "jang/affine.h"
#include "jang/ops.h"
#include "jang/primitives.h"

namespace jang {

namespace {

[[noreturn]] void bad_argument(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("[") + op + "] " + what);
}

std::string shape_str(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "") << shape[i];
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

void check_float(const char* op, const char* name, const mx::array& a) {
  if (a.dtype() != mx::float32 && a.dtype() != mx::float16 &&
      a.dtype() != mx::bfloat16) {
    std::ostringstream os;
    os << name << " must be float32, float16 or bfloat16; got " << a.dtype();
    bad_argument(op, os.str());
  }
}

void check_integer(const char* op, const char* name, const mx::array& a) {
  if (!mx::issubdtype(a.dtype(), mx::integer)) {
    std::ostringstream os;
    os << name << " must be an integer array; got " << a.dtype();
    bad_argument(op, os.str());
  }
}

void check_stream(const char* op, const mx::Stream& stream) {
  if (stream.device == mx::Device::gpu && !metal_enabled() && !cuda_enabled()) {
    throw std::runtime_error(
        std::string("[") + op +
        "] this build of jang has no GPU kernels; run it on the CPU "
        "(stream=mx.cpu)");
  }
}

int64_t prod(const mx::Shape& shape, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; ++i) {
    p *= shape[i];
  }
  return p;
}

mx::Shape qmatmul_shape(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size) {
  const char* op = "jang.qmatmul";
  const auto wshape = quantized_shape(op, w, scales, biases, bits, group_size);
  if (w.ndim() != 2) {
    bad_argument(
        op,
        "w must be 2-D (n, k * bits / 32); got shape " + shape_str(w.shape()) +
            " (use gather_qmm for stacked experts)");
  }
  check_float(op, "x", x);
  if (x.ndim() < 1 || x.shape(-1) != wshape[1]) {
    bad_argument(
        op,
        "x " + shape_str(x.shape()) + " must end in k = " +
            std::to_string(wshape[1]) + ", the row length of w " +
            shape_str(w.shape()) + " at " + std::to_string(bits) + " bits");
  }
  auto out = x.shape();
  out.back() = wshape[0];
  return out;
}

// (batch..., m, n) of a gather_qmm node from its internal inputs.
mx::Shape gather_shape(const std::vector<mx::array>& in) {
  auto out = in[4].shape();
  out.push_back(in[0].shape(-2));
  out.push_back(in[1].shape(-2));
  return out;
}

mx::array arange_u32(int64_t n, const mx::Stream& s) {
  return mx::arange(0, static_cast<int>(n), 1, mx::uint32, s);
}

// Move the vmapped axis of `a` to the front, or broadcast an unmapped `a` to
// `batch` copies along a new front axis.
mx::array
to_front(const mx::array& a, int axis, int batch, const mx::Stream& s) {
  if (axis >= 0) {
    return mx::moveaxis(a, axis, 0, s);
  }
  auto shape = a.shape();
  shape.insert(shape.begin(), batch);
  return mx::broadcast_to(mx::expand_dims(a, 0, s), shape, s);
}

int vmap_size(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (axes[i] >= 0) {
      return inputs[i].shape(axes[i]);
    }
  }
  return 1;
}

} // namespace

// ------------------------------------------------------------- qmatmul -----

mx::array qmatmul(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size,
    mx::StreamOrDevice s) {
  auto shape = qmatmul_shape(x, w, scales, biases, bits, group_size);
  auto stream = mx::to_stream(s);
  check_stream("jang.qmatmul", stream);
  return mx::array(
      std::move(shape),
      mx::promote_types(x.dtype(), scales.dtype()),
      std::make_shared<QMatmul>(stream, bits, group_size),
      {x, w, scales, biases});
}

std::vector<mx::Shape>
QMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  return {qmatmul_shape(
      inputs[0], inputs[1], inputs[2], inputs[3], bits_, group_size_)};
}

bool QMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const QMatmul&>(other);
  return bits_ == o.bits_ && group_size_ == o.group_size_;
}

std::vector<mx::array> QMatmul::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const auto s = stream();
  const auto& x = primals[0];
  const auto& w = primals[1];
  const auto& scales = primals[2];
  const auto& biases = primals[3];
  const auto cot = mx::astype(cotangents[0], mx::float32, s);
  std::optional<mx::array> dsb;
  std::vector<mx::array> vjps;
  for (int arg : argnums) {
    if (arg == 0) {
      // dx = cot @ dequantize(w): the values dequantize rounds, in fp32.
      auto wd = mx::astype(
          dequantize(w, scales, biases, bits_, group_size_, s), mx::float32, s);
      vjps.push_back(mx::astype(mx::matmul(cot, wd, s), x.dtype(), s));
    } else if (arg == 1) {
      throw std::invalid_argument(
          "[jang.qmatmul] no gradient with respect to the quantized weights w");
    } else {
      if (!dsb) {
        // d(out)/d(w_dequantized) per element, grouped: (n, groups, group_size)
        auto fc = mx::flatten(cot, 0, -2, s);
        auto fx = mx::astype(mx::flatten(x, 0, -2, s), mx::float32, s);
        auto dw = mx::matmul(mx::swapaxes(fc, -1, -2, s), fx, s);
        dsb = mx::unflatten(dw, -1, {-1, group_size_}, s);
      }
      if (arg == 3) {
        vjps.push_back(
            mx::astype(mx::sum(*dsb, -1, false, s), biases.dtype(), s));
      } else {
        auto codes = dequantize(
            w,
            mx::ones(scales.shape(), mx::float32, s),
            mx::zeros(biases.shape(), mx::float32, s),
            bits_,
            group_size_,
            s);
        codes = mx::unflatten(codes, -1, {-1, group_size_}, s);
        vjps.push_back(
            mx::astype(
                mx::sum(mx::multiply(*dsb, codes, s), -1, false, s),
                scales.dtype(),
                s));
      }
    }
  }
  return vjps;
}

std::vector<mx::array> QMatmul::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  if (argnums.size() != 1 || argnums[0] != 0) {
    throw std::invalid_argument(
        "[jang.qmatmul] jvp is only defined with respect to x");
  }
  return {qmatmul(
      tangents[0],
      primals[1],
      primals[2],
      primals[3],
      bits_,
      group_size_,
      stream())};
}

std::pair<std::vector<mx::array>, std::vector<int>> QMatmul::vmap(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  const auto s = stream();
  const int batch = vmap_size(inputs, axes);
  const auto& x = inputs[0];
  if (axes[1] < 0 && axes[2] < 0 && axes[3] < 0) {
    // Shared weights: the mapped axis of x is one more leading dimension.
    if (axes[0] < static_cast<int>(x.ndim()) - 1) {
      return {
          {qmatmul(x, inputs[1], inputs[2], inputs[3], bits_, group_size_, s)},
          {axes[0]}};
    }
    auto xm = mx::moveaxis(x, axes[0], 0, s);
    return {
        {qmatmul(xm, inputs[1], inputs[2], inputs[3], bits_, group_size_, s)},
        {0}};
  }
  // Mapped weights: one gathered product per batch element.
  auto xm = to_front(x, axes[0], batch, s); // (batch, ..., k)
  auto mid = xm.shape();
  mid.erase(mid.begin());
  mid.pop_back();
  const int k = xm.shape(-1);
  auto x3 = mx::reshape(
      xm, {batch, static_cast<int>(prod(mid, 0, mid.size())), k}, s);
  auto wm = to_front(inputs[1], axes[1], batch, s);
  auto sm = to_front(inputs[2], axes[2], batch, s);
  auto bm = to_front(inputs[3], axes[3], batch, s);
  auto out = gather_qmm(
      x3, wm, sm, bm, std::nullopt, std::nullopt, bits_, group_size_, s);
  auto shape = mid;
  shape.insert(shape.begin(), batch);
  shape.push_back(wm.shape(1));
  return {{mx::reshape(out, shape, s)}, {0}};
}

// ---------------------------------------------------------- gather_qmm -----

mx::array gather_qmm(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    std::optional<mx::array> lhs_indices,
    std::optional<mx::array> rhs_indices,
    int bits,
    int group_size,
    mx::StreamOrDevice s) {
  const char* op = "jang.gather_qmm";
  const auto wshape = quantized_shape(op, w, scales, biases, bits, group_size);
  if (w.ndim() < 3) {
    bad_argument(
        op,
        "w must have leading expert dimensions (e, n, k * bits / 32); got "
        "shape " +
            shape_str(w.shape()));
  }
  check_float(op, "x", x);
  const int n = wshape[wshape.size() - 2];
  const int k = wshape.back();
  if (x.ndim() < 2 || x.shape(-1) != k) {
    bad_argument(
        op,
        "x " + shape_str(x.shape()) + " must be (..., m, k) with k = " +
            std::to_string(k) + ", the row length of w " +
            shape_str(w.shape()) + " at " + std::to_string(bits) + " bits");
  }
  auto stream = mx::to_stream(s);
  check_stream(op, stream);
  const mx::Shape x_batch(x.shape().begin(), x.shape().end() - 2);
  const mx::Shape w_batch(w.shape().begin(), w.shape().end() - 2);
  const int bx = static_cast<int>(prod(x_batch, 0, x_batch.size()));
  const int e = static_cast<int>(prod(w_batch, 0, w_batch.size()));
  if (lhs_indices) {
    check_integer(op, "lhs_indices", *lhs_indices);
  }
  if (rhs_indices) {
    check_integer(op, "rhs_indices", *rhs_indices);
  }
  auto lhs = lhs_indices ? mx::astype(*lhs_indices, mx::uint32, stream)
                         : mx::reshape(arange_u32(bx, stream), x_batch, stream);
  auto rhs = rhs_indices ? mx::astype(*rhs_indices, mx::uint32, stream)
                         : mx::reshape(arange_u32(e, stream), w_batch, stream);
  mx::Shape batch;
  try {
    batch = mx::broadcast_shapes(lhs.shape(), rhs.shape());
  } catch (const std::invalid_argument&) {
    bad_argument(
        op,
        "the batch shapes of x / lhs_indices " + shape_str(lhs.shape()) +
            " and w / rhs_indices " + shape_str(rhs.shape()) +
            " do not broadcast");
  }
  lhs = mx::broadcast_to(lhs, batch, stream);
  rhs = mx::broadcast_to(rhs, batch, stream);
  const int m = x.shape(-2);
  auto x3 = mx::reshape(x, {bx, m, k}, stream);
  auto w3 = mx::reshape(w, {e, n, w.shape(-1)}, stream);
  auto s3 = mx::reshape(scales, {e, n, scales.shape(-1)}, stream);
  auto b3 = mx::reshape(biases, {e, n, biases.shape(-1)}, stream);
  auto out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  return mx::array(
      std::move(out_shape),
      mx::promote_types(x.dtype(), scales.dtype()),
      std::make_shared<GatherQMM>(stream, bits, group_size),
      {x3, w3, s3, b3, lhs, rhs});
}

std::vector<mx::Shape>
GatherQMM::output_shapes(const std::vector<mx::array>& inputs) {
  return {gather_shape(inputs)};
}

bool GatherQMM::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GatherQMM&>(other);
  return bits_ == o.bits_ && group_size_ == o.group_size_;
}

std::vector<mx::array> GatherQMM::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  const auto s = stream();
  std::vector<mx::array> vjps;
  for (int arg : argnums) {
    if (arg != 0) {
      throw std::invalid_argument(
          "[jang.gather_qmm] gradients are only defined with respect to x");
    }
    const auto& x3 = primals[0];
    const auto& lhs = primals[4];
    const auto& rhs = primals[5];
    const int bo = static_cast<int>(lhs.size());
    const int m = x3.shape(1);
    const int k = x3.shape(2);
    const int n = primals[1].shape(1);
    auto wd = mx::astype(
        dequantize(primals[1], primals[2], primals[3], bits_, group_size_, s),
        mx::float32,
        s);
    auto wg = mx::take(wd, mx::flatten(rhs, s), 0, s); // (bo, n, k)
    auto cot =
        mx::reshape(mx::astype(cotangents[0], mx::float32, s), {bo, m, n}, s);
    auto dxb = mx::matmul(cot, wg, s); // (bo, m, k)
    auto dx = mx::scatter_add(
        mx::zeros(x3.shape(), mx::float32, s),
        {mx::flatten(lhs, s)},
        mx::reshape(dxb, {bo, 1, m, k}, s),
        {0},
        s);
    vjps.push_back(mx::astype(dx, x3.dtype(), s));
  }
  return vjps;
}

std::pair<std::vector<mx::array>, std::vector<int>> GatherQMM::vmap(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  const auto s = stream();
  const int batch = vmap_size(inputs, axes);
  auto x = inputs[0];
  auto w = inputs[1];
  auto sc = inputs[2];
  auto bi = inputs[3];
  auto lhs = to_front(inputs[4], axes[4], batch, s);
  auto rhs = to_front(inputs[5], axes[5], batch, s);
  mx::Shape offset_shape(lhs.ndim(), 1);
  offset_shape[0] = batch;
  if (axes[0] >= 0) {
    // Fold the mapped axis into x's batch; shift lhs to each copy's rows.
    auto xm = mx::moveaxis(x, axes[0], 0, s); // (batch, bx, m, k)
    const int bx = xm.shape(1);
    x = mx::reshape(xm, {batch * bx, xm.shape(2), xm.shape(3)}, s);
    auto off = mx::multiply(
        arange_u32(batch, s), mx::array(static_cast<uint32_t>(bx)), s);
    lhs = mx::add(lhs, mx::reshape(off, offset_shape, s), s);
  }
  if (axes[1] >= 0 || axes[2] >= 0 || axes[3] >= 0) {
    auto fold = [&](const mx::array& a, int axis) {
      auto am = to_front(a, axis, batch, s); // (batch, e, n, cols)
      return mx::reshape(
          am, {batch * am.shape(1), am.shape(2), am.shape(3)}, s);
    };
    const int e = to_front(w, axes[1], batch, s).shape(1);
    w = fold(w, axes[1]);
    sc = fold(sc, axes[2]);
    bi = fold(bi, axes[3]);
    auto off = mx::multiply(
        arange_u32(batch, s), mx::array(static_cast<uint32_t>(e)), s);
    rhs = mx::add(rhs, mx::reshape(off, offset_shape, s), s);
  }
  return {{gather_qmm(x, w, sc, bi, lhs, rhs, bits_, group_size_, s)}, {0}};
}

// --------------------------------------------------------- moe_gate_up -----

mx::array moe_gate_up(
    const mx::array& x,
    const mx::array& gate_w,
    const mx::array& gate_scales,
    const mx::array& gate_biases,
    const mx::array& up_w,
    const mx::array& up_scales,
    const mx::array& up_biases,
    const mx::array& expert_ids,
    int gate_bits,
    int gate_group_size,
    int up_bits,
    int up_group_size,
    mx::StreamOrDevice s) {
  const char* op = "jang.moe_gate_up";
  const auto gshape = quantized_shape(
      op, gate_w, gate_scales, gate_biases, gate_bits, gate_group_size);
  const auto ushape =
      quantized_shape(op, up_w, up_scales, up_biases, up_bits, up_group_size);
  if (gate_w.ndim() != 3 || up_w.ndim() != 3) {
    bad_argument(
        op,
        "gate_w and up_w must be 3-D (experts, hidden, k * bits / 32); got " +
            shape_str(gate_w.shape()) + " and " + shape_str(up_w.shape()));
  }
  if (gshape != ushape) {
    bad_argument(
        op,
        "gate and up describe different matrices: " + shape_str(gshape) +
            " and " + shape_str(ushape) + " (experts, hidden, k)");
  }
  check_float(op, "x", x);
  check_integer(op, "expert_ids", expert_ids);
  const int k = gshape[2];
  if (x.ndim() < 1 || x.shape(-1) != k) {
    bad_argument(
        op,
        "x " + shape_str(x.shape()) + " must end in k = " + std::to_string(k));
  }
  if (expert_ids.ndim() != x.ndim() ||
      !std::equal(
          x.shape().begin(), x.shape().end() - 1, expert_ids.shape().begin())) {
    bad_argument(
        op,
        "expert_ids " + shape_str(expert_ids.shape()) +
            " must be x's leading shape plus top_k; x is " +
            shape_str(x.shape()));
  }
  auto stream = mx::to_stream(s);
  check_stream(op, stream);
  const int t = static_cast<int>(prod(x.shape(), 0, x.ndim() - 1));
  const int top_k = expert_ids.shape(-1);
  auto x2 = mx::reshape(x, {t, k}, stream);
  auto ids2 = mx::reshape(
      mx::astype(expert_ids, mx::uint32, stream), {t, top_k}, stream);
  auto dtype = mx::promote_types(
      mx::promote_types(x.dtype(), gate_scales.dtype()), up_scales.dtype());
  auto out = mx::array(
      {t, top_k, gshape[1]},
      dtype,
      std::make_shared<MoeGateUp>(
          stream, gate_bits, gate_group_size, up_bits, up_group_size),
      {x2, gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, ids2});
  auto shape = expert_ids.shape();
  shape.push_back(gshape[1]);
  return mx::reshape(out, shape, stream);
}

std::vector<mx::Shape>
MoeGateUp::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[7].shape(0), inputs[7].shape(1), inputs[1].shape(1)}};
}

bool MoeGateUp::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const MoeGateUp&>(other);
  return gate_bits_ == o.gate_bits_ && gate_group_size_ == o.gate_group_size_ &&
         up_bits_ == o.up_bits_ && up_group_size_ == o.up_group_size_;
}

std::pair<std::vector<mx::array>, std::vector<int>> MoeGateUp::vmap(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  for (int i = 1; i < 7; ++i) {
    if (axes[i] >= 0) {
      throw std::invalid_argument(
          "[jang.moe_gate_up] vmap over the expert weights is not supported");
    }
  }
  const auto s = stream();
  const int batch = vmap_size(inputs, axes);
  auto x = to_front(inputs[0], axes[0], batch, s);   // (batch, t, k)
  auto ids = to_front(inputs[7], axes[7], batch, s); // (batch, t, top_k)
  auto out = moe_gate_up(
      x,
      inputs[1],
      inputs[2],
      inputs[3],
      inputs[4],
      inputs[5],
      inputs[6],
      ids,
      gate_bits_,
      gate_group_size_,
      up_bits_,
      up_group_size_,
      s);
  return {{out}, {0}};
}

#if !defined(JANG_METAL) && !defined(JANG_CUDA)
void QMatmul::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[jang.qmatmul] this build of jang has no GPU kernels");
}
void GatherQMM::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[jang.gather_qmm] this build of jang has no GPU kernels");
}
void MoeGateUp::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[jang.moe_gate_up] this build of jang has no GPU kernels");
}
#endif

} // namespace jang
