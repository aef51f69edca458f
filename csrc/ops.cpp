// Op constructors: validate arguments, then build the lazy MLX graph node.
#include <sstream>
#include <stdexcept>

#include "mlx/ops.h"
#include "mlx/version.h"

#include "jang/affine.h"
#include "jang/ops.h"
#include "jang/primitives.h"

namespace jang {

namespace {

[[noreturn]] void bad_argument(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("[") + op + "] " + what);
}

bool is_float_dtype(mx::Dtype dtype) {
  return dtype == mx::float32 || dtype == mx::float16 || dtype == mx::bfloat16;
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

} // namespace

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
        "bits must be one of 2, 3, 4, 5, 6, 8; got " + std::to_string(bits));
  }
  if (!affine::valid_group_size(group_size)) {
    bad_argument(
        op,
        "group_size must be one of 32, 64, 128; got " +
            std::to_string(group_size));
  }
  if (w.dtype() != mx::uint32) {
    std::ostringstream os;
    os << "w must be uint32 (packed codes); got " << w.dtype();
    bad_argument(op, os.str());
  }
  if (!is_float_dtype(scales.dtype())) {
    std::ostringstream os;
    os << "scales must be float32, float16 or bfloat16; got " << scales.dtype();
    bad_argument(op, os.str());
  }
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
  if (stream.device == mx::Device::gpu && !metal_enabled() && !cuda_enabled()) {
    throw std::runtime_error(
        "[jang.dequantize] this build of jang has no GPU kernels; "
        "run it on the CPU (stream=mx.cpu)");
  }
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

} // namespace jang
