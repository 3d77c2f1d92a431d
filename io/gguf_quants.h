// Dequantization of ggml tensor data to float32, exactly as ggml's reference dequantizers
// (ggml/src/ggml-quants.c, dequantize_row_*) define it; block structs in ggml/src/ggml-common.h.
// The block-size table is kGgmlTypes in io/gguf_format.h. Layouts (all little-endian, fp16 is
// IEEE half, blocks follow each other along ne[0] and rows are whole numbers of blocks):
//
//   Q8_0  (32 values, 34 bytes):  half d; int8 qs[32].                    x[j] = qs[j] * d
//   Q4_0  (32 values, 18 bytes):  half d; u8 qs[16]. Byte j holds value j in its low nibble
//                                 and value j+16 in its high nibble.       x = (q - 8) * d
//   Q4_1  (32 values, 20 bytes):  half d, m; u8 qs[16], nibbles as Q4_0.  x = q * d + m
//   Q4_K  (256 values, 144 bytes): half d, dmin; u8 scales[12]; u8 qs[128]. Eight sub-blocks
//         of 32, each with a 6-bit scale sc and 6-bit min m packed in `scales`
//         (get_scale_min_k4): for sub-block j < 4, sc = scales[j] & 63, m = scales[j+4] & 63;
//         for j >= 4, sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4 and
//         m = (scales[j+4] >> 4) | (scales[j] >> 6) << 4. qs is four 32-byte groups; group g
//         holds sub-block 2g in its low nibbles and 2g+1 in its high nibbles.
//                                 x = (d * sc) * q - (dmin * m)
//   Q5_K  (256 values, 176 bytes): half d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]. As Q4_K,
//         plus a fifth bit: value l of sub-block s takes bit s of qh[l] as 16.
//   Q6_K  (256 values, 210 bytes): u8 ql[128]; u8 qh[64]; int8 scales[16]; half d. Two halves
//         of 128 values; in half h (ql += 64h, qh += 32h, scales += 8h), for l < 32:
//         value l      = (ql[l]    & 15) | ((qh[l] >> 0) & 3) << 4,
//         value l + 32 = (ql[l+32] & 15) | ((qh[l] >> 2) & 3) << 4,
//         value l + 64 = (ql[l]    >> 4) | ((qh[l] >> 4) & 3) << 4,
//         value l + 96 = (ql[l+32] >> 4) | ((qh[l] >> 6) & 3) << 4,
//         each minus 32; value i of the half uses scales[i / 16].   x = (d * sc) * q
//   Q5_0  (32 values, 22 bytes):  half d; u8 qh[4]; u8 qs[16]. Nibbles as Q4_0; value j takes
//         bit j of the little-endian u32 qh as 16.                 x = (q - 16) * d
//   Q5_1  (32 values, 24 bytes):  half d, m; u8 qh[4]; u8 qs[16], bits as Q5_0. x = q * d + m
//   Q2_K  (256 values, 84 bytes): u8 scales[16]; u8 qs[64]; half d, dmin. Sixteen sub-blocks
//         of 16; sub-block s has scale scales[s] & 15 and min scales[s] >> 4. Two halves of
//         128 values; in half h, value 32k + l (k < 4, l < 32) is (qs[32h + l] >> 2k) & 3.
//                                 x = (d * sc) * q - (dmin * m)
//   Q3_K  (256 values, 110 bytes): u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d. Sixteen
//         6-bit scales: scale s has low bits (scales[s % 8] >> 4 * (s / 8)) & 15 and high bits
//         (scales[8 + s % 4] >> 2 * (s / 4)) & 3, minus 32. Value 128h + 32k + l takes the low
//         bits (qs[32h + l] >> 2k) & 3 as Q2_K, minus 4 unless bit 4h + k of hmask[l] is set.
//                                 x = (d * sc) * q
//   IQ4_NL (32 values, 18 bytes): half d; u8 qs[16], nibbles as Q4_0, each an index into the
//         non-linear table kIq4nlValues.                           x = d * table[q]
//   IQ4_XS (256 values, 136 bytes): half d; u16 scales_h; u8 scales_l[4]; u8 qs[128]. Eight
//         sub-blocks of 32: scale s = ((scales_l[s / 2] >> 4 * (s % 2)) & 15 |
//         ((scales_h >> 2s) & 3) << 4) - 32; its 16 bytes qs[16s..] hold values 0..15 in the low
//         nibbles and 16..31 in the high ones, indices into kIq4nlValues.
//                                 x = (d * sc) * table[q]
//
// The lattice types (ggml's IQ2/IQ3/IQ1; grids in io/gguf_iq_grids.h, ksigns(k) = k with bit 7
// set to the parity of k, so that every sign byte has an even number of minus signs):
//   IQ2_XXS (256 values, 66 bytes): half d; u32 pairs per sub-block of 32: aux0 = four grid
//         indices (bytes, kIq2xxsGrid), aux1 = four 7-bit sign indices (bits 7l..7l+6) and a
//         4-bit scale ls (bits 28..31). db = d * (0.5 + ls) * 0.25;  x = db * grid[j] * sign_j
//   IQ2_XS  (256 values, 74 bytes): half d; u16 qs[32]; u8 scales[8]. qs: a 9-bit index into
//         kIq2xsGrid and a 7-bit sign index; groups 0-1 of a sub-block use the low scale
//         nibble, 2-3 the high one, each as IQ2_XXS's (0.5 + ls) * 0.25.
//   IQ2_S   (256 values, 82 bytes): half d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8].
//         Group l of sub-block s: index qs[4s + l] | ((qh[s] >> 2l) & 3) << 8 into kIq2sGrid,
//         signs byte signs[4s + l] (plain bits), scales as IQ2_XS.
//   IQ3_XXS (256 values, 98 bytes): half d; u8 qs[64]; u32 scales_and_signs[8]. Sub-block s:
//         eight 4-value grid indices qs[8s..], aux as IQ2_XXS's aux1; db = d * (0.5 + ls) * 0.5.
//   IQ3_S   (256 values, 110 bytes): half d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4].
//         Index k of sub-block s: qs[8s + k] | ((qh[s] >> k) & 1) << 8 into kIq3sGrid; sign
//         bytes plain; db = d * (1 + 2 * nibble s of scales).
//   IQ1_S   (256 values, 50 bytes): half d; u8 qs[32]; u16 qh[8]. Sub-block s: four indices
//         qs[4s + l] | ((qh[s] >> 3l) & 7) << 8 into kIq1sGrid (-1, 0, 1); dl = d * (2 *
//         ((qh[s] >> 12) & 7) + 1); delta = -0.125 if bit 15 is set, else 0.125.
//                                 x = dl * (grid[j] + delta)
//   IQ1_M   (256 values, 56 bytes): u8 qs[32]; u8 qh[16]; u16 sc[4]. The fp16 d is the top
//         nibbles of sc[0..3] (sc[i] >> 12 is bits 4i..4i+3); sub-block s has 3-bit scales
//         (sc[s/2] >> 6(s%2)) & 7 for groups 0-1 and >> 6(s%2)+3 for groups 2-3, each 2k + 1;
//         index l: qs[4s + l] | ((qh[2s + l/2] >> 4(l%2)) & 7) << 8, delta from bit 3 (or 7) of
//         that qh byte.                          x = dl * (grid[j] + delta)
//   TQ1_0   (256 values, 54 bytes): u8 qs[48]; u8 qh[4]; half d. Ternary digits in base-3 fixed
//         point: digit n of byte b is ((uint8)(b * 3^n) * 3) >> 8. Values 0..159 are digits
//         0..4 of qs[0..31] (digit-major), 160..239 digits 0..4 of qs[32..47], 240..255 digits
//         0..3 of qh.                            x = (digit - 1) * d
//   TQ2_0   (256 values, 66 bytes): u8 qs[64]; half d. Value 128h + 32l + m is bits 2l..2l+1
//         of qs[32h + m].                        x = (q - 1) * d
//   MXFP4   (32 values, 17 bytes): u8 e; u8 qs[16], nibbles as Q4_0, indices into the doubled
//         e2m1 values kMxfp4Values; d = 2^(e - 128) (the half of e8m0's 2^(e - 127), as bits).
//                                 x = table[q] * d
//
// Every result is computed in float32 in ggml's order of operations (scales are multiplied
// first, one rounding per operation), so results are bitwise equal to ggml's and to the gguf
// package's numpy port. A multiply and a following add are written as separate statements so
// that no compiler contracts them into one fused multiply-add (clang's default
// -ffp-contract=on fuses within an expression; GCC in ISO mode does not fuse).
//
// Everything here but dequantize() is free of LibTorch so that the GGUF reader (and its
// libFuzzer build, tests/fuzz/run_fuzz.sh) can use it; hence the header-only kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/gguf_format.h"
#include "io/gguf_iq_grids.h"

namespace at {
class Tensor;
}

namespace condense {

class GgufReader;
struct GgufTensorInfo;

namespace ggml_ref {

inline float half_at(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// ggml-quants.c get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a Q4_K or
// Q5_K super-block from its 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// q * d + m without a fused multiply-add (see the header comment).
inline float mul_add(float q, float d, float m) {
  const float p = q * d;
  return p + m;
}
inline float mul_sub(float d, float q, float m) {
  const float p = d * q;
  return p - m;
}

inline void q4_0(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

inline void q4_1(const uint8_t* blk, float* y) {
  const float d = half_at(blk), m = half_at(blk + 2);
  const uint8_t* qs = blk + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = mul_add(static_cast<float>(qs[j] & 0x0F), d, m);
    y[j + 16] = mul_add(static_cast<float>(qs[j] >> 4), d, m);
  }
}

// Q5_0 and Q5_1: the fifth bits of the block's 32 values, bit j for value j.
inline uint32_t fifth_bits(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

inline void q5_0(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint32_t qh = fifth_bits(blk + 2);
  const uint8_t* qs = blk + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | ((qh >> j) & 1) << 4;
    const int hi = (qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

inline void q5_1(const uint8_t* blk, float* y) {
  const float d = half_at(blk), m = half_at(blk + 2);
  const uint32_t qh = fifth_bits(blk + 4);
  const uint8_t* qs = blk + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | ((qh >> j) & 1) << 4;
    const int hi = (qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
    y[j] = mul_add(static_cast<float>(lo), d, m);
    y[j + 16] = mul_add(static_cast<float>(hi), d, m);
  }
}

inline void q2_k(const uint8_t* blk, float* y) {
  const uint8_t* scales = blk;
  const uint8_t* qs = blk + 16;
  const float d = half_at(blk + 80), dmin = half_at(blk + 82);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    const int q = (qs[32 * h + l] >> (2 * k)) & 3;
    const uint8_t sc = scales[i / 16];
    const float ds = d * static_cast<float>(sc & 0xF);
    const float ms = dmin * static_cast<float>(sc >> 4);
    y[i] = mul_sub(ds, static_cast<float>(q), ms);
  }
}

inline void q3_k(const uint8_t* blk, float* y) {
  const uint8_t* hmask = blk;
  const uint8_t* qs = blk + 32;
  const uint8_t* packed = blk + 96;
  const float d = half_at(blk + 108);
  float ds[16];
  for (int s = 0; s < 16; ++s) {
    const int lo = (packed[s % 8] >> (4 * (s / 8))) & 0xF;
    const int hi = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
    ds[s] = d * static_cast<float>((lo | hi << 4) - 32);
  }
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    int q = (qs[32 * h + l] >> (2 * k)) & 3;
    if (!((hmask[l] >> (4 * h + k)) & 1)) q -= 4;
    y[i] = ds[i / 16] * static_cast<float>(q);
  }
}

// ggml-common.h kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS.
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

inline void iq4_nl(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kIq4nlValues[qs[j] & 0x0F]);
    y[j + 16] = d * static_cast<float>(kIq4nlValues[qs[j] >> 4]);
  }
}

inline void iq4_xs(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const unsigned scales_h = blk[2] | (blk[3] << 8);
  const uint8_t* scales_l = blk + 4;
  const uint8_t* qs = blk + 8;
  for (int s = 0; s < 8; ++s) {
    const int ls = (((scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | ((scales_h >> (2 * s)) & 3) << 4) - 32;
    const float dl = d * static_cast<float>(ls);
    for (int j = 0; j < 16; ++j) {
      const uint8_t b = qs[16 * s + j];
      y[32 * s + j] = dl * static_cast<float>(kIq4nlValues[b & 0x0F]);
      y[32 * s + j + 16] = dl * static_cast<float>(kIq4nlValues[b >> 4]);
    }
  }
}

// ggml-quants.c ksigns_iq2xs: sign index k (7 bits) with an eighth sign making the count even.
inline uint8_t ksigns(unsigned k) {
  unsigned parity = 0;
  for (unsigned b = k; b; b >>= 1) parity ^= b & 1;
  return static_cast<uint8_t>(k | parity << 7);
}
inline float sign_of(uint8_t signs, int j) { return (signs >> j) & 1 ? -1.f : 1.f; }
inline uint32_t u32_at(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
inline unsigned u16_at(const uint8_t* p) { return p[0] | p[1] << 8; }

// IQ2's sub-block scale from its 4-bit code ls: d * (0.5 + ls) * 0.25, in ggml's order.
inline float iq2_scale(float d, unsigned ls) { return d * (0.5f + static_cast<float>(ls)) * 0.25f; }

// Eight values of an 8-wide grid point with one scale and one sign byte.
inline void grid8(uint64_t point, float db, uint8_t signs, float* y) {
  for (int j = 0; j < 8; ++j) {
    const float v = db * static_cast<float>(grid_byte(point, j));
    y[j] = v * sign_of(signs, j);
  }
}

inline void iq2_xxs(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  for (int s = 0; s < 8; ++s, y += 32) {
    const uint8_t* aux0 = blk + 2 + 8 * s;
    const uint32_t aux1 = u32_at(aux0 + 4);
    const float db = iq2_scale(d, aux1 >> 28);
    for (int l = 0; l < 4; ++l) grid8(kIq2xxsGrid[aux0[l]], db, ksigns((aux1 >> (7 * l)) & 127), y + 8 * l);
  }
}

inline void iq2_xs(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  const uint8_t* scales = blk + 2 + 64;
  for (int s = 0; s < 8; ++s, y += 32) {
    const float db[2] = {iq2_scale(d, scales[s] & 0xF), iq2_scale(d, scales[s] >> 4)};
    for (int l = 0; l < 4; ++l) {
      const unsigned q = u16_at(qs + 2 * (4 * s + l));
      grid8(kIq2xsGrid[q & 511], db[l / 2], ksigns(q >> 9), y + 8 * l);
    }
  }
}

inline void iq2_s(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  const uint8_t* signs = qs + 32;
  const uint8_t* qh = signs + 32;
  const uint8_t* scales = qh + 8;
  for (int s = 0; s < 8; ++s, y += 32) {
    const float db[2] = {iq2_scale(d, scales[s] & 0xF), iq2_scale(d, scales[s] >> 4)};
    for (int l = 0; l < 4; ++l) {
      const unsigned index = qs[4 * s + l] | ((qh[s] >> (2 * l)) & 3) << 8;
      grid8(kIq2sGrid[index], db[l / 2], signs[4 * s + l], y + 8 * l);
    }
  }
}

// Four values of a 4-wide IQ3 grid point, signs from bits `first`.. of `signs`.
inline void grid4(uint32_t point, float db, uint8_t signs, int first, float* y) {
  for (int j = 0; j < 4; ++j) {
    const float v = db * static_cast<float>(grid_byte(point, j));
    y[j] = v * sign_of(signs, first + j);
  }
}

inline void iq3_xxs(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  const uint8_t* scales_and_signs = qs + 64;
  for (int s = 0; s < 8; ++s, y += 32) {
    const uint32_t aux = u32_at(scales_and_signs + 4 * s);
    const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = ksigns((aux >> (7 * l)) & 127);
      grid4(kIq3xxsGrid[qs[8 * s + 2 * l]], db, signs, 0, y + 8 * l);
      grid4(kIq3xxsGrid[qs[8 * s + 2 * l + 1]], db, signs, 4, y + 8 * l + 4);
    }
  }
}

inline void iq3_s(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  const uint8_t* qh = qs + 64;
  const uint8_t* signs = qh + 8;
  const uint8_t* scales = signs + 32;
  for (int s = 0; s < 8; ++s, y += 32) {
    const int nibble = (scales[s / 2] >> (4 * (s % 2))) & 0xF;
    const float db = d * static_cast<float>(1 + 2 * nibble);
    for (int l = 0; l < 4; ++l) {
      for (int half = 0; half < 2; ++half) {
        const int k = 2 * l + half;
        const unsigned index = qs[8 * s + k] | ((qh[s] >> k) & 1) << 8;
        grid4(kIq3sGrid[index], db, signs[4 * s + l], 4 * half, y + 8 * l + 4 * half);
      }
    }
  }
}

// Eight values of an IQ1 grid point (-1, 0, 1): dl * (grid + delta).
inline void grid8_iq1(uint64_t point, float dl, float delta, float* y) {
  for (int j = 0; j < 8; ++j) {
    const float v = static_cast<float>(static_cast<int8_t>(grid_byte(point, j))) + delta;
    y[j] = dl * v;
  }
}

constexpr float kIq1sDelta = 0.125f;

inline void iq1_s(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  const uint8_t* qs = blk + 2;
  const uint8_t* qh = qs + 32;
  for (int s = 0; s < 8; ++s, y += 32) {
    const unsigned h = u16_at(qh + 2 * s);
    const float dl = d * static_cast<float>(2 * ((h >> 12) & 7) + 1);
    const float delta = h & 0x8000 ? -kIq1sDelta : kIq1sDelta;
    for (int l = 0; l < 4; ++l)
      grid8_iq1(kIq1sGrid[qs[4 * s + l] | ((h >> (3 * l)) & 7) << 8], dl, delta, y + 8 * l);
  }
}

inline void iq1_m(const uint8_t* blk, float* y) {
  const uint8_t* qs = blk;
  const uint8_t* qh = blk + 32;
  const uint8_t* sc = blk + 48;
  unsigned sc16[4];
  for (int i = 0; i < 4; ++i) sc16[i] = u16_at(sc + 2 * i);
  const uint16_t dbits = static_cast<uint16_t>((sc16[0] >> 12) | ((sc16[1] >> 8) & 0x00F0) |
                                               ((sc16[2] >> 4) & 0x0F00) | (sc16[3] & 0xF000));
  const float d = f16_to_f32(dbits);
  for (int s = 0; s < 8; ++s, y += 32) {
    const int shift = 6 * (s % 2);
    const float dl[2] = {d * static_cast<float>(2 * ((sc16[s / 2] >> shift) & 7) + 1),
                         d * static_cast<float>(2 * ((sc16[s / 2] >> (shift + 3)) & 7) + 1)};
    for (int l = 0; l < 4; ++l) {
      const uint8_t h = qh[2 * s + l / 2];
      const unsigned hi = (h >> (4 * (l % 2))) & 0xF;  // 3 index bits and the delta's sign
      const float delta = hi & 8 ? -kIq1sDelta : kIq1sDelta;
      grid8_iq1(kIq1sGrid[qs[4 * s + l] | (hi & 7) << 8], dl[l / 2], delta, y + 8 * l);
    }
  }
}

// TQ1_0's base-3 digit n (0..4) of byte b, in 0..2.
inline int trit(uint8_t b, int n) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const uint8_t q = static_cast<uint8_t>(b * kPow3[n]);
  return (q * 3) >> 8;
}

inline void tq1_0(const uint8_t* blk, float* y) {
  const uint8_t* qs = blk;
  const uint8_t* qh = blk + 48;
  const float d = half_at(blk + 52);
  for (int n = 0; n < 5; ++n)
    for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(trit(qs[m], n) - 1) * d;
  for (int n = 0; n < 5; ++n)
    for (int m = 0; m < 16; ++m) *y++ = static_cast<float>(trit(qs[32 + m], n) - 1) * d;
  for (int n = 0; n < 4; ++n)
    for (int m = 0; m < 4; ++m) *y++ = static_cast<float>(trit(qh[m], n) - 1) * d;
}

inline void tq2_0(const uint8_t* blk, float* y) {
  const float d = half_at(blk + 64);
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 4; ++l)
      for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(((blk[32 * h + m] >> (2 * l)) & 3) - 1) * d;
}

// ggml-common.h kvalues_mxfp4: e2m1's values doubled (the scale below is halved to match).
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

inline void mxfp4(const uint8_t* blk, float* y) {
  // ggml_e8m0_to_fp32_half: 2^(e - 128) as float bits (subnormal for e < 2).
  const unsigned e = blk[0];
  const uint32_t bits = e < 2 ? 0x00200000u << e : (e - 1) << 23;
  float d;
  std::memcpy(&d, &bits, sizeof d);
  const uint8_t* qs = blk + 1;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(kMxfp4Values[qs[j] & 0x0F]) * d;
    y[j + 16] = static_cast<float>(kMxfp4Values[qs[j] >> 4]) * d;
  }
}

inline void q8_0(const uint8_t* blk, float* y) {
  const float d = half_at(blk);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(blk[2 + j])) * d;
}

// Q4_K and Q5_K share everything but the fifth bit (qh == nullptr for Q4_K).
inline void k_quant_4_5(const uint8_t* blk, bool five_bits, float* y) {
  const float d = half_at(blk), dmin = half_at(blk + 2);
  const uint8_t* scales = blk + 4;
  const uint8_t* qh = five_bits ? blk + 16 : nullptr;
  const uint8_t* qs = blk + 16 + (five_bits ? 32 : 0);
  for (int g = 0; g < 4; ++g) {  // 64 values: sub-blocks 2g (low nibbles) and 2g+1 (high)
    for (int half = 0; half < 2; ++half) {
      const int s = 2 * g + half;
      uint8_t sc, m;
      scale_min_k4(s, scales, &sc, &m);
      const float ds = d * static_cast<float>(sc);
      const float ms = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        int q = half == 0 ? (qs[32 * g + l] & 0xF) : (qs[32 * g + l] >> 4);
        if (qh && ((qh[l] >> s) & 1)) q += 16;
        y[64 * g + 32 * half + l] = mul_sub(ds, static_cast<float>(q), ms);
      }
    }
  }
}

inline void q6_k(const uint8_t* blk, float* y) {
  const float d = half_at(blk + 128 + 64 + 16);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = blk + 64 * h;
    const uint8_t* qh = blk + 128 + 32 * h;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 128 + 64 + 8 * h);
    float* out = y + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int q[4] = {((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32,
                        ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32,
                        ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
                        ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32};
      for (int k = 0; k < 4; ++k) {
        const int i = l + 32 * k;  // position within the half; its scale is sc[i / 16]
        const float ds = d * static_cast<float>(sc[i / 16]);
        out[i] = ds * static_cast<float>(q[k]);
      }
    }
  }
}

}  // namespace ggml_ref

// The table entry for `type`, or a condense::Error naming `what` (the tensor) and the type and
// listing the supported ones.
inline const GgmlTypeInfo& ggml_type_or_fail(uint32_t type, const std::string& what) {
  const GgmlTypeInfo* t = ggml_type_info(type);
  if (!t) {
    const char* name = ggml_type_name(type);
    fail("{}: ggml type {} ({}) is not supported by condense (supported: {})", what, type,
         name ? name : "not a ggml type", ggml_supported_types());
  }
  return *t;
}

// Bytes of one row of `ne0` values of `type`; throws unless ne0 is a whole number of blocks.
inline uint64_t ggml_row_bytes(uint32_t type, int64_t ne0, const std::string& what) {
  const GgmlTypeInfo& t = ggml_type_or_fail(type, what);
  CONDENSE_CHECK(ne0 >= 0 && ne0 % t.block == 0, "{}: row length {} is not a multiple of the {} "
                 "block size {}", what, ne0, t.name, t.block);
  return static_cast<uint64_t>(ne0 / t.block) * static_cast<uint64_t>(t.block_bytes);
}

// Checks that data of `bytes` bytes holds exactly `numel` values of `type`: a supported type,
// numel a whole number of blocks, and bytes the size of those blocks. Returns the table entry;
// errors name `what` (the tensor) and the type.
inline const GgmlTypeInfo& ggml_check_bytes(uint32_t type, size_t bytes, int64_t numel,
                                            const std::string& what) {
  const GgmlTypeInfo& t = ggml_type_or_fail(type, what);
  CONDENSE_CHECK(numel >= 0 && numel % t.block == 0, "{}: {} values of type {} are not a whole "
                 "number of blocks of {}", what, numel, t.name, t.block);
  // Compared in blocks, so that no product can overflow for absurd counts.
  const uint64_t blocks = static_cast<uint64_t>(numel / t.block);
  const uint64_t block_bytes = static_cast<uint64_t>(t.block_bytes);
  CONDENSE_CHECK(bytes % block_bytes == 0 && bytes / block_bytes == blocks, "{}: {} bytes of type "
                 "{} but {} values need {}", what, bytes, t.name, numel, blocks * block_bytes);
  return t;
}

// Decodes `numel` values of `type` from data[0, bytes) into out[0, numel), after
// ggml_check_bytes.
inline void dequantize_into(uint32_t type, const uint8_t* data, size_t bytes, int64_t numel,
                            float* out, const std::string& what) {
  const GgmlTypeInfo& t = ggml_check_bytes(type, bytes, numel, what);
  // Block b of `block` values from its block_bytes bytes, for every block.
  auto blocks = [&](auto decode) {
    for (int64_t b = 0; b < numel / t.block; ++b) decode(data + b * t.block_bytes, out + b * t.block);
  };
  switch (t.type) {
    case GgmlType::kF32:
      if (numel) std::memcpy(out, data, bytes);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < numel; ++i) out[i] = ggml_ref::half_at(data + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < numel; ++i)
        out[i] = bf16_to_f32(static_cast<uint16_t>(data[2 * i] | (data[2 * i + 1] << 8)));
      return;
    case GgmlType::kQ8_0: return blocks(ggml_ref::q8_0);
    case GgmlType::kQ4_0: return blocks(ggml_ref::q4_0);
    case GgmlType::kQ4_1: return blocks(ggml_ref::q4_1);
    case GgmlType::kQ5_0: return blocks(ggml_ref::q5_0);
    case GgmlType::kQ5_1: return blocks(ggml_ref::q5_1);
    case GgmlType::kQ2_K: return blocks(ggml_ref::q2_k);
    case GgmlType::kQ3_K: return blocks(ggml_ref::q3_k);
    case GgmlType::kQ4_K:
      return blocks([](const uint8_t* blk, float* y) { ggml_ref::k_quant_4_5(blk, false, y); });
    case GgmlType::kQ5_K:
      return blocks([](const uint8_t* blk, float* y) { ggml_ref::k_quant_4_5(blk, true, y); });
    case GgmlType::kQ6_K: return blocks(ggml_ref::q6_k);
    case GgmlType::kIQ4_NL: return blocks(ggml_ref::iq4_nl);
    case GgmlType::kIQ4_XS: return blocks(ggml_ref::iq4_xs);
    case GgmlType::kIQ2_XXS: return blocks(ggml_ref::iq2_xxs);
    case GgmlType::kIQ2_XS: return blocks(ggml_ref::iq2_xs);
    case GgmlType::kIQ2_S: return blocks(ggml_ref::iq2_s);
    case GgmlType::kIQ3_XXS: return blocks(ggml_ref::iq3_xxs);
    case GgmlType::kIQ3_S: return blocks(ggml_ref::iq3_s);
    case GgmlType::kIQ1_S: return blocks(ggml_ref::iq1_s);
    case GgmlType::kIQ1_M: return blocks(ggml_ref::iq1_m);
    case GgmlType::kTQ1_0: return blocks(ggml_ref::tq1_0);
    case GgmlType::kTQ2_0: return blocks(ggml_ref::tq2_0);
    case GgmlType::kMXFP4: return blocks(ggml_ref::mxfp4);
  }
  fail("{}: ggml type {} has no dequantizer", what, t.name);  // a table entry without a case
}

// The same, as a 1-D float32 tensor of numel values (LibTorch callers only).
at::Tensor dequantize(GgmlType type, const uint8_t* data, size_t bytes, int64_t numel,
                      const std::string& what = "tensor");
// A GGUF tensor as float32 in PyTorch order (shape = ne reversed), dequantized from the
// reader's image; errors name the file and the tensor.
at::Tensor dequantize(const GgufReader& reader, const GgufTensorInfo& info);

}  // namespace condense
