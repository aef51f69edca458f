// eval_gpu of every primitive in builds without GPU kernels (CMake compiles
// this file only when neither Metal nor CUDA is built). The ops refuse a GPU
// stream before a node is built (check_stream), so these only guard misuse.
#include <stdexcept>

#include "jang/primitives.h"

namespace jang {

#define JANG_NO_GPU(Primitive, op)                                             \
  void Primitive::eval_gpu(const std::vector<mx::array>&, mx::array&) {        \
    throw std::runtime_error(                                                  \
        "[" op "] this build of jang has no GPU kernels");                     \
  }

JANG_NO_GPU(Dequantize, "jang.dequantize")
JANG_NO_GPU(QMatmul, "jang.qmatmul")
JANG_NO_GPU(GatherQMM, "jang.gather_qmm")
JANG_NO_GPU(MoeGateUp, "jang.moe_gate_up")

} // namespace jang
