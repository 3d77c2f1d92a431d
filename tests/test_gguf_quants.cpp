// GGUF dequantization (io/gguf_quants.h): hand-built blocks of every supported type whose
// values follow from a closed form (the packing in each test is the inverse of ggml's block
// layout, written from ggml-common.h; the expected value is computed directly from the chosen
// scales, mins and quants), the block-size table, the reader on quantized tensors, and every
// error (unsupported type, partial blocks, wrong byte count). Bitwise agreement with the gguf
// package on random blocks and on a real model is in tests/python/test_gguf_dequant.py.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/gguf_format.h"
#include "io/gguf_quants.h"
#include "io/gguf_reader.h"

namespace condense {
namespace {

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needles.front() << "'";
  } catch (const Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  }
}

void put_half(std::vector<uint8_t>& b, size_t at, float v) {
  uint16_t h = f32_to_f16(v);
  ASSERT_EQ(f16_to_f32(h), v) << "test scales must be exact in fp16";
  b[at] = static_cast<uint8_t>(h & 0xff);
  b[at + 1] = static_cast<uint8_t>(h >> 8);
}

std::vector<float> decode(GgmlType type, const std::vector<uint8_t>& bytes, int64_t numel) {
  at::Tensor t = dequantize(type, bytes.data(), bytes.size(), numel, "test");
  EXPECT_EQ(t.scalar_type(), at::kFloat);
  EXPECT_EQ(t.dim(), 1);
  EXPECT_EQ(t.numel(), numel);
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

TEST(GgufQuants, BlockTableMatchesGgml) {
  // ggml.c type_traits (blck_size, type_size), as gguf-py's GGML_QUANT_SIZES lists them.
  struct Row { GgmlType t; uint32_t id; int64_t block, bytes; const char* name; };
  const Row rows[] = {{GgmlType::kF32, 0, 1, 4, "F32"},      {GgmlType::kF16, 1, 1, 2, "F16"},
                      {GgmlType::kQ4_0, 2, 32, 18, "Q4_0"},  {GgmlType::kQ4_1, 3, 32, 20, "Q4_1"},
                      {GgmlType::kQ8_0, 8, 32, 34, "Q8_0"},  {GgmlType::kQ4_K, 12, 256, 144, "Q4_K"},
                      {GgmlType::kQ5_K, 13, 256, 176, "Q5_K"}, {GgmlType::kQ6_K, 14, 256, 210, "Q6_K"},
                      {GgmlType::kBF16, 30, 1, 2, "BF16"},   {GgmlType::kQ5_0, 6, 32, 22, "Q5_0"},
                      {GgmlType::kQ5_1, 7, 32, 24, "Q5_1"},  {GgmlType::kQ2_K, 10, 256, 84, "Q2_K"},
                      {GgmlType::kQ3_K, 11, 256, 110, "Q3_K"}, {GgmlType::kIQ4_NL, 20, 32, 18, "IQ4_NL"},
                      {GgmlType::kIQ4_XS, 23, 256, 136, "IQ4_XS"}, {GgmlType::kIQ2_XXS, 16, 256, 66, "IQ2_XXS"},
                      {GgmlType::kIQ2_XS, 17, 256, 74, "IQ2_XS"}, {GgmlType::kIQ2_S, 22, 256, 82, "IQ2_S"},
                      {GgmlType::kIQ3_XXS, 18, 256, 98, "IQ3_XXS"}, {GgmlType::kIQ3_S, 21, 256, 110, "IQ3_S"},
                      {GgmlType::kIQ1_S, 19, 256, 50, "IQ1_S"}, {GgmlType::kIQ1_M, 29, 256, 56, "IQ1_M"},
                      {GgmlType::kTQ1_0, 34, 256, 54, "TQ1_0"}, {GgmlType::kTQ2_0, 35, 256, 66, "TQ2_0"},
                      {GgmlType::kMXFP4, 39, 32, 17, "MXFP4"}};
  EXPECT_EQ(std::size(kGgmlTypes), std::size(rows));
  for (const Row& r : rows) {
    EXPECT_EQ(static_cast<uint32_t>(r.t), r.id);
    const GgmlTypeInfo* info = ggml_type_info(r.id);
    ASSERT_NE(info, nullptr) << r.name;
    EXPECT_EQ(info->block, r.block) << r.name;
    EXPECT_EQ(info->block_bytes, r.bytes) << r.name;
    EXPECT_STREQ(info->name, r.name);
    EXPECT_STREQ(ggml_type_name(r.id), r.name);
    EXPECT_EQ(ggml_block_size(r.id), r.block);
    EXPECT_EQ(ggml_nbytes(r.id, 4 * 256), static_cast<uint64_t>(4 * 256 / r.block * r.bytes));
    EXPECT_EQ(ggml_row_bytes(r.id, 3 * 256, "t"), static_cast<uint64_t>(3 * 256 / r.block * r.bytes));
  }
  EXPECT_EQ(ggml_type_info(15), nullptr);  // Q8_K: ggml's intermediate type, never in a file
  EXPECT_STREQ(ggml_type_name(15), "Q8_K");
  EXPECT_EQ(ggml_type_name(4), nullptr);  // retired id
  EXPECT_EQ(ggml_type_name(1000), nullptr);
  EXPECT_EQ(ggml_nbytes(15, 256), 0u);
}

TEST(GgufQuants, FloatTypes) {
  const float f[] = {1.5f, -2.0f, 3.0e-41f /* subnormal */, 65504.0f};
  std::vector<uint8_t> b(sizeof(f));
  std::memcpy(b.data(), f, sizeof(f));
  std::vector<float> y = decode(GgmlType::kF32, b, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], f[i]);
  // fp16: 1.0, -2.0, largest finite, smallest subnormal 2^-24, -0.
  const uint16_t h[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000};
  b.assign(reinterpret_cast<const uint8_t*>(h), reinterpret_cast<const uint8_t*>(h) + sizeof(h));
  y = decode(GgmlType::kF16, b, 5);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], 65504.0f);
  EXPECT_EQ(y[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(y[4] == 0.0f && std::signbit(y[4]));
  // bf16 is the top half of a float32: 1.0, -3.0, 2^-126.
  const uint16_t bf[] = {0x3F80, 0xC040, 0x0080};
  b.assign(reinterpret_cast<const uint8_t*>(bf), reinterpret_cast<const uint8_t*>(bf) + sizeof(bf));
  y = decode(GgmlType::kBF16, b, 3);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -126));
}

TEST(GgufQuants, Q8_0IsScaleTimesQuant) {
  // Two blocks: d = 0.5 with q = -128..-97, d = -0.0625 with q = 96..127.
  std::vector<uint8_t> b(2 * 34);
  const float d[2] = {0.5f, -0.0625f};
  for (int blk = 0; blk < 2; ++blk) {
    put_half(b, 34 * blk, d[blk]);
    for (int j = 0; j < 32; ++j) b[34 * blk + 2 + j] = static_cast<uint8_t>(static_cast<int8_t>(blk ? 96 + j : -128 + j));
  }
  std::vector<float> y = decode(GgmlType::kQ8_0, b, 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y[j], 0.5f * (-128 + j));
    EXPECT_EQ(y[32 + j], -0.0625f * (96 + j));
  }
}

TEST(GgufQuants, Q4_0IsScaleTimesQuantMinus8) {
  // Byte j holds value j (low nibble) and value j + 16 (high nibble).
  std::vector<uint8_t> b(18);
  put_half(b, 0, 0.25f);
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = (7 * i + 3) % 16;
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  std::vector<float> y = decode(GgmlType::kQ4_0, b, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.25f * (q[i] - 8)) << i;
}

TEST(GgufQuants, Q4_1IsScaleTimesQuantPlusMin) {
  std::vector<uint8_t> b(2 * 20);
  const float d[2] = {0.5f, 3.0f}, m[2] = {-1.25f, 100.0f};
  int q[64];
  for (int i = 0; i < 64; ++i) q[i] = (5 * i + 1) % 16;
  for (int blk = 0; blk < 2; ++blk) {
    put_half(b, 20 * blk, d[blk]);
    put_half(b, 20 * blk + 2, m[blk]);
    for (int j = 0; j < 16; ++j)
      b[20 * blk + 4 + j] = static_cast<uint8_t>(q[32 * blk + j] | (q[32 * blk + j + 16] << 4));
  }
  std::vector<float> y = decode(GgmlType::kQ4_1, b, 64);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(y[i], d[i / 32] * q[i] + m[i / 32]) << i;
}

// Packs eight 6-bit scales and mins into the 12 bytes of a Q4_K / Q5_K super-block, the
// inverse of ggml's get_scale_min_k4 (as quantize_row_q4_K_ref stores them): sub-blocks 0-3
// keep scale and min in the low 6 bits of bytes 0-3 and 4-7; sub-blocks 4-7 keep their low
// 4 bits in the nibbles of bytes 8-11 and their top 2 bits in the top bits of bytes 0-7.
void pack_scales_k4(const int sc[8], const int m[8], uint8_t* out) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] |= static_cast<uint8_t>(sc[j]);
      out[j + 4] |= static_cast<uint8_t>(m[j]);
    } else {
      out[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      out[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      out[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
}

// One Q4_K (five_bits false) or Q5_K super-block with quants q[256] (0..15 or 0..31).
std::vector<uint8_t> k_block(float d, float dmin, const int sc[8], const int m[8], const int* q,
                             bool five_bits) {
  std::vector<uint8_t> b(five_bits ? 176 : 144, 0);
  put_half(b, 0, d);
  put_half(b, 2, dmin);
  pack_scales_k4(sc, m, b.data() + 4);
  uint8_t* qh = five_bits ? b.data() + 16 : nullptr;
  uint8_t* qs = b.data() + 16 + (five_bits ? 32 : 0);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32, g = s / 2;
    qs[32 * g + l] |= static_cast<uint8_t>((q[i] & 0xF) << (s % 2 ? 4 : 0));
    if (qh && (q[i] & 16)) qh[l] |= static_cast<uint8_t>(1 << s);
  }
  return b;
}

void check_k4_k5(bool five_bits) {
  // Scales and mins cover the 6-bit range, including the values whose top two bits live in
  // other bytes; two super-blocks with different d / dmin catch a wrong block stride.
  const int sc[2][8] = {{1, 63, 17, 40, 5, 33, 62, 48}, {0, 16, 31, 32, 47, 48, 59, 63}};
  const int m[2][8] = {{0, 7, 63, 20, 31, 2, 50, 9}, {63, 62, 1, 2, 16, 32, 48, 15}};
  const float d[2] = {0.5f, 0.0078125f}, dmin[2] = {0.25f, 2.0f};
  const int qmax = five_bits ? 32 : 16;
  std::vector<int> q(512);
  for (int i = 0; i < 512; ++i) q[i] = (11 * i + i / 7) % qmax;
  std::vector<uint8_t> bytes;
  for (int blk = 0; blk < 2; ++blk) {
    std::vector<uint8_t> b = k_block(d[blk], dmin[blk], sc[blk], m[blk], q.data() + 256 * blk, five_bits);
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  std::vector<float> y = decode(five_bits ? GgmlType::kQ5_K : GgmlType::kQ4_K, bytes, 512);
  for (int i = 0; i < 512; ++i) {
    const int blk = i / 256, s = (i % 256) / 32;
    const float want = d[blk] * sc[blk][s] * q[i] - dmin[blk] * m[blk][s];
    ASSERT_EQ(y[i], want) << (five_bits ? "Q5_K" : "Q4_K") << " value " << i;
  }
}

TEST(GgufQuants, Q4_KIsSubScaleTimesQuantMinusSubMin) { check_k4_k5(false); }
TEST(GgufQuants, Q5_KAddsTheFifthBit) { check_k4_k5(true); }

TEST(GgufQuants, Q6_KIsScaleTimesSubScaleTimesQuantMinus32) {
  // 16 int8 sub-scales (negative ones included) for 16 values each; q in 0..63 stored as 4 low
  // bits in ql and 2 high bits in qh, value = d * sc * (q - 32).
  const float d[2] = {0.125f, -4.0f};
  std::vector<int> q(512), sc(32);
  for (int i = 0; i < 512; ++i) q[i] = (13 * i + i / 5) % 64;
  for (int k = 0; k < 32; ++k) sc[k] = k % 3 == 0 ? -128 + 4 * k : 127 - 3 * k;  // -128..127
  std::vector<uint8_t> bytes(2 * 210, 0);
  for (int blk = 0; blk < 2; ++blk) {
    uint8_t* b = bytes.data() + 210 * blk;
    uint8_t* ql = b;
    uint8_t* qh = b + 128;
    for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(static_cast<int8_t>(sc[16 * blk + k]));
    std::vector<uint8_t> dh(2);
    put_half(dh, 0, d[blk]);
    b[208] = dh[0];
    b[209] = dh[1];
    for (int i = 0; i < 256; ++i) {
      const int v = q[256 * blk + i], h = i / 128, idx = i % 128, part = idx / 32, l = idx % 32;
      // Parts 0 and 1 use the low nibbles of ql[l] and ql[l + 32], parts 2 and 3 their high
      // nibbles; the two high bits go to bits 2*part of qh[l].
      const int byte = 64 * h + l + (part % 2 ? 32 : 0);
      ql[byte] |= static_cast<uint8_t>((v & 0xF) << (part >= 2 ? 4 : 0));
      qh[32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * part));
    }
  }
  std::vector<float> y = decode(GgmlType::kQ6_K, bytes, 512);
  for (int i = 0; i < 512; ++i) {
    const int blk = i / 256, sub = (i % 256) / 16;
    ASSERT_EQ(y[i], d[blk] * sc[16 * blk + sub] * (q[i] - 32)) << "value " << i;
  }
}

TEST(GgufQuants, Q5_0AndQ5_1AddTheFifthBit) {
  // Nibbles as Q4_0; value i's fifth bit is bit i of the little-endian u32 after the scale(s).
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = (11 * i + 5) % 32;
  auto pack = [&](std::vector<uint8_t>& b, size_t at) {
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) qh |= static_cast<uint32_t>(q[i] >> 4) << i;
    for (int k = 0; k < 4; ++k) b[at + k] = static_cast<uint8_t>(qh >> (8 * k));
    for (int j = 0; j < 16; ++j) b[at + 4 + j] = static_cast<uint8_t>((q[j] & 15) | (q[j + 16] & 15) << 4);
  };
  std::vector<uint8_t> b0(22), b1(24);
  put_half(b0, 0, 0.5f);
  pack(b0, 2);
  put_half(b1, 0, 0.25f);
  put_half(b1, 2, -3.0f);
  pack(b1, 4);
  const std::vector<float> y0 = decode(GgmlType::kQ5_0, b0, 32), y1 = decode(GgmlType::kQ5_1, b1, 32);
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(y0[i], 0.5f * (q[i] - 16)) << i;
    EXPECT_EQ(y1[i], 0.25f * q[i] - 3.0f) << i;
  }
}

TEST(GgufQuants, Q2_KAndQ3_KUseTwoBitsPerValueAndSixteenScales) {
  // Value 128h + 32k + l sits in bits 2k of qs[32h + l]; sub-block i / 16 gives the scale.
  auto two_bits = [](std::vector<uint8_t>& b, size_t at, const int* v) {
    for (int i = 0; i < 256; ++i) b[at + 32 * (i / 128) + i % 32] |= static_cast<uint8_t>(v[i] << (2 * ((i % 128) / 32)));
  };
  int q[256];
  for (int i = 0; i < 256; ++i) q[i] = (7 * i + i / 64) % 4;
  std::vector<uint8_t> b(84, 0);  // Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin
  for (int s = 0; s < 16; ++s) b[s] = static_cast<uint8_t>(s | (15 - s) << 4);
  two_bits(b, 16, q);
  put_half(b, 80, 0.5f);
  put_half(b, 82, 0.25f);
  std::vector<float> y = decode(GgmlType::kQ2_K, b, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.5f * (i / 16) * q[i] - 0.25f * (15 - i / 16)) << i;

  // Q3_K: hmask[32], qs[64], 12 bytes of 6-bit scales (minus 32), d. A value is its two low bits
  // minus 4 unless its bit (4h + k) of hmask[l] is set: u - 4 for u = (hmask bit) << 2 | low.
  int u[256], sc[16];
  for (int i = 0; i < 256; ++i) u[i] = (5 * i + 3) % 8;
  for (int s = 0; s < 16; ++s) sc[s] = (5 * s + 7) % 64;
  std::vector<uint8_t> c(110, 0);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    c[l] |= static_cast<uint8_t>((u[i] >> 2) << (4 * h + k));
  }
  int low[256];
  for (int i = 0; i < 256; ++i) low[i] = u[i] & 3;
  two_bits(c, 32, low);
  for (int s = 0; s < 16; ++s) {
    c[96 + s % 8] |= static_cast<uint8_t>((sc[s] & 15) << (4 * (s / 8)));
    c[96 + 8 + s % 4] |= static_cast<uint8_t>((sc[s] >> 4) << (2 * (s / 4)));
  }
  put_half(c, 108, 0.125f);
  y = decode(GgmlType::kQ3_K, c, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.125f * (sc[i / 16] - 32) * (u[i] - 4)) << i;
}

TEST(GgufQuants, IQ4TypesIndexTheNonLinearTable) {
  const int table[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  int q[256];
  for (int i = 0; i < 256; ++i) q[i] = (3 * i + i / 32) % 16;
  std::vector<uint8_t> b(18);  // IQ4_NL: d, nibbles as Q4_0
  put_half(b, 0, 0.5f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
  std::vector<float> y = decode(GgmlType::kIQ4_NL, b, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.5f * table[q[i]]) << i;
  // IQ4_XS: d, scales_h (2 bits per sub-block), scales_l (4 bits per sub-block), qs[128].
  std::vector<uint8_t> c(136, 0);
  put_half(c, 0, 0.25f);
  int ls[8];
  uint32_t scales_h = 0;
  for (int s = 0; s < 8; ++s) {
    ls[s] = (9 * s + 3) % 64;
    c[4 + s / 2] |= static_cast<uint8_t>((ls[s] & 15) << (4 * (s % 2)));
    scales_h |= static_cast<uint32_t>(ls[s] >> 4) << (2 * s);
    for (int j = 0; j < 16; ++j) c[8 + 16 * s + j] = static_cast<uint8_t>(q[32 * s + j] | q[32 * s + j + 16] << 4);
  }
  c[2] = static_cast<uint8_t>(scales_h);
  c[3] = static_cast<uint8_t>(scales_h >> 8);
  y = decode(GgmlType::kIQ4_XS, c, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.25f * (ls[i / 32] - 32) * table[q[i]]) << i;
}

// The ternary types and MXFP4 from their closed forms; the lattice types (IQ1-IQ3) index tables
// that only a reference holds: tests/python/test_gguf_dequant.py compares them with the gguf
// package bit for bit, and here a block of zero indices decodes to its grid's first point.
TEST(GgufQuants, TernaryMxfp4AndLatticeTypes) {
  int t[256];
  for (int i = 0; i < 256; ++i) t[i] = (7 * i + i / 5) % 3;  // ternary digits 0..2 (value t - 1)
  std::vector<uint8_t> b(66, 0);  // TQ2_0: value 128h + 32l + m in bits 2l of qs[32h + m]
  for (int i = 0; i < 256; ++i) b[32 * (i / 128) + i % 32] |= static_cast<uint8_t>(t[i] << (2 * ((i % 128) / 32)));
  put_half(b, 64, 0.75f);
  std::vector<float> y = decode(GgmlType::kTQ2_0, b, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 0.75f * (t[i] - 1)) << i;
  // TQ1_0: five digits per byte in base-3 fixed point, byte = ceil(value * 256 / 243).
  std::vector<uint8_t> c(54, 0);
  auto pack = [&](const int* digits, int count) {
    int v = 0;
    for (int n = 0; n < count; ++n) v = 3 * v + digits[n];  // digit 0 is the most significant
    for (int n = count; n < 5; ++n) v *= 3;
    return static_cast<uint8_t>((v * 256 + 242) / 243);
  };
  int digits[5];
  for (int m = 0; m < 32; ++m) {
    for (int n = 0; n < 5; ++n) digits[n] = t[32 * n + m];
    c[m] = pack(digits, 5);
  }
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 5; ++n) digits[n] = t[160 + 16 * n + m];
    c[32 + m] = pack(digits, 5);
  }
  for (int m = 0; m < 4; ++m) {
    for (int n = 0; n < 4; ++n) digits[n] = t[240 + 4 * n + m];
    c[48 + m] = pack(digits, 4);
  }
  put_half(c, 52, -2.0f);
  y = decode(GgmlType::kTQ1_0, c, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], -2.0f * (t[i] - 1)) << i;
  // MXFP4: scale 2^(e - 128) (e = 130: 4), doubled e2m1 values.
  const int values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  std::vector<uint8_t> m(17);
  m[0] = 130;
  for (int j = 0; j < 16; ++j) m[1 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
  y = decode(GgmlType::kMXFP4, m, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 4.0f * values[j]) << j;
    EXPECT_EQ(y[j + 16], 4.0f * values[15 - j]) << j;
  }
  m[0] = 1;  // e < 2: a subnormal scale, 2^-127
  EXPECT_EQ(decode(GgmlType::kMXFP4, m, 32)[1], std::ldexp(1.0f, -127));
  // IQ2_XXS with zero indices, sign indices and scale: every value d * 0.5 * 0.25 * 0x08.
  std::vector<uint8_t> z(66, 0);
  put_half(z, 0, 2.0f);
  y = decode(GgmlType::kIQ2_XXS, z, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], 2.0f * 0.5f * 0.25f * 8) << i;
}

TEST(GgufQuants, ErrorsNameTheTensorAndType) {
  std::vector<uint8_t> b(4096, 0);
  // A number ggml never assigned, and a ggml type condense does not read: both listed.
  expect_error([&] { dequantize_into(77, b.data(), 32, 32, nullptr, "blk.0.attn_q.weight"); },
               {"blk.0.attn_q.weight", "ggml type 77", "not a ggml type", "Q4_K", "Q6_K"});
  expect_error([&] { dequantize(static_cast<GgmlType>(15), b.data(), 292, 256, "w"); },
               {"w:", "ggml type 15 (Q8_K)", "not supported", "supported: F32"});
  // Row length / element count not a whole number of blocks.
  expect_error([&] { ggml_row_bytes(12, 100, "blk.1.ffn_up.weight"); },
               {"blk.1.ffn_up.weight", "row length 100", "Q4_K", "256"});
  expect_error([&] { dequantize(GgmlType::kQ4_0, b.data(), 18, 31, "w"); },
               {"w:", "31 values", "Q4_0", "blocks of 32"});
  // Byte count that does not match numel, short and long.
  expect_error([&] { dequantize(GgmlType::kQ8_0, b.data(), 67, 64, "emb"); },
               {"emb:", "67 bytes", "Q8_0", "64 values need 68"});
  expect_error([&] { dequantize(GgmlType::kQ6_K, b.data(), 211, 256, "out"); },
               {"out:", "211 bytes", "Q6_K", "need 210"});
  expect_error([&] { dequantize(GgmlType::kF32, b.data(), 12, 4, "n"); }, {"n:", "12 bytes", "F32", "need 16"});
  // An absurd count is a clear error before anything is allocated.
  expect_error([&] { dequantize(GgmlType::kQ4_0, b.data(), 18, int64_t{1} << 62, "huge"); },
               {"huge:", "18 bytes", "Q4_0"});
  expect_error([&] { dequantize(GgmlType::kF32, b.data(), 4, -1, "neg"); }, {"neg:", "-1 values"});
  EXPECT_EQ(dequantize(GgmlType::kQ4_K, b.data(), 0, 0, "empty").numel(), 0);
}

// A GGUF v3 image with no metadata and the given tensors (name, ne, type, data bytes).
struct RawTensor {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::vector<uint8_t> data;
};

std::string gguf_image(const std::vector<RawTensor>& ts) {
  std::string s;
  auto put = [&](uint64_t v, int n) { for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff)); };
  put(kGgufMagic, 4);
  put(3, 4);
  put(ts.size(), 8);
  put(0, 8);
  uint64_t off = 0;
  for (const auto& t : ts) {
    put(t.name.size(), 8);
    s += t.name;
    put(t.ne.size(), 4);
    for (uint64_t n : t.ne) put(n, 8);
    put(t.type, 4);
    put(off, 8);
    off = (off + t.data.size() + 31) / 32 * 32;
  }
  s.resize((s.size() + 31) / 32 * 32, '\0');
  for (const auto& t : ts) {
    s.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    s.resize((s.size() + 31) / 32 * 32, '\0');
  }
  return s;
}

TEST(GgufQuants, ReaderReadsQuantizedTensors) {
  // A [2, 256] Q4_K matrix (two super-blocks, one per row) and a [3, 32] Q4_1 one.
  const int sc[8] = {1, 2, 3, 4, 60, 61, 62, 63}, m[8] = {5, 6, 7, 8, 50, 40, 30, 20};
  std::vector<int> q(256);
  for (int i = 0; i < 256; ++i) q[i] = i % 16;
  std::vector<uint8_t> k = k_block(1.0f, 0.5f, sc, m, q.data(), false);
  std::vector<uint8_t> k2 = k_block(-2.0f, 0.125f, sc, m, q.data(), false);
  k.insert(k.end(), k2.begin(), k2.end());
  std::vector<uint8_t> q41(3 * 20, 0x21);
  for (int r = 0; r < 3; ++r) put_half(q41, 20 * r, 1.0f), put_half(q41, 20 * r + 2, static_cast<float>(r));
  std::string img = gguf_image({{"w", {256, 2}, 12, k}, {"v", {32, 3}, 3, q41}});
  GgufReader r(reinterpret_cast<const uint8_t*>(img.data()), img.size(), "q.gguf");
  const GgufTensorInfo& w = r.tensor("w");
  EXPECT_EQ(w.type, 12u);
  EXPECT_EQ(w.nbytes, 288u);
  EXPECT_EQ(0, std::memcmp(r.data_of(w), k.data(), k.size()));  // raw bytes as stored
  at::Tensor t = dequantize(r, w);
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{2, 256}));
  for (int row = 0; row < 2; ++row)
    for (int i = 0; i < 256; ++i) {
      const float d = row ? -2.0f : 1.0f, dmin = row ? 0.125f : 0.5f;
      ASSERT_EQ(t[row][i].item<float>(), d * sc[i / 32] * q[i] - dmin * m[i / 32]) << row << "," << i;
    }
  std::vector<float> flat = r.dequantize(w);  // the reader's own vector API agrees
  EXPECT_EQ(0, std::memcmp(flat.data(), t.data_ptr<float>(), 4 * flat.size()));
  at::Tensor v = dequantize(r, r.tensor("v"));
  EXPECT_EQ(v.sizes(), (at::IntArrayRef{3, 32}));
  // 0x21: low nibble 1 (values 0-15), high nibble 2 (values 16-31); x = 1 * q + row.
  for (int row = 0; row < 3; ++row) {
    EXPECT_EQ(v[row][0].item<float>(), 1.0f + row);
    EXPECT_EQ(v[row][31].item<float>(), 2.0f + row);
  }

  auto parse = [](const std::string& s) { GgufReader(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "bad.gguf"); };
  expect_error([&] { parse(gguf_image({{"blk.0.ffn_up.weight", {256, 1}, 15, std::vector<uint8_t>(292)}})); },
               {"bad.gguf", "blk.0.ffn_up.weight", "ggml type 15 (Q8_K)", "supported"});
  expect_error([&] { parse(gguf_image({{"x", {128, 2}, 14, std::vector<uint8_t>(210)}})); },
               {"bad.gguf", "'x'", "ne[0] = 128", "Q6_K block size 256"});
  // Data past the end: a Q6_K tensor of two super-blocks with bytes for one.
  std::string shorty = gguf_image({{"y", {256, 2}, 14, std::vector<uint8_t>(210)}});
  expect_error([&] { parse(shorty); }, {"'y'", "past the end"});
}

}  // namespace
}  // namespace condense
