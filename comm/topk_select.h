// Exact top-k-by-magnitude selection for gradient compression (sparsified all-reduce / top-k
// SGD: the k largest |g| of a flat gradient are sent as (index, value) pairs).
//
// topk_abs_indices(x, k) returns the indices of the k entries of x with the largest |x|,
// exactly k of them, as an int32 tensor sorted ascending. The result is a deterministic
// function of x: ties at the k-th magnitude go to the lower indices, so every rank that
// selects from the same x gets the same indices, whatever the thread count.
//
// Magnitude order: |x| as a float, with -0 == +0, and NaN (any sign, any payload) counted as
// one magnitude larger than +inf. So NaN entries are always selected first (torch::topk also
// orders NaN above every number), and among NaNs, as among other ties, lower indices win.
//
// Requirements (checked, condense::Error otherwise): x is a contiguous 1-D float32 CPU tensor
// with fewer than 2^31 elements, and 0 <= k <= x.numel().
//
// Cost: one pass over x (parallel over up to at::get_num_threads() threads for large x) plus
// work proportional to the candidates it collects (k plus a few percent for gradient-like
// data); see topk_select.cpp for the algorithm. Unlike torch::topk(x.abs(), k) it makes no
// |x| copy and never sorts the selected entries. Memory: 8 bytes per candidate; inputs whose
// magnitudes are mostly tied at the k-th value (e.g. all zeros) collect most of x.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

namespace condense {

at::Tensor topk_abs_indices(const at::Tensor& x, int64_t k);

// The same function of x (same indices, same ascending order, same magnitude order and ties)
// computed with ATen tensor ops, on any device: the selection for CUDA buckets (and, on CPU,
// what tests compare with topk_abs_indices). Requirements as above except the device; the
// result is on x's device. Cost: about ten passes over x plus at::topk. On CUDA, when
// condense's kernels are enabled (comm/cuda_kernels_switch.h), it runs them instead
// (comm/topk_radix.h), no host synchronization: for large x (2^18 elements or more, k up to
// about n / 8) the CPU's algorithm (a sampled threshold, one compaction pass over x collecting
// the candidates, radix select among them; workspace about 0.42 bytes per element at k = n /
// 100), else radix select and ordered compaction in five passes over x.
at::Tensor topk_abs_indices_tensor_ops(const at::Tensor& x, int64_t k);

namespace detail {
// For tests: the same selection with its internal choices forced.
struct TopkSelectOptions {
  // Tried as the collection threshold before the sampled ones (a too-high first guess
  // exercises the retry path).
  std::optional<float> first_threshold;
  // Use the portable SSE2/scalar candidate scan even where AVX-512 is available.
  bool portable_scan = false;
};
at::Tensor topk_abs_indices(const at::Tensor& x, int64_t k, const TopkSelectOptions& options);
// The CUDA kernels (condense::Error without them), with the sampled path planned for
// n >= sampled_min_n (0: wherever it applies; INT64_MAX: never). x on CUDA, 0 < k < n.
at::Tensor topk_abs_indices_cuda_kernels(const at::Tensor& x, int64_t k, int64_t sampled_min_n);
// For benchmarks: the kernels' steps timed by CUDA events (waits for the device), as JSON members
// `"step": milliseconds, ...` (comm/topk_cuda_kernels.h, cuda_topk_profile).
std::string topk_cuda_kernels_profile(const at::Tensor& x, int64_t k, int64_t sampled_min_n);
}  // namespace detail

}  // namespace condense
