// CUDA kernels of Top-K selection; contract in comm/topk_cuda_kernels.h, the steps in
// comm/topk_radix.h (shared with the CPU replay in tests/test_cuda_comm.cpp).
#include <cuda_runtime.h>

#include <algorithm>

#include "comm/topk_cuda_kernels.h"
#include "comm/topk_radix.h"

namespace condense::topk_radix {
namespace {

constexpr int kHistThreads = 256;

// Pass p's histogram: per block in shared memory, then added into the global one.
__global__ void __launch_bounds__(kHistThreads)
    histogram_kernel(const uint32_t* bits, int64_t n, int pass, const Selection* selection, int32_t* hist) {
  __shared__ int32_t local[kMaxBins];
  const int bins = 1 << digit_width(pass);
  for (int b = threadIdx.x; b < bins; b += kHistThreads) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = pass == 0 ? 0u : selection->prefix;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kHistThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kHistThreads + threadIdx.x; i < n; i += stride) {
    const uint32_t key = key_of(bits[i]);
    if (in_prefix(key, pass, prefix)) atomicAdd(&local[digit_of(key, pass)], 1);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += kHistThreads)
    if (local[b]) atomicAdd(&hist[b], local[b]);
}

// One thread: 2048 additions at most, a few microseconds.
__global__ void select_kernel(const int32_t* hist, int pass, Selection* selection, int32_t k) {
  Selection s = pass == 0 ? Selection{0u, k} : *selection;
  select_digit(hist, pass, s);
  *selection = s;
}

__global__ void __launch_bounds__(kTileThreads)
    tile_count_kernel(const uint32_t* bits, int64_t n, const Selection* selection, int32_t* counts, int64_t tiles) {
  const int64_t tile = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x);
  const int64_t lo = tile * kTile, hi = min(n, lo + kTile);
  const uint32_t threshold = selection->prefix;
  int above = 0, ties = 0;
  for (int64_t i = lo + t; i < hi; i += kTileThreads) {  // strided: coalesced
    const uint32_t key = key_of(bits[i]);
    above += key > threshold;
    ties += key == threshold;
  }
  __shared__ int32_t sa[kTileThreads], se[kTileThreads];
  sa[t] = above;
  se[t] = ties;
  __syncthreads();
  for (int w = kTileThreads / 2; w > 0; w /= 2) {
    if (t < w) {
      sa[t] += sa[t + w];
      se[t] += se[t + w];
    }
    __syncthreads();
  }
  if (t == 0) {
    counts[tile] = sa[0];
    counts[tiles + tile] = se[0];
  }
}

// Exclusive prefix sum of one value per thread over the block (Hillis-Steele in shared memory).
__device__ int block_exclusive_scan(int v, int* scratch) {
  const int t = static_cast<int>(threadIdx.x);
  scratch[t] = v;
  __syncthreads();
  for (int offset = 1; offset < kTileThreads; offset *= 2) {
    const int add = t >= offset ? scratch[t - offset] : 0;
    __syncthreads();
    scratch[t] += add;
    __syncthreads();
  }
  const int inclusive = scratch[t];
  __syncthreads();  // scratch is reused by the next scan
  return inclusive - v;
}

__global__ void __launch_bounds__(kTileThreads)
    write_kernel(const uint32_t* bits, int64_t n, const Selection* selection, const int32_t* counts,
                 const int64_t* inclusive, int64_t tiles, int32_t* out) {
  const int64_t tile = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x);
  const int64_t lo = tile * kTile, hi = min(n, lo + kTile);
  const uint32_t threshold = selection->prefix;
  const int64_t need = selection->remaining;
  const int64_t ties_before = inclusive[tiles + tile] - counts[tiles + tile];
  // Nothing taken here: the same answer for every thread of the block, so it leaves whole.
  if (counts[tile] == 0 && (counts[tiles + tile] == 0 || ties_before >= need)) return;
  const int64_t taken_before = inclusive[tile] - counts[tile] + min(need, ties_before);
  int64_t i0, i1;
  chunk_bounds(lo, hi, t, i0, i1);
  __shared__ int scratch[kTileThreads];
  const int64_t tie_base = ties_before + block_exclusive_scan(chunk_ties(bits, i0, i1, threshold), scratch);
  const int taken = chunk_taken(bits, i0, i1, threshold, need, tie_base);
  const int64_t pos = taken_before + block_exclusive_scan(taken, scratch);
  chunk_write(bits, i0, i1, threshold, need, tie_base, out, pos);
}

int64_t tiles_of(int64_t n) { return (n + kTile - 1) / kTile; }

}  // namespace

int cuda_topk_threshold(const float* x, int64_t n, int64_t k, int32_t* hist, int32_t* selection, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const auto* bits = reinterpret_cast<const uint32_t*>(x);
  auto* sel = reinterpret_cast<Selection*>(selection);
  // Enough blocks to fill any current GPU, few enough that merging block histograms is cheap.
  const int64_t blocks = std::min<int64_t>(2048, (n + 16 * kHistThreads - 1) / (16 * kHistThreads));
  for (int pass = 0; pass < kPasses; ++pass) {
    histogram_kernel<<<static_cast<unsigned>(blocks), kHistThreads, 0, s>>>(bits, n, pass, sel,
                                                                           hist + pass * kMaxBins);
    select_kernel<<<1, 1, 0, s>>>(hist + pass * kMaxBins, pass, sel, static_cast<int32_t>(k));
  }
  return cudaGetLastError();
}

int cuda_topk_tile_counts(const float* x, int64_t n, const int32_t* selection, int32_t* counts, void* stream) {
  const int64_t tiles = tiles_of(n);
  tile_count_kernel<<<static_cast<unsigned>(tiles), kTileThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const uint32_t*>(x), n, reinterpret_cast<const Selection*>(selection), counts, tiles);
  return cudaGetLastError();
}

int cuda_topk_write(const float* x, int64_t n, const int32_t* selection, const int32_t* counts,
                    const int64_t* inclusive, int32_t* out, void* stream) {
  const int64_t tiles = tiles_of(n);
  write_kernel<<<static_cast<unsigned>(tiles), kTileThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const uint32_t*>(x), n, reinterpret_cast<const Selection*>(selection), counts, inclusive,
      tiles, out);
  return cudaGetLastError();
}

}  // namespace condense::topk_radix
