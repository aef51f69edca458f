// Op constructors: validate the arguments (messages name the op and the
// shapes), then build the lazy MLX graph node of the primitive.
#include <sstream>
#include <stdexcept>

#include "mlx/ops.h"
#include "mlx/version.h"

#include "jang/affine.h"
#include "jang/ops.h"
#include "jang/primitives.h"
#include "utils.h"

namespace jang {

using namespace detail;

mx::Shape dequantize_output_shape(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size) {
  return quantized_shape(
      "jang.dequantize", w, scales, biases, bits, group_size);
}

mx::Shape quantized_shape(
    const char* op,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size) {
  if (!affine::valid_bits(bits)) {
    bad_argument(
        op,
        "bits must be one of " + supported_bits() + "; got " +
            std::to_string(bits));
  }
  if (!affine::valid_group_size(group_size)) {
    bad_argument(
        op,
        "group_size must be one of " + supported_group_sizes() + "; got " +
            std::to_string(group_size));
  }
  if (w.dtype() != mx::uint32) {
    std::ostringstream os;
    os << "w must be uint32 (packed codes); got " << w.dtype();
    bad_argument(op, os.str());
  }
  check_float(op, "scales", scales);
  if (biases.dtype() != scales.dtype()) {
    std::ostringstream os;
    os << "biases must have the dtype of scales (" << scales.dtype()
       << "); got " << biases.dtype();
    bad_argument(op, os.str());
  }
  if (w.ndim() < 1 || scales.ndim() != w.ndim() || biases.ndim() != w.ndim() ||
      scales.shape() != biases.shape()) {
    bad_argument(
        op,
        "w, scales and biases must have the same number of dimensions and "
        "scales and biases the same shape; got w " +
            shape_str(w.shape()) + ", scales " + shape_str(scales.shape()) +
            ", biases " + shape_str(biases.shape()));
  }
  for (int i = 0; i + 1 < w.ndim(); ++i) {
    if (w.shape(i) != scales.shape(i)) {
      bad_argument(
          op,
          "leading dimensions of w " + shape_str(w.shape()) + " and scales " +
              shape_str(scales.shape()) + " differ");
    }
  }
  const int64_t words = w.shape(-1);
  if ((words * 32) % bits != 0) {
    bad_argument(
        op,
        "the last dimension of w (" + std::to_string(words) +
            " words) does not hold a whole number of " + std::to_string(bits) +
            "-bit codes");
  }
  const int64_t n = words * 32 / bits;
  if (n != static_cast<int64_t>(scales.shape(-1)) * group_size) {
    bad_argument(
        op,
        "w " + shape_str(w.shape()) + " holds " + std::to_string(n) +
            " codes per row at " + std::to_string(bits) + " bits, but scales " +
            shape_str(scales.shape()) + " with group_size " +
            std::to_string(group_size) + " describe " +
            std::to_string(
                static_cast<int64_t>(scales.shape(-1)) * group_size));
  }
  auto out_shape = w.shape();
  out_shape.back() = static_cast<mx::ShapeElem>(n);
  return out_shape;
}

mx::array dequantize(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size,
    mx::StreamOrDevice s) {
  auto out_shape = dequantize_output_shape(w, scales, biases, bits, group_size);
  auto stream = mx::to_stream(s);
  check_stream("jang.dequantize", stream);
  return mx::array(
      std::move(out_shape),
      scales.dtype(),
      std::make_shared<Dequantize>(stream, bits, group_size),
      {w, scales, biases});
}

bool metal_enabled() {
#ifdef JANG_METAL
  return true;
#else
  return false;
#endif
}

bool cuda_enabled() {
#ifdef JANG_CUDA
  return true;
#else
  return false;
#endif
}

std::string mlx_version_built() {
  return std::to_string(MLX_VERSION_MAJOR) + "." +
         std::to_string(MLX_VERSION_MINOR) + "." +
         std::to_string(MLX_VERSION_PATCH);
}

// ------------------------------------------------------------- qmatmul -----

mx::array qmatmul(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size,
    mx::StreamOrDevice s) {
  auto shape = qmatmul_shape({x, w, scales, biases}, bits, group_size);
  auto stream = mx::to_stream(s);
  check_stream("jang.qmatmul", stream);
  return mx::array(
      std::move(shape),
      mx::promote_types(x.dtype(), scales.dtype()),
      std::make_shared<QMatmul>(stream, bits, group_size),
      {x, w, scales, biases});
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

} // namespace jang
