// jang._ext: a thin nanobind layer over the jang C++ library. Shares MLX's
// nanobind domain so mlx.core.array, Stream and Device pass straight through.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "jang/ops.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "jang's compiled MLX primitives.";

  m.def(
      "dequantize",
      &jang::dequantize,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "bits"_a,
      "group_size"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig(
          "def dequantize(w: mlx.core.array, scales: mlx.core.array, "
          "biases: mlx.core.array, bits: int, group_size: int, *, "
          "stream: mlx.core.Stream | mlx.core.Device | None = None) "
          "-> mlx.core.array"),
      R"(Dequantize MLX affine-quantized weights: ``scale * q + bias``.

Args:
    w: uint32 array ``(..., n * bits / 32)``; each row one little-endian
        bitstream of ``bits``-bit codes.
    scales: ``(..., n / group_size)`` float32, float16 or bfloat16.
    biases: same shape and dtype as ``scales``.
    bits: 2, 3, 4, 5, 6 or 8.
    group_size: 32, 64 or 128.

Returns:
    ``(..., n)`` array in the dtype of ``scales``, bit-exact with
    ``mx.dequantize``.

Raises:
    ValueError: on unsupported bits or group size, wrong dtypes or
        mismatched shapes.)");

  m.def(
      "cpu_simd_level",
      &jang::cpu_simd_level,
      "Best SIMD instruction set available to jang's CPU kernels.");
  m.def(
      "metal_enabled",
      &jang::metal_enabled,
      "Whether this build carries Metal kernels.");
  m.def(
      "mlx_version_built",
      &jang::mlx_version_built,
      "MLX version the extension was compiled against.");
}
