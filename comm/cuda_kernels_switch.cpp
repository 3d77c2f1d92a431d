#include "comm/cuda_kernels_switch.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

#if CONDENSE_WITH_CUDA_KERNELS
#include <cuda_runtime_api.h>
#endif

namespace condense {

bool cuda_kernels_built() {
#if CONDENSE_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

bool cuda_kernels_enabled() {
  if (!cuda_kernels_built()) return false;
  const char* env = std::getenv("CONDENSE_CUDA_KERNELS");
  return !(env && std::strcmp(env, "0") == 0);
}

void check_cuda_launch(int err, const char* who) {
  if (err == 0) return;
#if CONDENSE_WITH_CUDA_KERNELS
  fail("{}: CUDA kernel launch failed: {}", who, cudaGetErrorString(static_cast<cudaError_t>(err)));
#else
  fail("{}: CUDA kernel launch failed (error {})", who, err);
#endif
}

}  // namespace condense
