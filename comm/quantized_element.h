// The per-element arithmetic of the quantizing codecs (qsgd and sign; the payload format is in
// comm/codec_kernels.h), shared by the CPU loops (comm/codec_quantized.cpp) and the CUDA kernels
// (comm/quantized_cuda_kernels.cu), so that both produce the same bytes from one definition.
// Every step is one correctly rounded IEEE operation (nvcc divides and takes square roots
// IEEE-exactly unless told otherwise, and the kernels are compiled with --fmad=false).
//
// The CUDA kernels work in groups of kGroup = 8 consecutive elements of one block: 8 codes of 1,
// 2, 4 or 8 bits fill whole bytes, so each group's bytes belong to one thread. That needs every
// block to start on a byte boundary, block % per_byte == 0 (groups_fit); the codec uses tensor
// ops on CUDA otherwise.
#pragma once
#include <math.h>

#include <cstdint>

#include "core/host_device.h"
#include "core/random.h"

namespace condense::quantized {

constexpr int64_t kGroup = 8;

// The stochastic rounding's uniforms. u_i in [0, 1) is the top 24 bits of
// hash32(key ^ golden * (i + 1)) times 2^-24 (exact in fp32), golden = 0x9E3779B9 (2^32 / phi),
// key = uniform_key(seed): a function of (seed, i) only, so threads and devices draw the same
// numbers. hash32 is Wellons' "lowbias32" (two multiplies, a bijection of 32-bit words; "Hash
// function prospector", nullprogram.com 2018). 32-bit words because GPUs multiply them natively:
// the 64-bit splitmix mix used before took three 64-bit multiplies per element, about a third
// of the qsgd kernel's per-element instructions (SASS: 27 of 77).
CONDENSE_HD inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

CONDENSE_HD inline uint32_t uniform_key(uint64_t seed) { return static_cast<uint32_t>(mix64(seed)); }

CONDENSE_HD inline float uniform_at(uint32_t key, int64_t i) {
  return static_cast<float>(hash32(key ^ (0x9E3779B9u * static_cast<uint32_t>(i + 1))) >> 8) *
         (1.0f / 16777216.0f);
}

// One element's term of its block's double sum: x^2 (qsgd; exact in double) or |x| (sign).
CONDENSE_HD inline double scale_term(float x, int64_t levels) {
  return levels ? static_cast<double>(x) * x : static_cast<double>(::fabsf(x));
}

// A block's scale from the sum of its `count` terms: the l2 norm (qsgd) or the mean |x| (sign).
CONDENSE_HD inline float block_scale(double sum, int64_t levels, int64_t count) {
  return levels ? static_cast<float>(::sqrt(sum)) : static_cast<float>(sum / static_cast<double>(count));
}

// sign: 1 for x >= 0 (-0 included), else 0.
CONDENSE_HD inline uint32_t sign_code(float x) { return x >= 0.0f ? 1u : 0u; }

// qsgd's step per unit of |x|: s / scale, 0 for a scale that is not > 0 (an all-zero block, or
// NaN); +inf for a positive scale below s / FLT_MAX (about 2e-38 at s = 7), where qsgd_code
// falls back to dividing per element. One correctly rounded division per block instead of one
// per element.
CONDENSE_HD inline float level_step(float scale, int64_t levels) {
  return scale > 0 ? static_cast<float>(levels) / scale : 0.0f;
}

// qsgd with s = levels: a = |x| * step (step = level_step(scale, levels); when that overflowed,
// a = |x| / scale * s, which stays at most about s), level = floor(a) plus 1 with probability
// a - floor(a) (u is the element's uniform), at most s; code = sign * level + s. A NaN level (x
// NaN or infinite with an infinite scale, whose step is 0) is level 0, the code s (the
// float-to-integer conversion of NaN is undefined). Branch-free on the coin flip: mispredicting
// it cost a third of the CPU encode's time (the step test is the same for a whole block).
CONDENSE_HD inline uint32_t qsgd_code(float x, float scale, float step, int64_t levels, float u) {
  const float s = static_cast<float>(levels);
  const float a = step <= 3.402823466e38f ? ::fabsf(x) * step : ::fabsf(x) / scale * s;
  float level = ::floorf(a);
  level += static_cast<float>(u < a - level);
  level = level <= s ? level : (level > s ? s : 0.0f);  // at most s; NaN -> 0
  const int32_t q = static_cast<int32_t>(level);       // levels < 2^8: codes are at most 8 bits
  return static_cast<uint32_t>((x < 0 ? -q : q) + static_cast<int32_t>(levels));
}

// The value a code stands for: +-scale (sign) or (code - s) * scale / s (qsgd).
CONDENSE_HD inline float decoded_value(uint32_t code, float scale, int64_t levels) {
  return levels == 0 ? (code ? scale : -scale)
                     : static_cast<float>(static_cast<int64_t>(code) - levels) * scale /
                           static_cast<float>(levels);
}

CONDENSE_HD inline bool groups_fit(int64_t block, int bits) { return block % (8 / bits) == 0; }

// Encodes elements [i0, i1) of one block (i1 - i0 <= kGroup, i0 % per_byte == 0) with the
// block's scale and step (level_step; both unused by sign) into their ceil((i1 - i0) * bits / 8)
// bytes of `codes` (the code area of the payload); bits of the last byte past i1 are zero.
CONDENSE_HD inline void encode_group(const float* v, int64_t i0, int64_t i1, float scale, float step,
                                     int64_t levels, int bits, uint32_t key, uint8_t* codes) {
  uint64_t word = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const uint32_t c = levels ? qsgd_code(v[i], scale, step, levels, uniform_at(key, i)) : sign_code(v[i]);
    word |= static_cast<uint64_t>(c) << ((i - i0) * bits);
  }
  uint8_t* out = codes + i0 * bits / 8;
  const int64_t n = ((i1 - i0) * bits + 7) / 8;
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<uint8_t>(word >> (8 * j));
}

// out[i] += table[code of element i], for i in [i0, i1) of one block (as encode_group); table[c]
// = decoded_value(c, block scale, levels) for every c < 2^bits (built once per block: qsgd's
// value has a division, which per element was most of the decode's work).
CONDENSE_HD inline void decode_add_group(const uint8_t* codes, int64_t i0, int64_t i1, const float* table,
                                         int bits, float* out) {
  const uint8_t* in = codes + i0 * bits / 8;
  const int64_t n = ((i1 - i0) * bits + 7) / 8;
  uint64_t word = 0;
  for (int64_t j = 0; j < n; ++j) word |= static_cast<uint64_t>(in[j]) << (8 * j);
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t i = i0; i < i1; ++i) out[i] += table[(word >> ((i - i0) * bits)) & mask];
}

// A block's sum of terms in one order on every path, so that its scale is the same float
// everywhere (double sums in another order differ in the last bits, and near a float rounding
// boundary that changes the scale and with it the whole block's codes). The order is the CUDA
// kernel's: it runs one thread block of kCudaThreads threads per codec block, thread t sums the
// terms of elements lo + t, lo + t + kCudaThreads, ... in order (partial_sum), and the block
// adds the partials pairwise, partial[t] += partial[t + w] for w = kCudaThreads / 2, ..., 1;
// partial[0] is the block's sum. The CPU loops call block_sum, the tensor-op path builds the
// same sums from (blocks, rows, kCudaThreads) slices, and the kernel does it in shared memory.
constexpr int kCudaThreads = 64;

CONDENSE_HD inline double partial_sum(const float* v, int64_t lo, int64_t hi, int t, int64_t levels) {
  double acc = 0;
  for (int64_t i = lo + t; i < hi; i += kCudaThreads) acc += scale_term(v[i], levels);
  return acc;
}

inline double block_sum(const float* v, int64_t lo, int64_t hi, int64_t levels) {
  double partial[kCudaThreads];
  for (int t = 0; t < kCudaThreads; ++t) partial[t] = partial_sum(v, lo, hi, t, levels);
  for (int w = kCudaThreads / 2; w > 0; w /= 2)
    for (int t = 0; t < w; ++t) partial[t] += partial[t + w];
  return partial[0];
}

}  // namespace condense::quantized
