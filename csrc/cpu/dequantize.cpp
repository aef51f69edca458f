// Dequantize::eval_cpu: unpack MLX affine codes row by row.
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#include "cpu/strided.h"
#include "jang/affine.h"
#include "jang/primitives.h"

namespace jang {

namespace {

template <typename T, int BITS>
void dequantize_row(
    const uint32_t* words,
    const T* scales,
    const T* biases,
    T* out,
    int64_t groups,
    int group_size) {
  using P = affine::Pack<BITS>;
  const int packs_per_group = group_size / P::codes;
  uint32_t q[P::codes];
  for (int64_t g = 0; g < groups; ++g) {
    const T s = scales[g];
    const T b = biases[g];
    for (int p = 0; p < packs_per_group; ++p) {
      affine::unpack_pack<BITS>(words, q);
      words += P::words;
      for (int k = 0; k < P::codes; ++k) {
        *out++ = affine::dequant_value<T>(q[k], s, b);
      }
    }
  }
}

template <typename T, int BITS>
void dequantize_all(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    T* out,
    int group_size) {
  const int64_t groups = scales.shape(-1);
  const int64_t row_len = groups * group_size;
  const int64_t rows =
      row_len ? static_cast<int64_t>(scales.size()) / groups : 0;
  std::vector<uint32_t> w_scratch;
  std::vector<T> s_scratch, b_scratch;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row<T, BITS>(
        cpu::contiguous_row(w, r, w_scratch),
        cpu::contiguous_row(scales, r, s_scratch),
        cpu::contiguous_row(biases, r, b_scratch),
        out + r * row_len,
        groups,
        group_size);
  }
}

template <typename T>
void dispatch_bits(
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    T* out,
    int bits,
    int group_size) {
  affine::with_bits(
      bits,
      [&](auto b) {
        dequantize_all<T, decltype(b)::value>(
            w, scales, biases, out, group_size);
      },
      [] { throw std::invalid_argument("[jang.dequantize] unsupported bits"); });
}

} // namespace

void Dequantize::eval_cpu(
    const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& in : inputs) {
    encoder.set_input_array(in);
  }
  encoder.set_output_array(out);
  encoder.dispatch([w = inputs[0],
                    scales = inputs[1],
                    biases = inputs[2],
                    out_ptr = out.data<void>(),
                    dtype = out.dtype(),
                    bits = bits_,
                    group_size = group_size_]() {
    if (dtype == mx::float32) {
      dispatch_bits(
          w, scales, biases, static_cast<float*>(out_ptr), bits, group_size);
    } else if (dtype == mx::float16) {
      dispatch_bits(
          w,
          scales,
          biases,
          static_cast<mx::float16_t*>(out_ptr),
          bits,
          group_size);
    } else if (dtype == mx::bfloat16) {
      dispatch_bits(
          w,
          scales,
          biases,
          static_cast<mx::bfloat16_t*>(out_ptr),
          bits,
          group_size);
    } else {
      throw std::invalid_argument("[jang.dequantize] unsupported output dtype");
    }
  });
}

} // namespace jang
