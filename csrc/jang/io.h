// Zero-copy loading of safetensors files into MLX arrays.
#pragma once

#include <string>
#include <unordered_map>

#include "mlx/array.h"

namespace jang {

namespace mx = mlx::core;

struct MappedTensors {
  /// Arrays viewing the mapped file (no copy), by tensor name.
  std::unordered_map<std::string, mx::array> arrays;
  /// The file's "__metadata__" strings.
  std::unordered_map<std::string, std::string> metadata;
  /// Tensors that had to be copied because their data was not aligned to
  /// their element size (never the case for files jang writes).
  int copied = 0;
};

/// Map a .safetensors file read-only (copy-on-write private mapping) and
/// return arrays that view it. The mapping lives as long as any array does.
/// Throws std::invalid_argument naming the file and tensor on a malformed
/// header, unknown dtype or out-of-bounds data.
MappedTensors load_safetensors_mmap(const std::string& path);

} // namespace jang
