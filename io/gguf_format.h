// GGUF v3 constants and the element codecs shared by the writer and the reader, without
// LibTorch. Spec: ggml's docs/gguf.md (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
// little-endian; "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata as
// (string key, u32 value type, value) with strings stored as u64 length + bytes; tensor infos
// (string name, u32 n_dims, u64 ne[n_dims] with ne[0] the fastest-varying dimension, u32 ggml
// type, u64 offset into the data section); the data section starts at the next multiple of
// general.alignment (default 32) and every tensor's offset is a multiple of it.
//
// Q8_0 (ggml-quants.c, quantize_row_q8_0_ref): blocks of 32 values, each an fp16 scale
// d = max|x| / 127 followed by 32 int8 q = round(x / d); x is restored as d * q.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace condense {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;

enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// The ggml tensor types condense reads (ggml.h, enum ggml_type; the numbers are the file
// format). The writer emits F32, F16, BF16 and Q8_0; the reader also accepts the quantized
// types io/gguf_quants.h dequantizes (every type a llama.cpp file holds; not Q8_K). Block layouts are described there.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ2_K = 10,
  kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18,
  kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22, kIQ4_XS = 23, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};
// llama.cpp's general.file_type values (llama.h, enum llama_ftype).
enum class GgufFileType : uint32_t { kAllF32 = 0, kMostlyF16 = 1, kMostlyQ8_0 = 7, kMostlyBF16 = 32 };

constexpr int64_t kQ8_0Block = 32;
constexpr int64_t kQ8_0BlockBytes = 2 + 32;

// One row of the block-size table: a block of `block` consecutive values along ne[0] is
// stored in `block_bytes` bytes (ggml's blck_size / type_size in ggml.c's type_traits, and
// gguf-py's GGML_QUANT_SIZES). Plain float types are blocks of one value.
struct GgmlTypeInfo {
  GgmlType type;
  const char* name;
  int64_t block;
  int64_t block_bytes;
};

inline constexpr GgmlTypeInfo kGgmlTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},         {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kBF16, "BF16", 1, 2},       {GgmlType::kQ8_0, "Q8_0", 32, 2 + 32},
    {GgmlType::kQ4_0, "Q4_0", 32, 2 + 16}, {GgmlType::kQ4_1, "Q4_1", 32, 2 + 2 + 16},
    {GgmlType::kQ4_K, "Q4_K", 256, 2 + 2 + 12 + 128},
    {GgmlType::kQ5_K, "Q5_K", 256, 2 + 2 + 12 + 32 + 128},
    {GgmlType::kQ6_K, "Q6_K", 256, 128 + 64 + 16 + 2},
    {GgmlType::kQ5_0, "Q5_0", 32, 2 + 4 + 16}, {GgmlType::kQ5_1, "Q5_1", 32, 2 + 2 + 4 + 16},
    {GgmlType::kQ2_K, "Q2_K", 256, 16 + 64 + 2 + 2},
    {GgmlType::kQ3_K, "Q3_K", 256, 32 + 64 + 12 + 2},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 2 + 16},
    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 2 + 2 + 4 + 128},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 2 + 64},
    {GgmlType::kIQ2_XS, "IQ2_XS", 256, 2 + 64 + 8},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 2 + 32 + 32 + 8 + 8},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 2 + 64 + 32},
    {GgmlType::kIQ3_S, "IQ3_S", 256, 2 + 64 + 8 + 32 + 4},
    {GgmlType::kIQ1_S, "IQ1_S", 256, 2 + 32 + 16},
    {GgmlType::kIQ1_M, "IQ1_M", 256, 32 + 16 + 8},
    {GgmlType::kTQ1_0, "TQ1_0", 256, 48 + 4 + 2},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 64 + 2},
    {GgmlType::kMXFP4, "MXFP4", 32, 1 + 16},
};

// The entry for a ggml type id, or nullptr for one condense cannot read.
inline const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  for (const auto& t : kGgmlTypes)
    if (static_cast<uint32_t>(t.type) == type) return &t;
  return nullptr;
}

// ggml's name of any type id (ggml.c type_traits[].type_name), so that an error about a type
// condense does not read still says which one it is; "type N" for ids ggml never assigned.
inline const char* ggml_type_name(uint32_t type) {
  static const char* const kNames[] = {
      "F32", "F16", "Q4_0", "Q4_1", nullptr, nullptr, "Q5_0", "Q5_1", "Q8_0", "Q8_1",
      "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
      "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
      "BF16", nullptr, nullptr, nullptr, "TQ1_0", "TQ2_0", nullptr, nullptr, nullptr, "MXFP4"};
  return type < sizeof(kNames) / sizeof(kNames[0]) && kNames[type] ? kNames[type] : nullptr;
}

// "F32, F16, BF16, Q8_0, ..." for error messages.
inline const char* ggml_supported_types() {
  return "F32=0, F16=1, BF16=30, Q8_0=8, Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q2_K=10, Q3_K=11, "
         "Q4_K=12, Q5_K=13, Q6_K=14, IQ2_XXS=16, IQ2_XS=17, IQ3_XXS=18, IQ1_S=19, IQ4_NL=20, "
         "IQ3_S=21, IQ2_S=22, IQ4_XS=23, IQ1_M=29, TQ1_0=34, TQ2_0=35, MXFP4=39";
}

// Bytes for `n` elements of `type` (n a multiple of the block size); 0 if unknown.
inline uint64_t ggml_nbytes(uint32_t type, uint64_t n) {
  const GgmlTypeInfo* t = ggml_type_info(type);
  return t ? n / static_cast<uint64_t>(t->block) * static_cast<uint64_t>(t->block_bytes) : 0;
}
inline int64_t ggml_block_size(uint32_t type) {
  const GgmlTypeInfo* t = ggml_type_info(type);
  return t ? t->block : 1;
}
inline bool ggml_type_known(uint32_t type) { return ggml_type_info(type) != nullptr; }

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float v = std::ldexp(static_cast<float>(mant), -24);
      return sign ? -v : v;
    }
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as the F16C instruction llama.cpp uses does.
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {  // result is subnormal or zero: round ax * 2^24 to an integer
    float v;
    std::memcpy(&v, &ax, 4);
    float scaled = v * 16777216.0f;  // exact (power of two)
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  uint32_t mant_round = ax + 0xfffu + ((ax >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((mant_round - 0x38000000u) >> 13));
}

inline float bf16_to_f32(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Quantizes n (a multiple of 32) floats into n/32 Q8_0 blocks at `out`.
inline void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const float* v = x + b * kQ8_0Block;
    float amax = 0;
    for (int j = 0; j < kQ8_0Block; ++j) amax = std::fmax(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t dh = f32_to_f16(d);
    uint8_t* blk = out + b * kQ8_0BlockBytes;
    std::memcpy(blk, &dh, 2);
    for (int j = 0; j < kQ8_0Block; ++j) {
      int8_t q = static_cast<int8_t>(std::roundf(v[j] * id));
      std::memcpy(blk + 2 + j, &q, 1);
    }
  }
}

inline void dequantize_q8_0(const uint8_t* in, int64_t n, float* x) {
  for (int64_t b = 0; b < n / kQ8_0Block; ++b) {
    const uint8_t* blk = in + b * kQ8_0BlockBytes;
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    float d = f16_to_f32(dh);
    for (int j = 0; j < kQ8_0Block; ++j) {
      int8_t q;
      std::memcpy(&q, blk + 2 + j, 1);
      x[b * kQ8_0Block + j] = d * q;
    }
  }
}

}  // namespace condense
