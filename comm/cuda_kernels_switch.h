// Whether condense's own CUDA kernels (comm/*_cuda_kernels.cu: the quantizing codecs and Top-K
// selection) take CUDA tensors, instead of the ATen tensor-op paths that compute the same
// results. Built when nvcc was there at build time (CMake's CONDENSE_WITH_CUDA_KERNELS);
// enabled unless the environment sets CONDENSE_CUDA_KERNELS=0 (read per call: the switch for
// A/B runs, and for ruling the kernels out when a result looks wrong).
#pragma once

namespace condense {

bool cuda_kernels_built();
bool cuda_kernels_enabled();  // built, and CONDENSE_CUDA_KERNELS is not "0"

// Throws condense::Error naming `who` and CUDA's message when `err` (a cudaError_t value that a
// kernel launcher returned) is not 0.
void check_cuda_launch(int err, const char* who);

}  // namespace condense
