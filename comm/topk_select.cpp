// Exact top-k by magnitude: sample a threshold, collect candidates in one parallel pass, then
// select exactly k among the candidates by radix selection on the float bits.
//
// Magnitudes are compared as integer keys: for a float with bits b, key = b & 0x7fffffff is
// |x|'s bit pattern, and for non-negative floats the unsigned order of the bit patterns is the
// numeric order (+0 < denormals < normals < +inf). Every NaN is mapped to one key just above
// +inf (0x7f800001), which makes NaN the largest magnitude and all NaNs equal.
//
// 1. Threshold. From a stratified random sample of m = 2^16 entries (one uniformly drawn
//    position in each of m equal strata, fixed-seed generator: deterministic) take the sample
//    entry of rank r = p*m + 4*sqrt(m*p*(1-p)) + 4 from the top (p = k/n) as threshold t.
//    The number of sample entries above the true k-th magnitude is Binomial(m, <= p), so
//    t <= the k-th magnitude except with probability far below 1e-4, while the candidates
//    (entries with key >= t) exceed k by only about 4 standard deviations of the estimate
//    (about 5% at p = 10%, 15% at 1%). This is the sampling step of Floyd and Rivest's
//    selection algorithm ("Expected time bounds for selection", CACM 18(3), 1975) and of
//    sampling-based threshold estimation for top-k gradient sparsification (e.g. Shi et al.,
//    "Understanding Top-k Sparsification in Distributed Deep Learning", arXiv:1911.08772);
//    unlike approximate top-k schemes, the threshold here only bounds a candidate set and
//    the selection stays exact.
// 2. Collection. x is cut into fixed chunks (independent of the thread count); each chunk,
//    in parallel, appends (key, index) of its entries with key >= t to its own buffer, so the
//    concatenation of the buffers is in index order. The scan tests 16 entries at a time with
//    SSE2 compares and visits only the set bits of the hit mask.
//    If fewer than k candidates arrive (the sample was unlucky or the data is adversarial to
//    it), the pass is repeated with a lower sample threshold (rank 4*(r+1)) and finally with
//    t = 0, which collects everything, so the result is always exact.
// 3. Selection. The k-th largest candidate key T is found by two 16-bit radix histograms
//    (high half, then low half within the chosen bucket), each built per thread in parallel
//    and merged; small candidate sets use std::nth_element instead. With G = #(key > T), the
//    answer is every candidate with key > T plus the first k - G candidates with key == T in
//    index order (ties toward lower indices).
// 4. Output. Per-chunk counts of (> T) and (== T), prefix sums, then each chunk writes its
//    indices at its offset: the output is ascending without any sort.
#include "comm/topk_select.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/error.h"

namespace condense {
namespace {

constexpr uint32_t kAbsMask = 0x7fffffffu;
constexpr uint32_t kInfKey = 0x7f800000u;
constexpr uint32_t kNanKey = kInfKey + 1;       // every NaN: one magnitude above +inf
constexpr int64_t kMinChunk = int64_t{1} << 16;  // entries per collection chunk (at least)
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kSampleSize = int64_t{1} << 16;
constexpr int64_t kSampleMinN = int64_t{1} << 15;  // below this, collect everything
constexpr int64_t kRadixMinCandidates = int64_t{1} << 15;  // below this, nth_element

inline uint32_t key_of(uint32_t bits) {
  const uint32_t key = bits & kAbsMask;
  return key > kInfKey ? kNanKey : key;
}

struct Candidate {
  uint32_t key;
  int32_t index;
};

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Thresholds to try, highest first; the last one is always 0 (collects every entry).
std::vector<uint32_t> thresholds(const uint32_t* bits, int64_t n, int64_t k) {
  std::vector<uint32_t> out;
  if (n >= kSampleMinN) {
    const int64_t m = std::min(kSampleSize, n / 4);
    const double p = static_cast<double>(k) / static_cast<double>(n);
    const double mean = p * static_cast<double>(m);
    const double sd = std::sqrt(mean * (1.0 - p));
    const int64_t r1 = static_cast<int64_t>(std::ceil(mean + 4.0 * sd + 4.0));
    if (r1 < m - 1) {
      std::vector<uint32_t> sample(static_cast<size_t>(m));
      uint64_t state = 0x5eed70b4c0de5eedull;  // fixed seed: the sample is a function of n
      for (int64_t j = 0; j < m; ++j) {
        const int64_t lo = j * n / m;
        const int64_t len = (j + 1) * n / m - lo;
        const int64_t pos = lo + static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(len));
        sample[static_cast<size_t>(j)] = key_of(bits[pos]);
      }
      std::nth_element(sample.begin(), sample.begin() + r1, sample.end(), std::greater<uint32_t>());
      const uint32_t t1 = sample[static_cast<size_t>(r1)];
      if (t1 > 0) out.push_back(t1);
      const int64_t r2 = 4 * (r1 + 1);
      if (t1 > 0 && r2 < m - 1) {
        std::nth_element(sample.begin() + r1 + 1, sample.begin() + r2, sample.end(),
                         std::greater<uint32_t>());
        const uint32_t t2 = sample[static_cast<size_t>(r2)];
        if (t2 > 0 && t2 < t1) out.push_back(t2);
      }
    }
  }
  out.push_back(0);
  return out;
}

// Appends (key, index) of every entry in [begin, end) with key >= t to `out`, in index order.
void collect(const uint32_t* bits, int64_t begin, int64_t end, uint32_t t,
             std::vector<Candidate>& out) {
  int64_t i = begin;
#if defined(__SSE2__)
  const __m128i abs_mask = _mm_set1_epi32(static_cast<int32_t>(kAbsMask));
  // key >= t  <=>  key > t - 1 as signed 32-bit integers: keys and t are below 2^31.
  const __m128i below = _mm_set1_epi32(static_cast<int32_t>(t) - 1);
  auto hits4 = [&](int64_t at) {
    const __m128i v = _mm_and_si128(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + at)), abs_mask);
    return static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(v, below))));
  };
  for (; i + 16 <= end; i += 16) {
    uint32_t mask = hits4(i) | (hits4(i + 4) << 4) | (hits4(i + 8) << 8) | (hits4(i + 12) << 12);
    while (mask != 0) {
      const int64_t j = i + __builtin_ctz(mask);
      mask &= mask - 1;
      out.push_back({key_of(bits[j]), static_cast<int32_t>(j)});
    }
  }
#else
  for (; i + 16 <= end; i += 16) {
    uint32_t any = 0;
    for (int64_t j = 0; j < 16; ++j) any |= static_cast<uint32_t>((bits[i + j] & kAbsMask) >= t);
    if (any == 0) continue;
    for (int64_t j = i; j < i + 16; ++j) {
      const uint32_t key = key_of(bits[j]);
      if (key >= t) out.push_back({key, static_cast<int32_t>(j)});
    }
  }
#endif
  for (; i < end; ++i) {
    const uint32_t key = key_of(bits[i]);
    if (key >= t) out.push_back({key, static_cast<int32_t>(i)});
  }
}

// Sums, over every candidate of every chunk, a histogram of bin(c) for candidates where
// bin(c) >= 0, in parallel with one private histogram per worker.
template <typename Bin>
std::vector<int64_t> histogram(const std::vector<std::vector<Candidate>>& chunks, size_t bins,
                               Bin bin) {
  std::vector<int64_t> total(bins, 0);
  std::mutex mutex;
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    std::vector<uint32_t> local(bins, 0);
    for (int64_t c = c0; c < c1; ++c) {
      for (const Candidate& cand : chunks[static_cast<size_t>(c)]) {
        const int64_t b = bin(cand.key);
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
std::pair<uint32_t, int64_t> kth_largest(const std::vector<std::vector<Candidate>>& chunks,
                                         int64_t count, int64_t k) {
  if (count < kRadixMinCandidates) {
    std::vector<uint32_t> keys;
    keys.reserve(static_cast<size_t>(count));
    for (const auto& chunk : chunks)
      for (const Candidate& c : chunk) keys.push_back(c.key);
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
    const uint32_t kth = keys[static_cast<size_t>(k - 1)];
    // After nth_element every key above kth lies in [0, k - 1).
    const int64_t greater = std::count_if(keys.begin(), keys.begin() + (k - 1),
                                          [kth](uint32_t key) { return key > kth; });
    return {kth, greater};
  }
  // High 16 bits: keys are at most kNanKey, so the high half is at most kNanKey >> 16.
  const size_t hi_bins = (kNanKey >> 16) + 1;
  const std::vector<int64_t> hi =
      histogram(chunks, hi_bins, [](uint32_t key) { return static_cast<int64_t>(key >> 16); });
  int64_t above = 0;  // candidates in buckets above b
  size_t b = hi_bins - 1;
  while (above + hi[b] < k) above += hi[b--];
  const uint32_t high = static_cast<uint32_t>(b);
  const std::vector<int64_t> lo = histogram(chunks, size_t{1} << 16, [high](uint32_t key) {
    return (key >> 16) == high ? static_cast<int64_t>(key & 0xffffu) : int64_t{-1};
  });
  size_t l = (size_t{1} << 16) - 1;
  while (above + lo[l] < k) above += lo[l--];
  return {(high << 16) | static_cast<uint32_t>(l), above};
}

at::Tensor select_topk(const at::Tensor& x, int64_t k, const float* first_threshold) {
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
  std::vector<std::vector<Candidate>> chunks(static_cast<size_t>(num_chunks));

  // Collect candidates, lowering the threshold until at least k arrive (t = 0 takes all).
  std::vector<uint32_t> tries = thresholds(bits, n, k);
  if (first_threshold != nullptr) {
    uint32_t t_bits;
    std::memcpy(&t_bits, first_threshold, sizeof t_bits);
    tries.insert(tries.begin(), key_of(t_bits));
  }
  int64_t count = 0;
  for (const uint32_t t : tries) {
    // Expected share of candidates, for the buffers' first allocation.
    const double share =
        t == 0 ? 1.0 : std::min(1.0, 1.15 * static_cast<double>(k) / static_cast<double>(n));
    at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t begin = c * chunk;
        const int64_t end = std::min(n, begin + chunk);
        auto& buf = chunks[static_cast<size_t>(c)];
        buf.clear();
        buf.reserve(static_cast<size_t>(share * static_cast<double>(end - begin)) + 64);
        collect(bits, begin, end, t, buf);
      }
    });
    count = 0;
    for (const auto& buf : chunks) count += static_cast<int64_t>(buf.size());
    if (count >= k) break;
  }

  // The k-th largest key T; take every candidate above it and the first `take_equal` equal.
  const std::pair<uint32_t, int64_t> selected = kth_largest(chunks, count, k);
  const uint32_t kth = selected.first;
  const int64_t take_equal = k - selected.second;

  // Per-chunk output offsets and how many of the earlier ties precede each chunk.
  std::vector<int64_t> n_greater(static_cast<size_t>(num_chunks));
  std::vector<int64_t> n_equal(static_cast<size_t>(num_chunks));
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t g = 0, e = 0;
      for (const Candidate& cand : chunks[static_cast<size_t>(c)]) {
        g += cand.key > kth;
        e += cand.key == kth;
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
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t* o = dst + out_offset[static_cast<size_t>(c)];
      int64_t equal_left = take_equal - equal_before[static_cast<size_t>(c)];
      for (const Candidate& cand : chunks[static_cast<size_t>(c)]) {
        if (cand.key > kth) {
          *o++ = cand.index;
        } else if (cand.key == kth && equal_left > 0) {
          *o++ = cand.index;
          --equal_left;
        }
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor topk_abs_indices(const at::Tensor& x, int64_t k) { return select_topk(x, k, nullptr); }

namespace detail {
at::Tensor topk_abs_indices_first_threshold(const at::Tensor& x, int64_t k, float first_threshold) {
  return select_topk(x, k, &first_threshold);
}
}  // namespace detail

}  // namespace condense
