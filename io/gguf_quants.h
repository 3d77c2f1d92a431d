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
