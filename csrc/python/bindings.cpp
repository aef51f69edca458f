// jang._ext: a thin nanobind layer over the jang C++ library. Shares MLX's
// nanobind domain so mlx.core.array, Stream and Device pass straight through.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unordered_map.h>
#include <nanobind/stl/variant.h>

#include "jang/io.h"
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
      "load_mmap",
      [](const std::string& path) {
        auto loaded = jang::load_safetensors_mmap(path);
        return std::make_tuple(
            std::move(loaded.arrays),
            std::move(loaded.metadata),
            loaded.copied);
      },
      "path"_a,
      R"(Map a .safetensors file and return ``(arrays, metadata, copied)``.

The arrays view the file's pages (no copy); the mapping is private, so
writes never reach the file, and it stays alive while any array does.
``copied`` counts tensors that had to be copied because their data was not
aligned to their element size (never the case for bundles jang writes).

Raises:
    ValueError: naming the file and tensor on a malformed header, unknown
        dtype or out-of-bounds data.)");

  m.def(
      "qmatmul",
      &jang::qmatmul,
      "x"_a,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "bits"_a,
      "group_size"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig(
          "def qmatmul(x: mlx.core.array, w: mlx.core.array, scales: "
          "mlx.core.array, "
          "biases: mlx.core.array, bits: int, group_size: int, *, "
          "stream: mlx.core.Stream | mlx.core.Device | None = None) -> "
          "mlx.core.array"),
      R"(Quantized matmul ``x @ dequantize(w, scales, biases).T`` in fp32.

Args:
    x: ``(..., k)`` float32, float16 or bfloat16, any strides.
    w: uint32 ``(n, k * bits / 32)`` in MLX's affine layout.
    scales: ``(n, k / group_size)`` float32, float16 or bfloat16.
    biases: same shape and dtype as ``scales``.
    bits: 2, 3, 4, 5, 6 or 8.
    group_size: 32, 64 or 128.

Returns:
    ``(..., n)`` in ``promote_types(x.dtype, scales.dtype)``; matches
    ``mx.quantized_matmul(..., transpose=True)`` to fp32 rounding.

Raises:
    ValueError: on unsupported bits or group size, wrong dtypes or
        mismatched shapes.)");

  m.def(
      "gather_qmm",
      &jang::gather_qmm,
      "x"_a,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "lhs_indices"_a = nb::none(),
      "rhs_indices"_a = nb::none(),
      nb::kw_only(),
      "bits"_a,
      "group_size"_a,
      "stream"_a = nb::none(),
      nb::sig(
          "def gather_qmm(x: mlx.core.array, w: mlx.core.array, scales: "
          "mlx.core.array, "
          "biases: mlx.core.array, lhs_indices: mlx.core.array | None = None, "
          "rhs_indices: mlx.core.array | None = None, *, bits: int, "
          "group_size: int, "
          "stream: mlx.core.Stream | mlx.core.Device | None = None) -> "
          "mlx.core.array"),
      R"(Quantized matmul against gathered matrices (``mx.gather_qmm``, transpose=True).

Args:
    x: ``(..., m, k)`` float array.
    w: uint32 ``(e, n, k * bits / 32)``; leading dims are the experts.
    scales, biases: ``(e, n, k / group_size)``.
    lhs_indices: integer indices into x's batch (default: in order).
    rhs_indices: integer indices into w's experts (default: in order).
    bits, group_size: as for :func:`qmatmul`.

Returns:
    ``batch + (m, n)`` with ``batch`` the broadcast of the index shapes;
    entry ``i`` is ``x[lhs[i]] @ dequantize(w[rhs[i]]).T``. Each expert's
    weights are read once for all rows that use it. Out-of-range indices
    give zeros.)");

  m.def(
      "moe_gate_up",
      &jang::moe_gate_up,
      "x"_a,
      "gate_w"_a,
      "gate_scales"_a,
      "gate_biases"_a,
      "up_w"_a,
      "up_scales"_a,
      "up_biases"_a,
      "expert_ids"_a,
      nb::kw_only(),
      "gate_bits"_a,
      "gate_group_size"_a,
      "up_bits"_a,
      "up_group_size"_a,
      "stream"_a = nb::none(),
      nb::sig(
          "def moe_gate_up(x: mlx.core.array, gate_w: mlx.core.array, "
          "gate_scales: mlx.core.array, gate_biases: mlx.core.array, up_w: "
          "mlx.core.array, "
          "up_scales: mlx.core.array, up_biases: mlx.core.array, expert_ids: "
          "mlx.core.array, "
          "*, gate_bits: int, gate_group_size: int, up_bits: int, "
          "up_group_size: int, "
          "stream: mlx.core.Stream | mlx.core.Device | None = None) -> "
          "mlx.core.array"),
      R"(Mixture-of-experts gate and up projections with SwiGLU in one pass.

``out[..., j, :] = silu(x @ G[e].T) * (x @ U[e].T)`` with ``e =
expert_ids[..., j]`` and G, U the dequantized ``(experts, hidden, k)`` gate
and up matrices (their bits and group sizes may differ).

Args:
    x: ``(..., k)`` float array.
    gate_w, gate_scales, gate_biases: the stacked quantized gate projection.
    up_w, up_scales, up_biases: the stacked quantized up projection.
    expert_ids: ``(..., top_k)`` integer, same leading shape as x.

Returns:
    ``(..., top_k, hidden)``; feed it to :func:`gather_qmm` with the down
    projection and ``rhs_indices=expert_ids``.)");

  m.def(
      "cpu_kernel_isa",
      &jang::cpu_kernel_isa,
      "Instruction set the CPU matmul kernels use now: avx512, avx2, neon "
      "or scalar.");
  m.def(
      "set_cpu_kernel_isa",
      &jang::set_cpu_kernel_isa,
      "name"_a,
      "Force the CPU matmul kernels onto 'scalar', 'avx2', 'avx512' (x86-64) "
      "or 'neon' (aarch64) ('auto' = best); "
      "returns the previous choice. Raises ValueError if the CPU lacks it.");
  m.def(
      "cpu_num_threads",
      &jang::cpu_num_threads,
      "Threads the CPU kernels use (JANG_NUM_THREADS, default all cores).");

  m.def(
      "cpu_simd_level",
      &jang::cpu_simd_level,
      "Best SIMD instruction set available to jang's CPU kernels.");
  m.def(
      "metal_enabled",
      &jang::metal_enabled,
      "Whether this build carries Metal kernels.");
  m.def(
      "cuda_enabled",
      &jang::cuda_enabled,
      "Whether this build carries CUDA kernels (MLX's CUDA backend).");
  m.def(
      "mlx_version_built",
      &jang::mlx_version_built,
      "MLX version the extension was compiled against.");
}
