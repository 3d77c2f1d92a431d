// The steps of Top-K selection on a GPU (comm/topk_cuda_kernels.cu), as small functions that
// the kernels and a CPU replay in the tests (tests/test_cuda_kernels.cpp) share. The result is
// topk_abs_indices's (comm/topk_select.h): the indices of the k largest |x|, exactly k, ties at
// the k-th magnitude to the lower indices, NaN above +inf, ascending.
//
// The exact path (any n, k):
// 1. The k-th largest key T (key = |x|'s bits, monotone in |x|, NaN one above +inf) is found
//    digit by digit, most significant first: three passes over x build a histogram of one digit
//    (11, 11, then 9 of the key's 31 bits) over the keys that agree with the digits chosen so
//    far, and select_digit picks the next digit. What is left of k after the last pass, `need`,
//    is how many keys equal to T are taken (the first `need` of them in index order).
// 2. Ordered compaction in tiles of kTile elements: one pass counts, per tile, the keys above T
//    and those equal to T; prefix sums over tiles give each tile's output position and the ties
//    before it; a second pass has each thread take a chunk of kPerThread consecutive elements,
//    and exclusive scans over the tile's threads place every taken index.
// Five passes over x. The write pass's threads read 16 consecutive elements each (three times,
// the second and third from cache), so its loads are less coalesced than the others'.
//
// The sampled path (large n; the CPU's algorithm, comm/topk_select.cpp, on the GPU): one block
// sorts a stratified sample of the keys and takes the one of rank `rank` from the top as a
// threshold t that lies below the k-th largest key with high probability (SamplePlan). One pass
// over x collects the candidates (keys >= t: their indices and keys, at most `capacity`): each
// tile of kTile elements reserves a segment of the candidate buffer with one atomic add and
// fills it in index order, so segments are ordered within but not across tiles. The exact path
// then runs on the candidates: its histograms over the whole buffer (order does not matter),
// its counts and writes per x tile over the tile's segment (tile_range), so the output is in
// index order again. One pass over x instead of five. When the sample missed (fewer than k
// candidates, or more than capacity) a flag on the device sends the work to the exact path over
// x, whose kernels were launched behind a gate: the result is exact either way and nothing
// waits for the host. Mostly-zero x (a sample whose rank key is zero) collects the nonzero
// keys (t = 1); if they are fewer than k, the answer is all of them plus the first zeros, which
// the exact path's count and write over x give with T = 0 and need = k - count, without its
// histograms (SampleOutcome::kZeroFill).
#pragma once
#include <cstdint>

#include <algorithm>
#include <cmath>

#include "core/host_device.h"
#include "core/random.h"

namespace condense::topk_radix {

constexpr uint32_t kAbsMask = 0x7fffffffu;
constexpr uint32_t kInfKey = 0x7f800000u;
constexpr uint32_t kNanKey = kInfKey + 1;
constexpr int kPasses = 3;
constexpr int kMaxBins = 2048;
constexpr int kTile = 4096;         // elements per tile in the compaction
constexpr int kTileThreads = 256;   // threads per tile
constexpr int kPerThread = kTile / kTileThreads;

CONDENSE_HD inline uint32_t key_of(uint32_t bits) {
  const uint32_t key = bits & kAbsMask;
  return key > kInfKey ? kNanKey : key;
}

// Pass p's digit: key bits [shift, shift + width): 11 bits from 20, 11 from 9, 9 from 0.
CONDENSE_HD inline int digit_shift(int pass) { return pass == 0 ? 20 : pass == 1 ? 9 : 0; }
CONDENSE_HD inline int digit_width(int pass) { return pass == 2 ? 9 : 11; }
CONDENSE_HD inline uint32_t digit_of(uint32_t key, int pass) {
  return (key >> digit_shift(pass)) & ((1u << digit_width(pass)) - 1);
}
// Whether key's digits above pass p's are `prefix` (the digits chosen so far).
CONDENSE_HD inline bool in_prefix(uint32_t key, int pass, uint32_t prefix) {
  return pass == 0 || (key >> (digit_shift(pass) + digit_width(pass))) == prefix;
}

// The selection so far: the chosen digits, and how many of the largest keys are still to be
// found among the keys that start with them (>= 1). Starts as {0, k}; after the last pass,
// prefix is T and remaining is `need`.
struct Selection {
  uint32_t prefix;
  int32_t remaining;
};

// From pass p's histogram (of the keys in s.prefix), the digit of the remaining-th largest
// key: the highest digit d with count(digit >= d) >= remaining, searched within digits
// [d_lo, d_hi) given `above` = count(digit >= d_hi). Returns whether it lies there (then s takes
// the digit and what is left of remaining), which is so for exactly one of a set of ranges
// that partition the digits. On the GPU each thread of one block searches its own range (the
// aboves from a block scan); select_digit is the whole range at once. Precondition: the
// histogram holds at least s.remaining keys (else no range finds a digit and s is unchanged).
CONDENSE_HD inline bool select_digit_range(const int32_t* hist, int pass, int d_lo, int d_hi, int32_t above,
                                           Selection& s) {
  if (above >= s.remaining) return false;  // the digit is above this range
  for (int d = d_hi - 1; d >= d_lo; --d) {
    if (above + hist[d] >= s.remaining) {
      s.prefix = (s.prefix << digit_width(pass)) | static_cast<uint32_t>(d);
      s.remaining -= above;
      return true;
    }
    above += hist[d];
  }
  return false;
}

CONDENSE_HD inline void select_digit(const int32_t* hist, int pass, Selection& s) {
  select_digit_range(hist, pass, 0, 1 << digit_width(pass), 0, s);
}

// One thread's chunk [i0, i1) of the compaction. Element i is taken when key > t, or key == t
// and fewer than `need` ties come before it in x; `tie_base` is the ties before i0.
CONDENSE_HD inline int chunk_ties(const uint32_t* bits, int64_t i0, int64_t i1, uint32_t t) {
  int n = 0;
  for (int64_t i = i0; i < i1; ++i) n += key_of(bits[i]) == t;
  return n;
}

CONDENSE_HD inline int chunk_taken(const uint32_t* bits, int64_t i0, int64_t i1, uint32_t t, int64_t need,
                                   int64_t tie_base) {
  int n = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const uint32_t key = key_of(bits[i]);
    if (key > t) {
      ++n;
    } else if (key == t) {
      n += tie_base < need;
      ++tie_base;
    }
  }
  return n;
}

// Writes the chunk's taken indices, in order, from out[pos]; through `map` when it is not null
// (the sampled path's candidates: map[i] is candidate i's index in x). Never past out[k - 1]:
// the selection guarantees at most k are taken, and a broken guarantee must not write outside
// the output (it then shows as a wrong selection in the tests, not as corrupted memory).
CONDENSE_HD inline void chunk_write(const uint32_t* bits, int64_t i0, int64_t i1, uint32_t t, int64_t need,
                                    int64_t tie_base, const int32_t* map, int32_t* out, int64_t pos, int64_t k) {
  for (int64_t i = i0; i < i1 && pos < k; ++i) {
    const uint32_t key = key_of(bits[i]);
    bool take = key > t;
    if (key == t) take = tie_base++ < need;
    if (take) out[pos++] = map ? map[i] : static_cast<int32_t>(i);
  }
}

// Tile `tile`'s range [lo, hi): its kTile elements of x (seg_base == nullptr), or on the sampled
// path the candidates that x's tile `tile` collected (a segment of at most kTile; segments lie
// in the candidate buffer in whatever order the tiles reserved them, each in index order).
CONDENSE_HD inline void tile_range(int64_t tile, int64_t n, const int64_t* seg_base, const int32_t* seg_count,
                                   int64_t& lo, int64_t& hi) {
  if (seg_base) {
    lo = seg_base[tile];
    hi = lo + seg_count[tile];
  } else {
    lo = tile * kTile;
    hi = lo + kTile < n ? lo + kTile : n;
  }
}

// Thread `thread`'s chunk of tile [lo, hi).
CONDENSE_HD inline void chunk_bounds(int64_t lo, int64_t hi, int thread, int64_t& i0, int64_t& i1) {
  i0 = lo + static_cast<int64_t>(kPerThread) * thread;
  if (i0 > hi) i0 = hi;
  i1 = i0 + kPerThread < hi ? i0 + kPerThread : hi;
}

// ---- The sampled path's plan (host) and sample positions (both) ----

constexpr int kSampleThreads = 1024;
constexpr int kSampleItems = 4;
constexpr int kSampleMax = kSampleThreads * kSampleItems;  // keys sorted by the sample kernel
constexpr int kSampleRun = 4;                              // consecutive entries per stratum
constexpr uint64_t kSampleSeed = 0x746f706b73616d70ull;
constexpr int64_t kSampledMinN = int64_t{1} << 18;         // below: the exact path (few passes to save)
constexpr int kSampleLowBits = 15;  // t keeps the top 16 of the key's 31 bits (the sort's digits)

// t from the sample key of rank `rank`: its low bits cleared, so t is at most that key (the
// candidates only grow, by under 0.4% of t's magnitude) and a sort of the top 16 bits finds it;
// at least 1, so zeros (key 0) are never candidates.
CONDENSE_HD inline uint32_t sample_threshold(uint32_t key_at_rank) {
  const uint32_t t = key_at_rank & ~((1u << kSampleLowBits) - 1u);
  return t > 0 ? t : 1u;
}

// strata x kSampleRun sample entries: stratum j is [j * stride, (j + 1) * stride) (the tail
// after strata * stride is not sampled), from which the run at a hashed offset is taken. t is
// the sample key of rank `rank` from the top (1 = the largest). capacity bounds the candidates.
struct SamplePlan {
  int64_t strata = 0, stride = 0;
  int32_t rank = 0;
  int64_t capacity = 0;
};

CONDENSE_HD inline int64_t sample_position(const SamplePlan& plan, int64_t j, int q) {
  const uint64_t offset = mix64(kSampleSeed + static_cast<uint64_t>(j)) % static_cast<uint64_t>(plan.stride - kSampleRun + 1);
  return j * plan.stride + static_cast<int64_t>(offset) + q;
}

// The plan for k of n, or strata = 0 when the sampled path does not apply. As on the CPU: with
// m sample keys and p = k/n, rank = p m + 4 sqrt(m p (1 - p)) + 4 puts t below the k-th largest
// key except with probability far below 1e-4 for keys in random order (and the exact path
// catches the rest); the candidates are then about n rank / m, which capacity allows three
// times over (plus 4096). The path is refused where capacity would exceed n / 2 (k above
// roughly n / 8): there the candidates are most of x and the exact path is as cheap.
inline SamplePlan plan_sample(int64_t n, int64_t k, int64_t min_n = kSampledMinN) {
  SamplePlan plan;
  if (n < min_n || n < 16 * kSampleRun || k < 1 || k >= n) return plan;
  const int64_t strata = std::min<int64_t>(kSampleMax / kSampleRun, n / 16);
  const double m = static_cast<double>(strata * kSampleRun), p = static_cast<double>(k) / static_cast<double>(n);
  const double rank = std::ceil(p * m + 4.0 * std::sqrt(m * p * (1.0 - p)) + 4.0);
  if (rank > m) return plan;
  const double expected = std::ceil(static_cast<double>(n) * rank / m);
  const double capacity = 3.0 * expected + 4096.0;
  if (capacity > 0.5 * static_cast<double>(n)) return plan;
  plan.strata = strata;
  plan.stride = n / strata;
  plan.rank = static_cast<int32_t>(rank);
  plan.capacity = static_cast<int64_t>(capacity);
  return plan;
}

// What the collection (count keys >= t, at most capacity kept) leaves to do:
//   kCandidates  the answer is among the candidates (k <= count <= capacity);
//   kZeroFill    t = 1 and count < k: every nonzero key is a candidate and the answer is all
//                of them plus the first k - count zeros (the exact path's count and write over
//                x with T = 0, need = k - count);
//   kMissed      anything else: the exact path over x.
enum SampleOutcome : int32_t { kCandidates = 0, kMissed = 1, kZeroFill = 2 };
CONDENSE_HD inline int32_t sample_outcome(int64_t count, int64_t k, int64_t capacity, uint32_t t) {
  if (count > capacity) return kMissed;
  if (count >= k) return kCandidates;
  return t == 1 ? kZeroFill : kMissed;
}

// The zero fill's selection over x: T = key 0, need = the zeros to take after the count nonzeros.
CONDENSE_HD inline Selection zero_fill_selection(int64_t k, int64_t count) {
  return Selection{0u, static_cast<int32_t>(k - count)};
}

}  // namespace condense::topk_radix
