// Zero-copy safetensors loading: one private mapping per file, one MLX base
// array over the whole mapping, and every tensor a view into it.
//
// On Metal the base buffer comes from allocator::make_buffer (no-copy
// newBufferWithBytesNoCopy on the page-aligned mapping). On the CPU backend
// MLX has no no-copy constructor, but its allocator's Buffer is a pointer one
// size_t header before the data; we wrap the mapping the same way, after
// checking that layout on a real allocation. The mapping is MAP_PRIVATE and
// writable, so an in-place (donated) MLX op copies the page instead of
// touching the file.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <stdexcept>

#include "mlx/allocator.h"

#include "io/json_header.h"
#include "jang/io.h"

namespace jang {

namespace {

struct Mapping {
  void* ptr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (ptr && ptr != MAP_FAILED) {
      munmap(ptr, size);
    }
  }
};

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw std::invalid_argument("[jang.load_mmap] " + path + ": " + what);
}

bool parse_dtype(const std::string& name, mx::Dtype& dtype) {
  static const std::pair<const char*, mx::Dtype> table[] = {
      {"F32", mx::float32},
      {"F16", mx::float16},
      {"BF16", mx::bfloat16},
      {"F64", mx::float64},
      {"U32", mx::uint32},
      {"I32", mx::int32},
      {"U16", mx::uint16},
      {"I16", mx::int16},
      {"U8", mx::uint8},
      {"I8", mx::int8},
      {"U64", mx::uint64},
      {"I64", mx::int64},
      {"BOOL", mx::bool_},
  };
  for (const auto& [n, d] : table) {
    if (name == n) {
      dtype = d;
      return true;
    }
  }
  return false;
}

// Bytes between an MLX CPU Buffer's ptr() and its raw_ptr(), or -1 when the
// allocator is not the header-prefixed CPU allocator.
std::ptrdiff_t cpu_buffer_header() {
  static const std::ptrdiff_t header = [] {
    auto data = mx::allocator::malloc(64);
    auto buffer = data.buffer();
    auto delta = static_cast<char*>(buffer.raw_ptr()) -
        static_cast<char*>(buffer.ptr());
    if (delta != static_cast<std::ptrdiff_t>(sizeof(size_t)) ||
        *static_cast<size_t*>(buffer.ptr()) != 64) {
      return std::ptrdiff_t{-1};
    }
    return delta;
  }();
  return header;
}

mx::array base_array(const std::shared_ptr<Mapping>& mapping) {
  const mx::ShapeElem n = static_cast<mx::ShapeElem>(mapping->size);
  auto buffer = mx::allocator::make_buffer(mapping->ptr, mapping->size);
  if (buffer.ptr() != nullptr) {
    mx::allocator::Data data(buffer, [mapping](mx::allocator::Buffer b) {
      mx::allocator::release(b);
    });
    return mx::array(std::move(data), {n}, mx::uint8);
  }
  const auto header = cpu_buffer_header();
  if (header < 0) {
    throw std::runtime_error(
        "[jang.load_mmap] this MLX backend offers no zero-copy buffers");
  }
  mx::allocator::Buffer wrapped(static_cast<char*>(mapping->ptr) - header);
  mx::allocator::Data data(wrapped, [mapping](mx::allocator::Buffer) {});
  return mx::array(std::move(data), {n}, mx::uint8);
}

mx::array view_of(
    const mx::array& base,
    size_t byte_offset,
    const mx::Shape& shape,
    mx::Dtype dtype) {
  mx::array out(shape, dtype, nullptr, {});
  mx::Strides strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) {
    strides[i] = strides[i + 1] * shape[i + 1];
  }
  size_t size = 1;
  mx::ShapeElem max_dim = 1;
  for (auto d : shape) {
    size *= d;
    max_dim = std::max(max_dim, d);
  }
  mx::array::Flags flags;
  flags.contiguous = true;
  flags.row_contiguous = true;
  flags.col_contiguous = size <= 1 || static_cast<mx::ShapeElem>(size) == max_dim;
  out.copy_shared_buffer(
      base, strides, flags, size, static_cast<int64_t>(byte_offset / mx::size_of(dtype)));
  out.set_status(mx::array::Status::available);
  return out;
}

} // namespace

MappedTensors load_safetensors_mmap(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    bad_file(path, std::string("cannot open: ") + std::strerror(errno));
  }
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    bad_file(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  const size_t file_size = static_cast<size_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    bad_file(path, "not a safetensors file (shorter than 8 bytes)");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = file_size;
  mapping->ptr =
      mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->ptr == MAP_FAILED) {
    mapping->ptr = nullptr;
    bad_file(path, std::string("mmap failed: ") + std::strerror(errno));
  }
  const auto* bytes = static_cast<const unsigned char*>(mapping->ptr);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | bytes[i];
  }
  if (header_len > file_size - 8) {
    bad_file(
        path,
        "header length " + std::to_string(header_len) + " exceeds the file (" +
            std::to_string(file_size) + " bytes)");
  }
  io::Json header;
  try {
    header = io::JsonParser(
                 std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len))
                 .parse();
  } catch (const std::invalid_argument& e) {
    bad_file(path, e.what());
  }
  if (header.kind != io::Json::Kind::Object) {
    bad_file(path, "header is not a JSON object");
  }
  const size_t data_start = 8 + header_len;
  const size_t data_len = file_size - data_start;

  MappedTensors result;
  std::optional<mx::array> base;
  for (const auto& [name, entry] : header.object) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.object) {
        if (v.kind == io::Json::Kind::String) {
          result.metadata[k] = v.string;
        }
      }
      continue;
    }
    const auto* dtype_j = entry.find("dtype");
    const auto* shape_j = entry.find("shape");
    const auto* offsets_j = entry.find("data_offsets");
    if (!dtype_j || dtype_j->kind != io::Json::Kind::String || !shape_j ||
        shape_j->kind != io::Json::Kind::Array || !offsets_j ||
        offsets_j->kind != io::Json::Kind::Array || offsets_j->array.size() != 2) {
      bad_file(path, "tensor " + name + ": malformed header entry");
    }
    mx::Dtype dtype = mx::uint8;
    if (!parse_dtype(dtype_j->string, dtype)) {
      bad_file(path, "tensor " + name + ": unsupported dtype " + dtype_j->string);
    }
    mx::Shape shape;
    size_t count = 1;
    for (const auto& d : shape_j->array) {
      if (!d.is_integer || d.integer < 0 || d.integer > (int64_t{1} << 40)) {
        bad_file(path, "tensor " + name + ": bad shape");
      }
      shape.push_back(static_cast<mx::ShapeElem>(d.integer));
      count *= static_cast<size_t>(d.integer);
    }
    const auto& b = offsets_j->array[0];
    const auto& e = offsets_j->array[1];
    if (!b.is_integer || !e.is_integer || b.integer < 0 || e.integer < b.integer ||
        static_cast<size_t>(e.integer) > data_len) {
      bad_file(path, "tensor " + name + ": data offsets lie outside the file");
    }
    const size_t nbytes = static_cast<size_t>(e.integer - b.integer);
    if (nbytes != count * mx::size_of(dtype)) {
      bad_file(
          path,
          "tensor " + name + ": " + std::to_string(nbytes) +
              " bytes of data for " + std::to_string(count) + " elements of " +
              dtype_j->string);
    }
    const size_t offset = data_start + static_cast<size_t>(b.integer);
    if (offset % mx::size_of(dtype) != 0) {
      // Misaligned for its element type: the one case that must copy.
      result.arrays.emplace(
          name,
          mx::array(
              const_cast<unsigned char*>(bytes) + offset,
              shape,
              dtype,
              [mapping](void*) {}));
      ++result.copied;
      continue;
    }
    if (!base) {
      base = base_array(mapping);
    }
    result.arrays.emplace(name, view_of(*base, offset, shape, dtype));
  }
  return result;
}

} // namespace jang
