// CUDA kernels of Top-K selection by magnitude (the algorithm and its steps: comm/topk_radix.h),
// called in this order by topk_abs_indices_tensor_ops (comm/topk_select.cpp) for a CUDA x when
// the kernels are enabled (comm/cuda_kernels_switch.h). Plain C++: the caller allocates the
// buffers (as tensors on x's device) and computes the prefix sums between the last two calls.
//
// Contract: x holds n floats on the current CUDA device, 0 < k < n < 2^31. Every call runs on
// `stream` (a cudaStream_t) and returns a cudaError_t value (0 = launched).
#pragma once
#include <cstdint>

namespace condense::topk_radix {

// Finds T and need: three histogram passes and their digit selections. hist: 3 x 2048 int32,
// zeroed; selection: 2 int32 (a topk_radix::Selection), written.
int cuda_topk_threshold(const float* x, int64_t n, int64_t k, int32_t* hist, int32_t* selection, void* stream);
// counts[tile] = keys above T in the tile, counts[tiles + tile] = keys equal to T;
// tiles = ceil(n / kTile).
int cuda_topk_tile_counts(const float* x, int64_t n, const int32_t* selection, int32_t* counts, void* stream);
// Writes the k indices, ascending, into out. inclusive: the inclusive prefix sums of counts'
// two rows (2 x tiles int64).
int cuda_topk_write(const float* x, int64_t n, const int32_t* selection, const int32_t* counts,
                    const int64_t* inclusive, int32_t* out, void* stream);

}  // namespace condense::topk_radix
