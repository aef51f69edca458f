// Helpers shared by the op constructors (ops.cpp) and the primitives
// (primitives.cpp): argument checks with messages that name the op, shapes.
// Internal: not installed with the public headers in jang/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/stream.h"

namespace jang::detail {

namespace mx = mlx::core;

[[noreturn]] void bad_argument(const char* op, const std::string& what);

// "(2, 3)", "(4,)": a shape as Python prints it, for error messages.
std::string shape_str(const mx::Shape& shape);

// "2, 3, 4, 5, 6, 8": the supported widths (or group sizes), for messages.
std::string supported_bits();
std::string supported_group_sizes();

void check_float(const char* op, const char* name, const mx::array& a);
void check_integer(const char* op, const char* name, const mx::array& a);

// A GPU stream is refused by builds without GPU kernels.
void check_stream(const char* op, const mx::Stream& stream);

int64_t prod(const mx::Shape& shape, int begin, int end);

// The output shape of qmatmul from its inputs {x, w, scales, biases}, after
// checking every argument.
mx::Shape
qmatmul_shape(const std::vector<mx::array>& inputs, int bits, int group_size);

mx::array arange_u32(int64_t n, const mx::Stream& s);

} // namespace jang::detail
