// Public C++ API of jang: operations on MLX arrays.
#pragma once

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

/// Best SIMD instruction set this CPU offers to jang's kernels:
/// "avx512", "avx2", "neon" or "scalar".
std::string cpu_simd_level();

/// Whether this build of jang carries Metal kernels (jang.metallib).
bool metal_enabled();

/// The MLX version jang was compiled against ("major.minor.patch").
std::string mlx_version_built();

} // namespace jang
