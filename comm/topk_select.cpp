// Exact top-k by magnitude: sample a threshold, collect candidates in one parallel pass, then
// select exactly k among the candidates by radix selection on the float bits.
//
// Magnitudes are compared as integer keys: for a float with bits b, key = b & 0x7fffffff is
// |x|'s bit pattern, and for non-negative floats the unsigned order of the bit patterns is the
// numeric order (+0 < denormals < normals < +inf). Every NaN is mapped to one key just above
// +inf (0x7f800001), which makes NaN the largest magnitude and all NaNs equal.
//
// 1. Threshold. From a stratified random sample of m = n/256 entries (clamped to [2^12,
//    2^16]; m/4 equal strata, from each a run of 4 consecutive entries at a uniformly drawn
//    position; fixed-seed generator, so the sample positions are a function of n only) take
//    the sample key of rank r = p*m + 4*sqrt(m*p*(1-p)) + 4 from the top (p = k/n) as the
//    threshold t. For entries in random order the number of sample entries above the true
//    k-th magnitude is Binomial(m, <= p) (stratification only narrows it), so t <= the k-th
//    magnitude except with probability far below 1e-4, while the candidates (entries with
//    key >= t) exceed k by about four standard deviations of the estimate (at m = 2^16:
//    about 5% at p = 10%, 15% at 1%, 50% at 0.1%; relatively more at smaller m, where the
//    extra candidates are few in absolute terms). This is the sampling step of Floyd and
//    Rivest's selection algorithm ("Expected time bounds for selection", CACM 18(3), 1975);
//    Deep Gradient Compression (Lin et al., ICLR 2018) also estimates its top-k threshold
//    from a sample. Here the threshold only bounds a candidate set: the selection is exact.
// 2. Collection. x is cut into fixed chunks (independent of the thread count); each chunk
//    appends the keys and indices of its entries with key >= t to its own buffer, so the
//    buffers in chunk order hold the candidates in index order. The scan takes 16 entries at
//    a time: with AVX-512 (detected at run time) a compare mask and two compress-stores,
//    else SSE2 compares and a loop over the set bits of the hit mask. If fewer than k
//    candidates arrive (an unlucky sample, or data adversarial to it), the pass is repeated
//    with a lower sample threshold (rank 4(r + 1)) and finally with t = 0, which collects
//    everything, so the result is always exact.
// 3. Selection. The k-th largest candidate key T is found by two 16-bit radix histograms
//    (high half, then low half within the chosen bucket), built per thread and merged; small
//    candidate sets use std::nth_element instead. With G = #(key > T), the answer is every
//    candidate with key > T plus the first k - G candidates with key == T in index order
//    (ties toward lower indices).
// 4. Output. Per-chunk counts of (> T) and (== T), prefix sums, then each chunk writes its
//    indices at its offset: the output is ascending without any sort.
//
// Threads: up to at::get_num_threads(), from ATen's OpenMP pool (at::parallel_for; condense is
// compiled with -fopenmp against the wheel's runtime), for inputs large enough to pay for them.
#include "comm/topk_select.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "comm/cuda_kernels_switch.h"
#include "comm/topk_radix.h"
#include "core/error.h"

#if CONDENSE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "comm/topk_cuda_kernels.h"
#endif

namespace condense {
namespace {

// The magnitude key (|x|'s bits, every NaN one above +inf), shared with the CUDA kernels.
using topk_radix::kAbsMask;
using topk_radix::kNanKey;
using topk_radix::key_of;
constexpr int64_t kMinChunk = int64_t{1} << 16;  // entries per collection chunk (at least)
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kSampleMinSize = int64_t{1} << 12;
constexpr int64_t kSampleMaxSize = int64_t{1} << 16;
constexpr int64_t kSampleRun = 4;  // consecutive entries per sampled position
constexpr int64_t kSampleMinN = int64_t{1} << 15;  // below this, collect everything
constexpr int64_t kRadixMinCandidates = int64_t{1} << 15;  // below this, nth_element
constexpr int64_t kParallelMinWork = int64_t{1} << 18;     // entries; below, one thread

// One chunk's candidates, keys and indices apart: uninitialized arrays grown by doubling.
struct Buffer {
  std::unique_ptr<uint32_t[]> keys;
  std::unique_ptr<int32_t[]> index;
  int64_t capacity = 0;
  int64_t size = 0;

  void reserve(int64_t want) {
    if (want <= capacity) return;
    std::unique_ptr<uint32_t[]> k(new uint32_t[static_cast<size_t>(want)]);
    std::unique_ptr<int32_t[]> i(new int32_t[static_cast<size_t>(want)]);
    if (size > 0) {
      std::memcpy(k.get(), keys.get(), static_cast<size_t>(size) * sizeof(uint32_t));
      std::memcpy(i.get(), index.get(), static_cast<size_t>(size) * sizeof(int32_t));
    }
    keys = std::move(k);
    index = std::move(i);
    capacity = want;
  }
  // Room for at least `more` entries after the first `used`.
  void make_room(int64_t used, int64_t more) {
    size = used;
    if (used + more > capacity) reserve(std::max(2 * capacity, used + more + 64));
  }
};

// Calls f(c0, c1) on contiguous ranges that cover [0, count), on up to at::get_num_threads()
// threads of ATen's pool (the caller's included) when `work` (entries touched) is large enough;
// an exception in any range is rethrown here (at::parallel_for's contract).
template <typename F>
void parallel_ranges(int64_t count, int64_t work, const F& f) {
  int64_t threads = 1;
  if (work >= kParallelMinWork && !at::in_parallel_region())
    threads = std::min<int64_t>(std::max(1, at::get_num_threads()), count);
  if (threads <= 1) {
    if (count > 0) f(0, count);
    return;
  }
  // One task per thread, each a contiguous share of [0, count).
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) f(t * count / threads, (t + 1) * count / threads);
  });
}

// The j-th output (from 0) of the splitmix64 generator started at `seed`: the generator adds a
// constant to its state per draw, so any draw is computed directly (and in parallel).
uint64_t splitmix64_at(uint64_t seed, uint64_t j) {
  uint64_t z = seed + (j + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Collection thresholds from a sample of x, highest first; 0 (collect all) when exhausted.
class Thresholds {
 public:
  Thresholds(const uint32_t* bits, int64_t n, int64_t k) {
    if (n < kSampleMinN) return;
    // m / kSampleRun strata of at least 4 * kSampleRun entries (m <= n / 4); from each, a run
    // of kSampleRun consecutive entries at a uniform position inside it (runs touch fewer
    // pages and cache lines than single entries, which halves the sampling time at 16M).
    const int64_t strata =
        std::min(std::clamp(n / 256, kSampleMinSize, kSampleMaxSize), n / 4) / kSampleRun;
    const int64_t m = strata * kSampleRun;
    const double p = static_cast<double>(k) / static_cast<double>(n);
    const double mean = p * static_cast<double>(m);
    rank_ = static_cast<int64_t>(std::ceil(mean + 4.0 * std::sqrt(mean * (1.0 - p)) + 4.0));
    if (rank_ >= m - 1) return;  // k is most of x: collect everything
    sample_.resize(static_cast<size_t>(m));
    // Each stratum's read is a cache miss somewhere in x, so the strata are split over the
    // threads (the positions do not depend on how: splitmix64_at).
    parallel_ranges(strata, n, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t lo = j * n / strata;
        const uint64_t len = static_cast<uint64_t>((j + 1) * n / strata - lo - (kSampleRun - 1));
        // (32 random bits * len) >> 32 is uniform enough on [0, len) and needs no division.
        const uint64_t draw = splitmix64_at(0x5eed70b4c0de5eedull, static_cast<uint64_t>(j));
        const int64_t pos = lo + static_cast<int64_t>(((draw >> 32) * len) >> 32);
        for (int64_t q = 0; q < kSampleRun; ++q)
          sample_[static_cast<size_t>(j * kSampleRun + q)] = key_of(bits[pos + q]);
      }
    });
  }

  // The next threshold: the sample key at rank r, then at rank 4(r + 1), then 0. A threshold
  // is never repeated: if a lower rank gives no lower key, the next one is 0.
  uint32_t next() {
    const int64_t m = static_cast<int64_t>(sample_.size());
    while (attempt_ < 2 && m > 0) {
      const int64_t from = attempt_ == 0 ? 0 : rank_ + 1;  // [0, from) is already >= rank_'s key
      if (attempt_ == 1) rank_ = 4 * (rank_ + 1);
      ++attempt_;
      if (rank_ >= m - 1) break;
      std::nth_element(sample_.begin() + from, sample_.begin() + rank_, sample_.end(),
                       std::greater<uint32_t>());
      const uint32_t t = sample_[static_cast<size_t>(rank_)];
      if (t == 0 || t >= last_) break;
      share_ = std::min(1.0, 1.1 * static_cast<double>(rank_ + 1) / static_cast<double>(m));
      return last_ = t;
    }
    attempt_ = 2;
    share_ = 1.0;
    return last_ = 0;
  }
  // The expected share of entries at or above the last threshold (for buffer sizes).
  double share() const { return share_; }

 private:
  std::vector<uint32_t> sample_;
  int64_t rank_ = 0;
  int attempt_ = 0;
  double share_ = 1.0;
  uint32_t last_ = std::numeric_limits<uint32_t>::max();
};

// Appends the key and index of every entry in [begin, end) with key >= t to `out`, in index
// order. Portable version: SSE2 compares 16 entries at a time, then a loop over the hits.
void collect_portable(const uint32_t* bits, int64_t begin, int64_t end, uint32_t t,
                      Buffer& out) {
  int64_t pos = out.size;
  uint32_t* keys = out.keys.get();
  int32_t* index = out.index.get();
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
#if defined(__SSE2__)
    const __m128i abs_mask = _mm_set1_epi32(static_cast<int32_t>(kAbsMask));
    // key >= t  <=>  key > t - 1 as signed 32-bit integers: keys and t are below 2^31.
    const __m128i below = _mm_set1_epi32(static_cast<int32_t>(t) - 1);
    const __m128i* p = reinterpret_cast<const __m128i*>(bits + i);
    const __m128i h0 = _mm_cmpgt_epi32(_mm_and_si128(_mm_loadu_si128(p), abs_mask), below);
    const __m128i h1 = _mm_cmpgt_epi32(_mm_and_si128(_mm_loadu_si128(p + 1), abs_mask), below);
    const __m128i h2 = _mm_cmpgt_epi32(_mm_and_si128(_mm_loadu_si128(p + 2), abs_mask), below);
    const __m128i h3 = _mm_cmpgt_epi32(_mm_and_si128(_mm_loadu_si128(p + 3), abs_mask), below);
    // Bit j of mask: entry i + j is a candidate.
    uint32_t mask = static_cast<uint32_t>(_mm_movemask_epi8(
        _mm_packs_epi16(_mm_packs_epi32(h0, h1), _mm_packs_epi32(h2, h3))));
#else
    uint32_t mask = 0;
    for (int j = 0; j < 16; ++j)
      mask |= static_cast<uint32_t>((bits[i + j] & kAbsMask) >= t) << j;
#endif
    if (mask == 0) continue;
    if (pos + 16 > out.capacity) {
      out.make_room(pos, 16);
      keys = out.keys.get();
      index = out.index.get();
    }
    do {
      const int j = __builtin_ctz(mask);
      mask &= mask - 1;
      keys[pos] = key_of(bits[i + j]);
      index[pos] = static_cast<int32_t>(i + j);
      ++pos;
    } while (mask != 0);
  }
  out.size = pos;
  for (; i < end; ++i) {
    const uint32_t key = key_of(bits[i]);
    if (key < t) continue;
    out.make_room(out.size, 1);
    out.keys[static_cast<size_t>(out.size)] = key;
    out.index[static_cast<size_t>(out.size)] = static_cast<int32_t>(i);
    ++out.size;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define CONDENSE_TOPK_AVX512 1
// AVX-512 version of collect_portable: per 16 entries one compare mask and two compress-
// stores, no branches on the data.
__attribute__((target("avx512f,popcnt"))) void collect_avx512(const uint32_t* bits,
                                                               int64_t begin, int64_t end,
                                                               uint32_t t, Buffer& out) {
  const __m512i abs_mask = _mm512_set1_epi32(static_cast<int32_t>(kAbsMask));
  const __m512i nan_key = _mm512_set1_epi32(static_cast<int32_t>(kNanKey));
  const __m512i threshold = _mm512_set1_epi32(static_cast<int32_t>(t));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t pos = out.size;
  uint32_t* keys = out.keys.get();
  int32_t* index = out.index.get();
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    if (pos + 16 > out.capacity) {  // the stores below write 16 lanes
      out.make_room(pos, 16);
      keys = out.keys.get();
      index = out.index.get();
    }
    const __m512i magnitude = _mm512_and_si512(_mm512_loadu_si512(bits + i), abs_mask);
    // min(magnitude, nan_key) in all lanes (the unmasked _mm512_min_epu32 trips GCC 12's
    // -Wmaybe-uninitialized inside its header).
    const __m512i key = _mm512_mask_min_epu32(magnitude, 0xffff, magnitude, nan_key);
    const __mmask16 hit = _mm512_cmpge_epu32_mask(key, threshold);
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i)), lane);
    _mm512_storeu_si512(keys + pos, _mm512_maskz_compress_epi32(hit, key));
    _mm512_storeu_si512(index + pos, _mm512_maskz_compress_epi32(hit, idx));
    pos += __builtin_popcount(static_cast<uint32_t>(hit));
  }
  out.size = pos;
  if (i < end) collect_portable(bits, i, end, t, out);
}
#endif

void collect(const uint32_t* bits, int64_t begin, int64_t end, uint32_t t, bool portable,
             Buffer& out) {
#if defined(CONDENSE_TOPK_AVX512)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt");
  if (avx512 && !portable) return collect_avx512(bits, begin, end, t, out);
#endif
  collect_portable(bits, begin, end, t, out);
}

// Sums, over every candidate of every chunk, a histogram of bin(key) for keys where
// bin(key) >= 0, in parallel with one private histogram per thread.
template <typename Bin>
std::vector<int64_t> histogram(const std::vector<Buffer>& chunks, int64_t count, size_t bins,
                               Bin bin) {
  std::vector<int64_t> total(bins, 0);
  std::mutex mutex;
  parallel_ranges(static_cast<int64_t>(chunks.size()), count, [&](int64_t c0, int64_t c1) {
    std::vector<uint32_t> local(bins, 0);
    for (int64_t c = c0; c < c1; ++c) {
      const Buffer& buf = chunks[static_cast<size_t>(c)];
      const uint32_t* keys = buf.keys.get();
      for (int64_t j = 0; j < buf.size; ++j) {
        const int64_t b = bin(keys[j]);
        if (b >= 0) ++local[static_cast<size_t>(b)];
      }
    }
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t b = 0; b < bins; ++b) total[b] += local[b];
  });
  return total;
}

// The k-th largest key among the candidates (1 <= k <= their count), and how many candidates
// have a larger key.
std::pair<uint32_t, int64_t> kth_largest(const std::vector<Buffer>& chunks, int64_t count,
                                         int64_t k) {
  if (count < kRadixMinCandidates) {
    std::vector<uint32_t> keys;
    keys.reserve(static_cast<size_t>(count));
    for (const Buffer& buf : chunks) keys.insert(keys.end(), buf.keys.get(), buf.keys.get() + buf.size);
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
    const uint32_t kth = keys[static_cast<size_t>(k - 1)];
    // After nth_element every key above kth lies in [0, k - 1).
    const int64_t greater = std::count_if(keys.begin(), keys.begin() + (k - 1),
                                          [kth](uint32_t key) { return key > kth; });
    return {kth, greater};
  }
  // High 16 bits: keys are at most kNanKey, so the high half is at most kNanKey >> 16.
  const size_t hi_bins = (kNanKey >> 16) + 1;
  const std::vector<int64_t> hi = histogram(
      chunks, count, hi_bins, [](uint32_t key) { return static_cast<int64_t>(key >> 16); });
  int64_t above = 0;  // candidates in buckets above b
  size_t b = hi_bins - 1;
  while (above + hi[b] < k) above += hi[b--];
  const uint32_t high = static_cast<uint32_t>(b);
  const std::vector<int64_t> lo = histogram(chunks, count, size_t{1} << 16, [high](uint32_t key) {
    return (key >> 16) == high ? static_cast<int64_t>(key & 0xffffu) : int64_t{-1};
  });
  size_t l = (size_t{1} << 16) - 1;
  while (above + lo[l] < k) above += lo[l--];
  return {(high << 16) | static_cast<uint32_t>(l), above};
}

at::Tensor select_topk(const at::Tensor& x, int64_t k, const detail::TopkSelectOptions& options) {
  CONDENSE_CHECK(x.defined(), "topk_abs_indices: x is an undefined tensor");
  CONDENSE_CHECK(x.layout() == at::kStrided && x.device().is_cpu(),
                 "topk_abs_indices: x must be a dense CPU tensor (got {} on {})",
                 c10::str(x.layout()), x.device().str());
  CONDENSE_CHECK(x.scalar_type() == at::kFloat, "topk_abs_indices: x must be float32 (got {})",
                 c10::toString(x.scalar_type()));
  CONDENSE_CHECK(x.dim() == 1, "topk_abs_indices: x must be 1-D (got {} dimensions)", x.dim());
  CONDENSE_CHECK(x.is_contiguous(), "topk_abs_indices: x must be contiguous");
  const int64_t n = x.numel();
  CONDENSE_CHECK(n <= std::numeric_limits<int32_t>::max(),
                 "topk_abs_indices: x has {} elements; int32 indices allow fewer than 2^31", n);
  CONDENSE_CHECK(k >= 0 && k <= n, "topk_abs_indices: k = {} is outside [0, {}]", k, n);

  const auto int_options = at::TensorOptions().dtype(at::kInt);
  if (k == 0) return at::empty({0}, int_options);
  if (k == n) return at::arange(n, int_options);

  const auto* bits = reinterpret_cast<const uint32_t*>(x.const_data_ptr<float>());
  const int64_t chunk = std::max(kMinChunk, (n + kMaxChunks - 1) / kMaxChunks);
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  std::vector<Buffer> chunks(static_cast<size_t>(num_chunks));

  // Collect candidates, lowering the threshold until at least k arrive (t = 0 takes all).
  Thresholds thresholds(bits, n, k);
  int64_t count = 0;
  for (int attempt = 0;; ++attempt) {
    const bool forced = attempt == 0 && options.first_threshold.has_value();
    uint32_t t;
    if (forced) {
      uint32_t t_bits;
      std::memcpy(&t_bits, &*options.first_threshold, sizeof t_bits);
      t = key_of(t_bits);
    } else {
      t = thresholds.next();
    }
    // Expected candidates per entry, for the buffers' first allocation.
    const double share = forced ? 0.0 : thresholds.share();
    parallel_ranges(num_chunks, n, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t begin = c * chunk;
        const int64_t end = std::min(n, begin + chunk);
        Buffer& buf = chunks[static_cast<size_t>(c)];
        buf.size = 0;
        buf.reserve(static_cast<int64_t>(share * static_cast<double>(end - begin)) + 64);
        collect(bits, begin, end, t, options.portable_scan, buf);
      }
    });
    count = 0;
    for (const Buffer& buf : chunks) count += buf.size;
    if (count >= k || t == 0) break;
  }
  CONDENSE_CHECK(count >= k, "topk_abs_indices: internal error, {} candidates for k = {}", count,
                 k);

  // The k-th largest key T; take every candidate above it and the first `take_equal` equal.
  const std::pair<uint32_t, int64_t> selected = kth_largest(chunks, count, k);
  const uint32_t kth = selected.first;
  const int64_t take_equal = k - selected.second;

  // Per-chunk output offsets and how many of the earlier ties precede each chunk.
  std::vector<int64_t> n_greater(static_cast<size_t>(num_chunks));
  std::vector<int64_t> n_equal(static_cast<size_t>(num_chunks));
  parallel_ranges(num_chunks, count, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Buffer& buf = chunks[static_cast<size_t>(c)];
      const uint32_t* keys = buf.keys.get();
      int32_t g = 0, e = 0;  // a chunk holds fewer than 2^31 entries
      for (int64_t j = 0; j < buf.size; ++j) {
        g += keys[j] > kth;
        e += keys[j] == kth;
      }
      n_greater[static_cast<size_t>(c)] = g;
      n_equal[static_cast<size_t>(c)] = e;
    }
  });
  std::vector<int64_t> out_offset(static_cast<size_t>(num_chunks));
  std::vector<int64_t> equal_before(static_cast<size_t>(num_chunks));
  int64_t offset = 0, equal_seen = 0;
  for (size_t c = 0; c < static_cast<size_t>(num_chunks); ++c) {
    out_offset[c] = offset;
    equal_before[c] = equal_seen;
    const int64_t equal_taken = std::clamp<int64_t>(take_equal - equal_seen, 0, n_equal[c]);
    offset += n_greater[c] + equal_taken;
    equal_seen += n_equal[c];
  }
  CONDENSE_CHECK(offset == k, "topk_abs_indices: internal error, selected {} of k = {}", offset,
                 k);

  at::Tensor out = at::empty({k}, int_options);
  int32_t* dst = out.mutable_data_ptr<int32_t>();
  parallel_ranges(num_chunks, count, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Buffer& buf = chunks[static_cast<size_t>(c)];
      const uint32_t* keys = buf.keys.get();
      const int32_t* index = buf.index.get();
      int32_t* o = dst + out_offset[static_cast<size_t>(c)];
      int64_t equal_left = take_equal - equal_before[static_cast<size_t>(c)];
      if (equal_left <= 0 || n_equal[static_cast<size_t>(c)] == 0) {
        // No tie taken here: exactly the n_greater keys above kth, written branch-free (each
        // candidate is stored at the next slot, which advances on a hit; pos < limit keeps
        // every store inside this chunk's part of the output).
        const int64_t limit = n_greater[static_cast<size_t>(c)];
        int64_t pos = 0;
        for (int64_t j = 0; j < buf.size && pos < limit; ++j) {
          o[pos] = index[j];
          pos += keys[j] > kth;
        }
      } else {
        for (int64_t j = 0; j < buf.size; ++j) {
          if (keys[j] > kth) {
            *o++ = index[j];
          } else if (keys[j] == kth && equal_left > 0) {
            *o++ = index[j];
            --equal_left;
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor topk_abs_indices(const at::Tensor& x, int64_t k) {
  return select_topk(x, k, detail::TopkSelectOptions{});
}

namespace detail {
at::Tensor topk_abs_indices(const at::Tensor& x, int64_t k, const TopkSelectOptions& options) {
  return select_topk(x, k, options);
}
}  // namespace detail

namespace {
void check_tensor_ops_input(const at::Tensor& x, int64_t k, const char* what) {
  CONDENSE_CHECK(x.defined() && x.layout() == at::kStrided && x.scalar_type() == at::kFloat &&
                     x.dim() == 1 && x.is_contiguous(),
                 "{}: x must be a contiguous 1-D float32 tensor", what);
  const int64_t n = x.numel();
  CONDENSE_CHECK(n <= std::numeric_limits<int32_t>::max(),
                 "{}: x has {} elements; int32 indices allow fewer than 2^31", what, n);
  CONDENSE_CHECK(k >= 0 && k <= n, "{}: k = {} is outside [0, {}]", what, k, n);
}

#if CONDENSE_WITH_CUDA_KERNELS
// The kernels (comm/topk_cuda_kernels.h); x: contiguous fp32 on CUDA, 0 < k < n. No host
// synchronization: every step runs on the current stream; one workspace tensor. With `report`,
// the profiled run instead (cuda_topk_profile: events per step, then a wait for the stream).
at::Tensor topk_cuda_kernels(const at::Tensor& x, int64_t k, int64_t sampled_min_n, std::string* report = nullptr) {
  using namespace topk_radix;
  c10::cuda::CUDAGuard guard(x.device());
  void* stream = at::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const int64_t n = x.numel();
  const size_t bytes = cuda_topk_workspace_bytes(n, k, sampled_min_n);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  at::Tensor out = at::empty({k}, x.options().dtype(at::kInt));
  const float* xs = x.data_ptr<float>();
  int32_t* o = out.data_ptr<int32_t>();
  check_cuda_launch(report ? cuda_topk_profile(xs, n, k, sampled_min_n, workspace.data_ptr(), bytes, o, stream, *report)
                           : cuda_topk(xs, n, k, sampled_min_n, workspace.data_ptr(), bytes, o, stream),
                    report ? "topk_cuda_kernels_profile" : "topk_abs_indices");
  return out;
}
#endif
}  // namespace

namespace detail {
at::Tensor topk_abs_indices_cuda_kernels(const at::Tensor& x, int64_t k, int64_t sampled_min_n) {
  check_tensor_ops_input(x, k, "topk_abs_indices_cuda_kernels");
  CONDENSE_CHECK(x.is_cuda() && k > 0 && k < x.numel(),
                 "topk_abs_indices_cuda_kernels: needs a CUDA x and 0 < k < {} (got k = {})", x.numel(), k);
#if CONDENSE_WITH_CUDA_KERNELS
  return topk_cuda_kernels(x, k, sampled_min_n);
#else
  (void)sampled_min_n;
  fail("topk_abs_indices_cuda_kernels: condense was built without its CUDA kernels (no nvcc)");
#endif
}

std::string topk_cuda_kernels_profile(const at::Tensor& x, int64_t k, int64_t sampled_min_n) {
  check_tensor_ops_input(x, k, "topk_cuda_kernels_profile");
  CONDENSE_CHECK(x.is_cuda() && k > 0 && k < x.numel(),
                 "topk_cuda_kernels_profile: needs a CUDA x and 0 < k < {} (got k = {})", x.numel(), k);
#if CONDENSE_WITH_CUDA_KERNELS
  std::string report;
  topk_cuda_kernels(x, k, sampled_min_n, &report);
  return report;
#else
  (void)sampled_min_n;
  fail("topk_cuda_kernels_profile: condense was built without its CUDA kernels (no nvcc)");
#endif
}
}  // namespace detail

// The same answer in tensor ops: the keys above (key_of, elementwise), T = the k-th largest key
// (at::topk's values, unsorted, then their minimum), then every entry with key > T and the
// first k - #(key > T) entries with key == T (an inclusive running count of the ties picks
// them), which are exactly k entries; nonzero_static lists them in ascending index order with
// a fixed output size, so CUDA needs no device-to-host copy for the count. About ten passes over
// n-element tensors plus at::topk; no step depends on the thread count or the device.
at::Tensor topk_abs_indices_tensor_ops(const at::Tensor& x, int64_t k) {
  check_tensor_ops_input(x, k, "topk_abs_indices_tensor_ops");
  const int64_t n = x.numel();
  const auto int_options = x.options().dtype(at::kInt);
  if (k == 0) return at::empty({0}, int_options);
  if (k == n) return at::arange(n, int_options);
#if CONDENSE_WITH_CUDA_KERNELS
  if (x.is_cuda() && cuda_kernels_enabled()) return topk_cuda_kernels(x, k, topk_radix::kSampledMinN);
#endif
  // Keys fit in int32 (at most kNanKey < 2^31), so signed order is their order.
  at::Tensor key = x.view(at::kInt)
                       .bitwise_and(static_cast<int64_t>(kAbsMask))
                       .clamp_max_(static_cast<int64_t>(kNanKey));
  at::Tensor t = std::get<0>(at::topk(key, k, 0, /*largest=*/true, /*sorted=*/false)).min();
  at::Tensor above = key.gt(t);
  at::Tensor tied = key.eq(t);
  at::Tensor room = above.sum().neg_().add_(k);  // ties to take, >= 1
  at::Tensor take = tied.logical_and(tied.cumsum(0, at::kInt).le(room)).logical_or_(above);
  return at::nonzero_static(take, k).view({k}).to(at::kInt);
}

}  // namespace condense
