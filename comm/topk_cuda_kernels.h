// CUDA kernels of Top-K selection by magnitude (the algorithm and its steps: comm/topk_radix.h),
// called by topk_abs_indices_tensor_ops (comm/topk_select.cpp) for a CUDA x when the kernels are
// enabled (comm/cuda_kernels_switch.h). Plain C++: the caller allocates the workspace and the
// output (as tensors on x's device).
//
// Contract: x holds n floats on the current CUDA device, 0 < k < n < 2^31. Every call runs on
// `stream` (a cudaStream_t), returns a cudaError_t value (0 = launched) and never waits for the
// device. sampled_min_n: the sampled path is planned for n >= it (topk_radix::plan_sample;
// kSampledMinN by default, 0 forces it wherever it applies, INT64_MAX forbids it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace condense::topk_radix {

// Bytes of device workspace that cuda_topk needs for k of n (the candidates' buffers are about
// 3 x 8 bytes x n x rank / m on the sampled path: 0.42 bytes per element at k = n / 100).
size_t cuda_topk_workspace_bytes(int64_t n, int64_t k, int64_t sampled_min_n);
// Writes the k indices, ascending, into out (k int32). workspace: at least
// cuda_topk_workspace_bytes(n, k, sampled_min_n) bytes, 256-byte aligned, contents ignored.
int cuda_topk(const float* x, int64_t n, int64_t k, int64_t sampled_min_n, void* workspace, size_t workspace_bytes,
              int32_t* out, void* stream);
// cuda_topk with an event after each step, then a wait for the stream (for benchmarks only):
// report becomes `"memset": ms, "sample": ms, ...` (JSON members, milliseconds per step; the
// gated-off path's steps are there too, costing their launches).
int cuda_topk_profile(const float* x, int64_t n, int64_t k, int64_t sampled_min_n, void* workspace,
                      size_t workspace_bytes, int32_t* out, void* stream, std::string& report);

}  // namespace condense::topk_radix
