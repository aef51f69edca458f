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

/// The same checks for any op taking quantized (w, scales, biases); `op` names
/// the op in the message. Returns the dequantized shape.
mx::Shape quantized_shape(
    const char* op,
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

  std::vector<mx::Shape>
  output_shapes(const std::vector<mx::array>& inputs) override;

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

/// x @ dequantize(w).T; inputs {x, w, scales, biases}.
class QMatmul : public mx::UnaryPrimitive {
public:
  QMatmul(mx::Stream stream, int bits, int group_size)
      : mx::UnaryPrimitive(stream), bits_(bits), group_size_(group_size) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  std::vector<mx::array>
  vjp(const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;

  std::vector<mx::array>
  jvp(const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

  std::vector<mx::Shape>
  output_shapes(const std::vector<mx::array>& inputs) override;

  bool is_equivalent(const mx::Primitive& other) const override;

  const char* name() const override {
    return "JangQMatmul";
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

/// Gathered x @ dequantize(w[e]).T; inputs {x (bx, m, k), w (e, n, kw),
/// scales, biases, lhs (batch), rhs (batch)} with uint32 indices of one shape.
class GatherQMM : public mx::UnaryPrimitive {
public:
  GatherQMM(mx::Stream stream, int bits, int group_size)
      : mx::UnaryPrimitive(stream), bits_(bits), group_size_(group_size) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  std::vector<mx::array>
  vjp(const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;

  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

  std::vector<mx::Shape>
  output_shapes(const std::vector<mx::array>& inputs) override;

  bool is_equivalent(const mx::Primitive& other) const override;

  const char* name() const override {
    return "JangGatherQMM";
  }

private:
  int bits_;
  int group_size_;
};

/// SwiGLU(x @ gate[e].T, x @ up[e].T) per token and expert; inputs {x (t, k),
/// gate_w, gate_scales, gate_biases, up_w, up_scales, up_biases, ids (t,
/// top_k)}.
class MoeGateUp : public mx::UnaryPrimitive {
public:
  MoeGateUp(
      mx::Stream stream,
      int gate_bits,
      int gate_group_size,
      int up_bits,
      int up_group_size)
      : mx::UnaryPrimitive(stream), gate_bits_(gate_bits),
        gate_group_size_(gate_group_size), up_bits_(up_bits),
        up_group_size_(up_group_size) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

  std::vector<mx::Shape>
  output_shapes(const std::vector<mx::array>& inputs) override;

  bool is_equivalent(const mx::Primitive& other) const override;

  const char* name() const override {
    return "JangMoeGateUp";
  }

private:
  int gate_bits_;
  int gate_group_size_;
  int up_bits_;
  int up_group_size_;
};

} // namespace jang
