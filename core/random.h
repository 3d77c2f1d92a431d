// Small deterministic random-number helpers of our own (splitmix64, Steele et al. 2014), so
// shuffles and splits are identical on every platform and standard library.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace condense {

// The splitmix64 finalizer: a bijective 64-bit mixer (also in CUDA kernels).
CONDENSE_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Advances `state` and returns the next splitmix64 output.
inline uint64_t splitmix64(uint64_t& state) { return mix64(state += 0x9E3779B97F4A7C15ull); }

// Uniform in [0, bound) without modulo bias (Lemire's multiply-and-reject), bound > 0.
inline uint64_t uniform_below(uint64_t& state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(splitmix64(state)) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    uint64_t threshold = -bound % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(splitmix64(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace condense
