// Quantize a random matrix with MLX, dequantize it with jang, and check that
// the result is bit-exact with MLX's own dequantize, for every width.
#include <iostream>

#include "jang/ops.h"
#include "mlx/mlx.h"

namespace mx = mlx::core;

int main() {
  mx::random::seed(0);
  const auto w = mx::random::normal({64, 256}, mx::float16);
  bool all_equal = true;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    auto q = mx::quantize(w, 64, bits);
    auto theirs = mx::dequantize(q[0], q[1], q[2], 64, bits);
    auto ours = jang::dequantize(q[0], q[1], q[2], bits, 64);
    const bool equal = mx::array_equal(ours, theirs).item<bool>();
    const float err =
        mx::mean(mx::abs(mx::astype(ours, mx::float32) - mx::astype(w, mx::float32)))
            .item<float>();
    std::cout << bits << "-bit: mean |w - dequant(quant(w))| = " << err
              << ", bit-exact with mx::dequantize: " << (equal ? "yes" : "no")
              << "\n";
    all_equal = all_equal && equal;
  }
  std::cout << "jang built against MLX " << jang::mlx_version_built()
            << ", CPU SIMD: " << jang::cpu_simd_level() << "\n";
  return all_equal ? 0 : 1;
}
