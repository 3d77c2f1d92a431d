# Finds condense's dependencies. All of them arrive through scripts/install.sh: Debian packages
# for the C/C++ libraries and the project virtualenv (.venv) for LibTorch (the PyPI torch wheel).
set(CONDENSE_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python of the virtualenv whose torch wheel provides LibTorch")
if(NOT EXISTS "${CONDENSE_PYTHON}")
  message(FATAL_ERROR "No virtualenv python at ${CONDENSE_PYTHON}: run scripts/install.sh first")
endif()
execute_process(
  COMMAND "${CONDENSE_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE TORCH_CMAKE_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "torch is not importable from ${CONDENSE_PYTHON}: run scripts/install.sh")
endif()
list(APPEND CMAKE_PREFIX_PATH "${TORCH_CMAKE_PREFIX}")

# The wheel is a CUDA build; its CMake config looks for the CUDA toolkit ($CUDA_HOME, else
# /usr/local/cuda).
if(NOT CMAKE_CUDA_COMPILER AND DEFINED ENV{CUDA_HOME} AND EXISTS "$ENV{CUDA_HOME}/bin/nvcc")
  set(CMAKE_CUDA_COMPILER "$ENV{CUDA_HOME}/bin/nvcc")
elseif(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
add_library(condense_torch INTERFACE)
if(CMAKE_CUDA_COMPILER)
  find_package(Torch REQUIRED)
  target_link_libraries(condense_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(condense_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
else()
  # No CUDA toolkit (a CPU machine): the wheel's config would stop here ("uses CUDA but I cannot
  # find the CUDA libraries"), although the wheel carries everything condense compiles and links
  # against: LibTorch's libraries, CUDA ones included, and the CUDA runtime with its headers
  # (site-packages/nvidia/cu13, a dependency of the wheel). So LibTorch is described from those
  # files, with the compile definitions its targets carry; NCCL and condense's CUDA kernels stay
  # off (they need the toolkit), the CUDA tensor paths still build.
  get_filename_component(_torch_dir "${TORCH_CMAKE_PREFIX}/../.." ABSOLUTE)
  get_filename_component(_cuda_dir "${_torch_dir}/../nvidia/cu13" ABSOLUTE)
  set(TORCH_LIBRARY "${_torch_dir}/lib/libtorch.so")
  set(_torch_libs "")
  foreach(f "${_torch_dir}/lib/libtorch.so" "${_torch_dir}/lib/libtorch_cpu.so"
            "${_torch_dir}/lib/libtorch_cuda.so" "${_torch_dir}/lib/libc10_cuda.so"
            "${_torch_dir}/lib/libc10.so" "${_cuda_dir}/lib/libcudart.so.13"
            "${_cuda_dir}/include/cuda_runtime_api.h" "${_cuda_dir}/include/crt/host_config.h"
            "${_cuda_dir}/include/nv/target")
    if(NOT EXISTS "${f}")
      message(FATAL_ERROR "${f} is missing: the torch wheel in ${CONDENSE_PYTHON}'s environment "
                          "lacks what scripts/install.sh installs there (run it: the torch wheel "
                          "and, without a CUDA toolkit, nvidia-cuda-crt and -cccl), or install the CUDA "
                          "toolkit in /usr/local/cuda")
    endif()
    if(f MATCHES "\\.so")
      list(APPEND _torch_libs "${f}")
    endif()
  endforeach()
  message(STATUS "LibTorch from ${_torch_dir} without a CUDA toolkit (NCCL and CUDA kernels off)")
  # As the wheel's own targets do: linked even where no symbol is used directly, since
  # libtorch_cuda's static initializers register the CUDA backend (gcc may pass --as-needed).
  target_link_libraries(condense_torch INTERFACE "-Wl,--no-as-needed" ${_torch_libs} "-Wl,--as-needed")
  target_include_directories(condense_torch SYSTEM INTERFACE "${_torch_dir}/include"
    "${_torch_dir}/include/torch/csrc/api/include" "${_cuda_dir}/include")
  target_compile_definitions(condense_torch INTERFACE
    USE_DISTRIBUTED USE_C10D_GLOO USE_RPC USE_TENSORPIPE)
endif()
add_library(condense::torch ALIAS condense_torch)

find_package(HDF5 REQUIRED COMPONENTS C)
find_package(yaml-cpp REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)

# NCCL: on when the CUDA toolkit's nccl.h/libnccl.so are present and LibTorch is a CUDA build
# (the PyPI wheel is). It compiles and links without a GPU; it only runs where one is.
find_path(NCCL_INCLUDE_DIR nccl.h HINTS /usr/local/cuda/include)
find_library(NCCL_LIBRARY nccl HINTS /usr/local/cuda/lib64)
find_library(CUDART_LIBRARY cudart HINTS /usr/local/cuda/lib64)
set(_nccl_default OFF)
if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY AND CUDART_LIBRARY AND TARGET torch_cuda)
  set(_nccl_default ON)
endif()
option(CONDENSE_WITH_NCCL "Build the NCCL communicator" ${_nccl_default})

# CUDA kernels of condense's own (comm/*_cuda_kernels.cu): on when nvcc is there (the
# torch wheel's CMake config enables CUDA when it finds the toolkit) and LibTorch is a CUDA
# build. Without them CUDA tensors take the tensor-op paths. They run only where a GPU is.
set(_cuda_kernels_default OFF)
if(CMAKE_CUDA_COMPILER AND CUDART_LIBRARY AND TARGET torch_cuda)
  set(_cuda_kernels_default ON)
endif()
option(CONDENSE_WITH_CUDA_KERNELS "Build condense's CUDA kernels (needs nvcc)" ${_cuda_kernels_default})
# sm_80 (A100) and sm_90 (H100, H200), each as machine code and PTX (newer GPUs JIT the PTX).
set(CONDENSE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures of condense's kernels")
if(CONDENSE_WITH_CUDA_KERNELS)
  enable_language(CUDA)
endif()

find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h REQUIRED)
find_library(SENTENCEPIECE_LIBRARY sentencepiece REQUIRED)
find_library(SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train REQUIRED)
add_library(condense_sentencepiece INTERFACE)
target_include_directories(condense_sentencepiece INTERFACE ${SENTENCEPIECE_INCLUDE_DIR})
target_link_libraries(condense_sentencepiece INTERFACE
  ${SENTENCEPIECE_TRAIN_LIBRARY} ${SENTENCEPIECE_LIBRARY})
add_library(condense::sentencepiece ALIAS condense_sentencepiece)

# PCRE2 (Debian libpcre2-dev) runs the byte-level BPE pre-tokenizer regexes: it has Unicode
# properties (\p{L}, \p{N}, White_Space) and lookahead, which std::regex lacks. Only text/ links it.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
add_library(condense::pcre2 ALIAS PkgConfig::PCRE2)

add_library(condense_hdf5 INTERFACE)
target_include_directories(condense_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(condense_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(condense_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} ${HDF5_DEFINITIONS})
add_library(condense::hdf5 ALIAS condense_hdf5)

# The torch wheel bundles fmt 11 headers in its include directory, which would shadow Debian's
# fmt 9 that libspdlog and libfmt are built against. Debian's fmt and spdlog headers are put
# first through a directory of symlinks (torch's public headers do not include fmt).
set(CONDENSE_SYSINC "${CMAKE_BINARY_DIR}/condense_sysinc")
file(MAKE_DIRECTORY "${CONDENSE_SYSINC}")
foreach(lib fmt spdlog)
  file(CREATE_LINK /usr/include/${lib} "${CONDENSE_SYSINC}/${lib}" SYMBOLIC)
endforeach()
include_directories(BEFORE SYSTEM "${CONDENSE_SYSINC}")

# Every condense library links the same third-party set so that all translation units share
# compile definitions, which lets them reuse one precompiled header.
add_library(condense_deps INTERFACE)
target_link_libraries(condense_deps INTERFACE condense::torch condense::hdf5
  condense::sentencepiece fmt::fmt spdlog::spdlog yaml-cpp nlohmann_json::nlohmann_json
  ZLIB::ZLIB Threads::Threads MPI::MPI_C)
# The C API only: without these, mpi.h drags in Open MPI's deprecated C++ bindings.
target_compile_definitions(condense_deps INTERFACE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
if(CONDENSE_WITH_NCCL)
  target_include_directories(condense_deps SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
  target_link_libraries(condense_deps INTERFACE ${NCCL_LIBRARY} ${CUDART_LIBRARY})
  target_compile_definitions(condense_deps INTERFACE CONDENSE_WITH_NCCL=1)
endif()
add_library(condense::deps ALIAS condense_deps)

# OpenMP: condense's own loops (codecs, the decode kernels) use at::parallel_for, a header
# template whose `#pragma omp parallel` runs serially unless the including file is compiled
# with -fopenmp. The runtime must be the one LibTorch already loads (the wheel bundles
# torch/lib/libgomp.so.1): a second OpenMP runtime would start a second thread pool that
# competes with ATen's. So compile with -fopenmp but link the wheel's file by path instead of
# letting the compiler add the system -lgomp; the binaries' RUNPATH has torch/lib first, so the
# one soname resolves to the wheel's copy (`ldd build/condense | grep gomp` shows one line).
get_filename_component(CONDENSE_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
find_file(CONDENSE_TORCH_GOMP libgomp.so.1 PATHS "${CONDENSE_TORCH_LIB_DIR}" NO_DEFAULT_PATH)
if(NOT CONDENSE_TORCH_GOMP)
  message(FATAL_ERROR "No libgomp.so.1 beside ${TORCH_LIBRARY}: condense links the OpenMP "
                      "runtime the torch wheel bundles (torch 2.11's wheel ships it)")
endif()
target_compile_options(condense_deps INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
target_link_libraries(condense_deps INTERFACE "${CONDENSE_TORCH_GOMP}")

# libtorch.so (the 2.11 wheel) exports its own copies of std::filesystem functions, and some of
# them crash (std::filesystem::remove_all jumps to a null pointer). The dynamic linker binds to
# the first library in DT_NEEDED order that defines a symbol, and libtorch comes before
# libstdc++; naming libstdc++ first on every link line makes the system copy win.
add_link_options("LINKER:--push-state,--no-as-needed" -lstdc++ "LINKER:--pop-state")
