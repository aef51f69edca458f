// Backend-independent parts of jang's primitives: shapes, equivalence,
// vectorization, and eval_gpu where this build has no GPU kernel.
#include <stdexcept>

#include "mlx/ops.h"

#include "jang/ops.h"
#include "jang/primitives.h"

namespace jang {

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

#if !defined(JANG_METAL) && !defined(JANG_CUDA)
void Dequantize::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[jang.dequantize] this build of jang has no GPU kernels");
}
#endif

} // namespace jang
