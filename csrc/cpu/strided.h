// Row access into MLX arrays of any strides (views, broadcasts, transposes).
#pragma once

#include <cstdint>
#include <vector>

#include "mlx/array.h"

namespace jang::cpu {

namespace mx = mlx::core;

/// Element offset of row `row` of `a`, where a row is the last dimension.
inline int64_t row_offset(const mx::array& a, int64_t row) {
  if (a.flags().row_contiguous) {
    return row * static_cast<int64_t>(a.shape(-1));
  }
  int64_t loc = 0;
  for (int i = static_cast<int>(a.ndim()) - 2; i >= 0; --i) {
    const int64_t dim = a.shape(i);
    loc += (row % dim) * a.strides()[i];
    row /= dim;
  }
  return loc;
}

/// Pointer to row `row` of `a` with unit stride: the array's own memory when
/// its last dimension is contiguous, otherwise a copy in `scratch`.
template <typename T>
const T* contiguous_row(const mx::array& a, int64_t row, std::vector<T>& scratch) {
  const T* base = a.data<T>() + row_offset(a, row);
  const int64_t stride = a.ndim() ? a.strides().back() : 1;
  if (stride == 1) {
    return base;
  }
  const int64_t n = a.shape(-1);
  scratch.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    scratch[i] = base[i * stride];
  }
  return scratch.data();
}

} // namespace jang::cpu
