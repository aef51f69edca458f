// MLX primitives implemented by jang. One class per op; eval_cpu lives in
// csrc/cpu/, eval_gpu in csrc/metal/ (Apple) or throws where no kernel exists.
#pragma once

#include <vector>

#include "mlx/primitives.h"

namespace jang {

namespace mx = mlx::core;

/// Output shape of dequantize, after validating every argument. Throws
/// std::invalid_argument naming the offending argument.
mx::Shape dequantize_output_shape(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size);

class Dequantize : public mx::UnaryPrimitive {
 public:
  Dequantize(mx::Stream stream, int bits, int group_size)
      : mx::UnaryPrimitive(stream), bits_(bits), group_size_(group_size) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;

  bool is_equivalent(const mx::Primitive& other) const override;

  const char* name() const override {
    return "JangDequantize";
  }

  int bits() const {
    return bits_;
  }
  int group_size() const {
    return group_size_;
  }

 private:
  int bits_;
  int group_size_;
};

} // namespace jang
