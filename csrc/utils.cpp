#include "utils.h"

#include <sstream>
#include <stdexcept>

#include "mlx/ops.h"

#include "jang/affine.h"
#include "jang/ops.h"
#include "jang/primitives.h"

namespace jang::detail {

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

#define JANG_LIST_VALUE(V, ...) ", " #V
std::string supported_bits() {
  return std::string(JANG_FOR_EACH_BITS(JANG_LIST_VALUE, _)).substr(2);
}

std::string supported_group_sizes() {
  return std::string(JANG_FOR_EACH_GROUP_SIZE(JANG_LIST_VALUE, _)).substr(2);
}
#undef JANG_LIST_VALUE

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

mx::Shape
qmatmul_shape(const std::vector<mx::array>& inputs, int bits, int group_size) {
  const char* op = "jang.qmatmul";
  const auto& x = inputs[0];
  const auto& w = inputs[1];
  const auto& scales = inputs[2];
  const auto& biases = inputs[3];
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

mx::array arange_u32(int64_t n, const mx::Stream& s) {
  return mx::arange(0, static_cast<int>(n), 1, mx::uint32, s);
}

} // namespace jang::detail
