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

// u_i in [0, 1): the top 24 bits of mix64(seed + golden * (i + 1)) times 2^-24 (exact in fp32).
// A function of (seed, i) only, so threads and devices draw the same numbers.
CONDENSE_HD inline float uniform_at(uint64_t seed, int64_t i) {
  return static_cast<float>(mix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)) >> 40) *
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

// qsgd with s = levels: a = |x| / scale * s (0 for a zero scale), level = floor(a) plus 1 with
// probability a - floor(a) (u is the element's uniform), at most s; code = sign * level + s.
// A NaN level (x NaN or infinite, or an infinite scale) is level 0, the code s: what every path
// produced before this was explicit (the float-to-integer conversion of NaN is undefined).
// Branch-free on the coin flip: mispredicting it cost a third of the CPU encode's time.
CONDENSE_HD inline uint32_t qsgd_code(float x, float scale, int64_t levels, float u) {
  const float s = static_cast<float>(levels);
  const float a = scale > 0 ? ::fabsf(x) / scale * s : 0.0f;
  float level = ::floorf(a);
  level += static_cast<float>(u < a - level);
  level = level <= s ? level : (level > s ? s : 0.0f);  // at most s; NaN -> 0
  const int64_t q = static_cast<int64_t>(level);
  return static_cast<uint32_t>((x < 0 ? -q : q) + levels);
}

// The value a code stands for: +-scale (sign) or (code - s) * scale / s (qsgd).
CONDENSE_HD inline float decoded_value(uint32_t code, float scale, int64_t levels) {
  return levels == 0 ? (code ? scale : -scale)
                     : static_cast<float>(static_cast<int64_t>(code) - levels) * scale /
                           static_cast<float>(levels);
}

CONDENSE_HD inline bool groups_fit(int64_t block, int bits) { return block % (8 / bits) == 0; }

// Encodes elements [i0, i1) of one block (i1 - i0 <= kGroup, i0 % per_byte == 0) with the
// block's scale into their ceil((i1 - i0) * bits / 8) bytes of `codes` (the code area of the
// payload); bits of the last byte past i1 are zero.
CONDENSE_HD inline void encode_group(const float* v, int64_t i0, int64_t i1, float scale, int64_t levels,
                                     int bits, uint64_t seed, uint8_t* codes) {
  uint64_t word = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const uint32_t c = levels ? qsgd_code(v[i], scale, levels, uniform_at(seed, i)) : sign_code(v[i]);
    word |= static_cast<uint64_t>(c) << ((i - i0) * bits);
  }
  uint8_t* out = codes + i0 * bits / 8;
  const int64_t n = ((i1 - i0) * bits + 7) / 8;
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<uint8_t>(word >> (8 * j));
}

// out[i] += the decoded value of element i, for i in [i0, i1) of one block (as encode_group).
CONDENSE_HD inline void decode_add_group(const uint8_t* codes, int64_t i0, int64_t i1, float scale,
                                         int64_t levels, int bits, float* out) {
  const uint8_t* in = codes + i0 * bits / 8;
  const int64_t n = ((i1 - i0) * bits + 7) / 8;
  uint64_t word = 0;
  for (int64_t j = 0; j < n; ++j) word |= static_cast<uint64_t>(in[j]) << (8 * j);
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t i = i0; i < i1; ++i)
    out[i] += decoded_value(static_cast<uint32_t>((word >> ((i - i0) * bits)) & mask), scale, levels);
}

// The CUDA kernels run one thread block of kCudaThreads threads per codec block. Thread t sums
// the terms of elements lo + t, lo + t + kCudaThreads, ... in order (partial_sum); the block
// then adds the partials pairwise, partial[t] += partial[t + w] for w = kCudaThreads / 2, ...,
// 1, and partial[0] is the block's sum. Tests replay this order on the CPU.
constexpr int kCudaThreads = 64;

CONDENSE_HD inline double partial_sum(const float* v, int64_t lo, int64_t hi, int t, int64_t levels) {
  double acc = 0;
  for (int64_t i = lo + t; i < hi; i += kCudaThreads) acc += scale_term(v[i], levels);
  return acc;
}

}  // namespace condense::quantized
