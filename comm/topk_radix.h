// The steps of Top-K selection by radix select on a GPU (comm/topk_cuda_kernels.cu), as small
// functions that the kernels and a CPU replay in the tests share. The result is
// topk_abs_indices's (comm/topk_select.h): the indices of the k largest |x|, exactly k, ties at
// the k-th magnitude to the lower indices, NaN above +inf, ascending.
//
// 1. The k-th largest key T (key = |x|'s bits, monotone in |x|, NaN one above +inf) is found
//    digit by digit, most significant first: three passes over x build a histogram of one digit
//    (11, 11, then 9 of the key's 31 bits) over the keys that agree with the digits chosen so
//    far, and select_digit picks the next digit. What is left of k after the last pass, `need`,
//    is how many keys equal to T are taken (the first `need` of them in index order).
// 2. Ordered compaction in tiles of kTile elements: one pass counts, per tile, the keys above T
//    and those equal to T; prefix sums over tiles give each tile's output position and the ties
//    before it; a second pass has each thread take a chunk of kPerThread consecutive elements,
//    and exclusive scans over the tile's threads place every taken index.
// Five passes over x in all (three histograms, the count, the write), against ten or more for
// the tensor ops. The write pass's threads read 16 consecutive elements each (three times, the
// second and third from cache), so its loads are less coalesced than the others'.
#pragma once
#include <cstdint>

#include "core/host_device.h"

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
// key: the highest digit d with count(digit >= d) >= remaining.
CONDENSE_HD inline void select_digit(const int32_t* hist, int pass, Selection& s) {
  int32_t above = 0;
  for (int d = (1 << digit_width(pass)) - 1; d >= 0; --d) {
    if (above + hist[d] >= s.remaining) {
      s.prefix = (s.prefix << digit_width(pass)) | static_cast<uint32_t>(d);
      s.remaining -= above;
      return;
    }
    above += hist[d];
  }
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

// Writes the chunk's taken indices, in order, from out[pos].
CONDENSE_HD inline void chunk_write(const uint32_t* bits, int64_t i0, int64_t i1, uint32_t t, int64_t need,
                                    int64_t tie_base, int32_t* out, int64_t pos) {
  for (int64_t i = i0; i < i1; ++i) {
    const uint32_t key = key_of(bits[i]);
    bool take = key > t;
    if (key == t) take = tie_base++ < need;
    if (take) out[pos++] = static_cast<int32_t>(i);
  }
}

// Thread `thread`'s chunk of tile [lo, hi).
CONDENSE_HD inline void chunk_bounds(int64_t lo, int64_t hi, int thread, int64_t& i0, int64_t& i1) {
  i0 = lo + static_cast<int64_t>(kPerThread) * thread;
  if (i0 > hi) i0 = hi;
  i1 = i0 + kPerThread < hi ? i0 + kPerThread : hi;
}

}  // namespace condense::topk_radix
