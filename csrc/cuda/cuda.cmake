# jang's CUDA kernels (JANG_CUDA, see CMakeLists.txt). Included before
# find_package(MLX): MLX's CUDA config looks for the CUDA toolkit and cuDNN,
# and its headers include fmt, so both are located here first.
#
#   CUDNN_INCLUDE_PATH / CUDNN_LIBRARY_PATH  default: the nvidia-cudnn wheel of
#                                            the build interpreter
#   JANG_FMT_INCLUDE_DIR                     default: found (Debian libfmt-dev,
#                                            or FMT_INCLUDE_DIR in the environment)
#   CMAKE_CUDA_ARCHITECTURES                 default: 80-real;90 (A100, H100, PTX)

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

if(NOT CUDNN_INCLUDE_PATH)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import glob, os, sys\nfor p in sys.path:\n    for h in glob.glob(os.path.join(p, 'nvidia', '**', 'cudnn.h'), recursive=True):\n        print(os.path.dirname(h)); sys.exit(0)\nsys.exit(1)"
    OUTPUT_VARIABLE _jang_cudnn_inc
    RESULT_VARIABLE _jang_cudnn_result
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_jang_cudnn_result EQUAL 0)
    set(CUDNN_INCLUDE_PATH "${_jang_cudnn_inc}")
    get_filename_component(_jang_cudnn_root "${_jang_cudnn_inc}" DIRECTORY)
    if(NOT CUDNN_LIBRARY_PATH)
      set(CUDNN_LIBRARY_PATH "${_jang_cudnn_root}/lib")
    endif()
  endif()
endif()
message(STATUS "jang: cuDNN headers ${CUDNN_INCLUDE_PATH}, libraries ${CUDNN_LIBRARY_PATH}")

find_path(JANG_FMT_INCLUDE_DIR fmt/format.h HINTS ENV FMT_INCLUDE_DIR)
if(NOT JANG_FMT_INCLUDE_DIR)
  message(FATAL_ERROR
    "jang: MLX's CUDA headers need fmt (apt install libfmt-dev, or set "
    "FMT_INCLUDE_DIR to a folder holding fmt/format.h)")
endif()

# Called after find_package(MLX) with the C++ library target: the kernels go
# into a static library of their own (nvcc flags, the CUDA runtime linked
# statically), the host side into `target`.
function(jang_add_cuda target)
  # One small instance file per width, activation type and matmul kernel, so
  # that they compile in parallel; the widths are JANG_FOR_EACH_BITS's
  # (csrc/jang/affine.h), the one list of them.
  set(_jang_affine ${CMAKE_CURRENT_SOURCE_DIR}/csrc/jang/affine.h)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_jang_affine})
  file(STRINGS ${_jang_affine} _jang_bits_line REGEX "^#define JANG_FOR_EACH_BITS\\(")
  string(REGEX MATCHALL "X\\(([0-9]+)," _jang_bits_calls "${_jang_bits_line}")
  string(REGEX REPLACE "X\\(([0-9]+)," "\\1" _jang_bits "${_jang_bits_calls}")
  if(NOT _jang_bits)
    message(FATAL_ERROR "jang: no widths found in ${_jang_affine} (JANG_FOR_EACH_BITS)")
  endif()
  set(_jang_cu ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/kernels.cu)
  foreach(JANG_INSTANCE_BITS IN LISTS _jang_bits)
    foreach(JANG_TYPE f16 bf16)
      foreach(JANG_KERNEL qmv qmt)
        string(COMPARE EQUAL ${JANG_TYPE} bf16 JANG_INSTANCE_BF16)
        string(COMPARE EQUAL ${JANG_KERNEL} qmt JANG_INSTANCE_TILED)
        set(_file ${CMAKE_CURRENT_BINARY_DIR}/cuda/${JANG_KERNEL}_b${JANG_INSTANCE_BITS}_${JANG_TYPE}.cu)
        configure_file(${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/qmm_instance.cu.in ${_file} @ONLY)
        list(APPEND _jang_cu ${_file})
      endforeach()
    endforeach()
  endforeach()
  message(STATUS "jang: CUDA matmul instances for widths ${_jang_bits}")
  add_library(jang_cuda STATIC ${_jang_cu})
  set_target_properties(jang_cuda PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    CUDA_STANDARD 20
    CUDA_STANDARD_REQUIRED ON
    CUDA_RUNTIME_LIBRARY Static)
  target_include_directories(jang_cuda PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
  target_compile_options(jang_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
  target_link_libraries(jang_cuda PUBLIC CUDA::cudart_static)

  target_sources(${target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/eval_gpu.cpp)
  target_compile_definitions(${target} PRIVATE JANG_CUDA FMT_HEADER_ONLY)
  target_include_directories(${target} PRIVATE
    ${CUDAToolkit_INCLUDE_DIRS} ${JANG_FMT_INCLUDE_DIR})
  target_link_libraries(${target} PRIVATE jang_cuda)
  # The driver API (stream-ordered pools); where the toolkit has no libcuda
  # stub the symbols resolve at load time, from the libcuda libmlx needs too.
  if(TARGET CUDA::cuda_driver)
    target_link_libraries(${target} PRIVATE CUDA::cuda_driver)
  endif()
endfunction()
