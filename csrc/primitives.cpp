// Backend-independent parts of jang's primitives: shapes, equivalence and
// the transformations (vjp, jvp, vmap). eval_cpu lives in csrc/cpu/, eval_gpu
// in csrc/metal/ and csrc/cuda/ (csrc/no_gpu.cpp where there is no GPU).
#include <optional>
#include <stdexcept>

#include "mlx/ops.h"
#include "mlx/transforms.h"

#include "jang/ops.h"
#include "jang/primitives.h"
#include "utils.h"

namespace jang {

using namespace detail;

namespace {

// (batch..., m, n) of a gather_qmm node from its internal inputs.
mx::Shape gather_shape(const std::vector<mx::array>& in) {
  auto out = in[4].shape();
  out.push_back(in[0].shape(-2));
  out.push_back(in[1].shape(-2));
  return out;
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

// ----------------------------------------------------------- dequantize -----

std::vector<mx::Shape> Dequantize::output_shapes(
    const std::vector<mx::array>& inputs) {
  return {dequantize_output_shape(
      inputs[0], inputs[1], inputs[2], bits_, group_size_)};
}

bool Dequantize::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const Dequantize&>(other);
  return bits_ == o.bits_ && group_size_ == o.group_size_;
}

std::pair<std::vector<mx::array>, std::vector<int>> Dequantize::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  int batch = -1;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (axes[i] >= 0) {
      batch = inputs[i].shape(axes[i]);
      break;
    }
  }
  std::vector<mx::array> moved;
  moved.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (axes[i] >= 0) {
      moved.push_back(mx::moveaxis(inputs[i], axes[i], 0, stream()));
    } else {
      auto shape = inputs[i].shape();
      shape.insert(shape.begin(), batch);
      moved.push_back(mx::broadcast_to(
          mx::expand_dims(inputs[i], 0, stream()), shape, stream()));
    }
  }
  return {
      {dequantize(
          moved[0], moved[1], moved[2], bits_, group_size_, stream())},
      {0}};
}

// ------------------------------------------------------------- qmatmul -----

std::vector<mx::Shape>
QMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  return {qmatmul_shape(inputs, bits_, group_size_)};
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

} // namespace jang
