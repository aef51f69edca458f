// Public C++ API of jang: operations on MLX arrays.
#pragma once

#include <optional>
#include <string>

#include "mlx/array.h"
#include "mlx/utils.h"

namespace jang {

namespace mx = mlx::core;

/// Dequantize MLX affine-quantized weights: out = scale * q + bias.
///
/// `w` is uint32 (..., n * bits / 32) holding one little-endian bitstream per
/// row; `scales` and `biases` are (..., n / group_size) in float32, float16 or
/// bfloat16, which is also the output dtype. bits in {2,3,4,5,6,8},
/// group_size in {32,64,128}. Bit-exact with mx.dequantize. Throws
/// std::invalid_argument on bad arguments.
mx::array dequantize(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size,
    mx::StreamOrDevice s = {});

/// Quantized matrix product: x @ dequantize(w, scales, biases).T, computed in
/// fp32 without materializing the dequantized matrix.
///
/// `x` is (..., k) in float32, float16 or bfloat16 (any strides); `w` is the
/// uint32 (n, k * bits / 32) matrix and `scales`, `biases` are (n, k /
/// group_size), as for dequantize. The result is (..., n) in
/// promote_types(x.dtype, scales.dtype), like mx.quantized_matmul with
/// transpose=True. Differentiable in x, scales and biases; vmap and compile
/// work. Throws std::invalid_argument naming the bad argument.
mx::array qmatmul(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int bits,
    int group_size,
    mx::StreamOrDevice s = {});

/// Quantized matmul against gathered matrices, like mx.gather_qmm with
/// transpose=True: `w` is (e, n, k * bits / 32) (leading dims flattened into
/// e), `scales` / `biases` (e, n, k / group_size), `x` is (..., m, k). The
/// batch shape is broadcast(x.shape[:-2], lhs_indices.shape,
/// rhs_indices.shape); out[i] = x[lhs[i]] @ dequantize(w[rhs[i]]).T, shape
/// batch + (m, n). Missing lhs_indices mean "each x batch element in order";
/// missing rhs_indices mean "w's batch elements in order". Weights of each
/// expert are read once for all the rows that use it. Rows whose indices are
/// out of range produce zeros.
mx::array gather_qmm(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    std::optional<mx::array> lhs_indices,
    std::optional<mx::array> rhs_indices,
    int bits,
    int group_size,
    mx::StreamOrDevice s = {});

/// Mixture-of-experts gate and up projections with SwiGLU in one pass:
///   out[..., j, :] = silu(x[...] @ G[e].T) * (x[...] @ U[e].T), e =
///   expert_ids[..., j]
/// with G, U the dequantized (experts, hidden, k) gate and up matrices, which
/// may have different bits and group sizes. `x` is (..., k), `expert_ids` is
/// (..., top_k) integer with the same leading shape; the result is
/// (..., top_k, hidden) in promote_types(x.dtype, gate_scales.dtype). The down
/// projection is gather_qmm on the result.
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
    mx::StreamOrDevice s = {});

/// The instruction set jang's CPU matmul kernels use now ("avx512", "avx2",
/// "neon", "scalar").
std::string cpu_kernel_isa();

/// Force the CPU kernels onto "scalar", "avx2", "avx512" or "neon" ("auto" =
/// best available); returns the previous choice. For testing and benchmarking.
/// Throws std::invalid_argument if this CPU lacks the instruction set.
std::string set_cpu_kernel_isa(const std::string& name);

/// Threads the CPU kernels use (JANG_NUM_THREADS, default: all cores).
int cpu_num_threads();

/// Best SIMD instruction set this CPU offers to jang's kernels:
/// "avx512", "avx2", "neon" or "scalar".
std::string cpu_simd_level();

/// Whether this build of jang carries Metal kernels (jang.metallib).
bool metal_enabled();

/// Whether this build carries CUDA kernels (MLX's CUDA backend).
bool cuda_enabled();

/// The MLX version jang was compiled against ("major.minor.patch").
std::string mlx_version_built();

} // namespace jang
