// Float32 CPU kernels for decoding one position at a time (model/fast_decoder.h): matrix-vector
// rows and one query's attention over a KV cache (RMSNorm, RoPE and SwiGLU are the training
// kernels of model/fused_kernels.h, applied to one row). At one position the work is small and
// memory bound, so what matters is streaming each weight once at the memory rate and not paying
// per-operator dispatch (ATen: a few microseconds per op, hundreds of ops per token). Compiled
// per CPU feature (model/simd.h). The kernels are serial; model/fast_decoder.cpp splits rows and
// heads across threads.
//
// Sums are blocked FMA sums, in another order than ATen's, so results agree with the ATen
// forward to float rounding (about 1e-6 relative), not bit for bit.
#pragma once
#include <cstdint>

namespace condense::decode {

// y[r] = dot(W[r, :], x) for rows r0 <= r < r1 of row-major W [*, cols].
void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols);
// The same with the blocking named (tests): lanes 16 = blocks of 16 rows of 16 floats (the
// AVX-512 choice), 8 = blocks of 8 rows of 8 floats (elsewhere). Both run on any x86-64 CPU.
void matvec_rows_blocked(int lanes, const float* w, const float* x, float* y, int64_t r0,
                         int64_t r1, int64_t cols);

// One query vector q [d] over `length` keys and values, rows of k and v [length, d]:
// out = softmax(scale * k q) v, each score soft-capped at `cap` first where cap > 0 (Gemma 2:
// cap * tanh(score / cap)). scores: scratch of `length` floats.
void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale, float cap = 0);

// One query over one KV head of an int8 cache (model/kv_cache.h's KIVI layout): keys of
// complete groups as codes with a scale and minimum per group and channel, the current group's
// keys in full precision, values as codes with a scale and minimum per position. Pointers are
// the head's slices of the cache's buffers.
struct Int8Head {
  const uint8_t* key_codes;   // [key_groups * group, d]
  const float* key_scale;     // [key_groups, d]
  const float* key_min;       // [key_groups, d]
  const float* key_tail;      // [group, d]: positions done .. done + group - 1 (done: below)
  const uint8_t* value_codes; // [value_slots, d]
  const float* value_scale;   // [value_slots]
  const float* value_min;     // [value_slots]
  int64_t group;
  int64_t key_groups;   // group slots: complete group G sits in slot G % key_groups
  int64_t value_slots;  // position p's value sits in slot p % value_slots
};
// out = softmax(scale * k q) v over positions first .. last (inclusive) read from `head`, the
// scores capped as in attend(). Positions below done = last / group * group are in complete
// groups, the others in the tail. A code's key is code * key_scale + key_min per channel, so a
// group's scores are (q * key_scale) . codes + q . key_min: the codes are read as bytes, never
// dequantized into a copy; values likewise (sum of p * value_scale * codes, plus sum of p *
// value_min in every channel). scores: scratch of last - first + 1 floats; qs: of d floats.
void attend_int8(const float* q, const Int8Head& head, int64_t first, int64_t last, float* out,
                 float* scores, float* qs, int64_t d, float scale, float cap = 0);
// Tests: the ISA level of attend_int8's byte loops: 4 (AVX-512), 3 (AVX2), 0 (scalar), -1 (the
// widest this CPU has, the default). False, and nothing changed, for a level this CPU lacks.
bool set_int8_level(int level);

// Asymmetric 8-bit quantization of one row x [n], as KVCache's values are quantized (bit for
// bit the same float arithmetic as its ATen expression): scale = max((max - min) / 255,
// 1e-12), codes = clamp(round_half_even((x - min) / scale), 0, 255).
void quantize_row(const float* x, int64_t n, uint8_t* codes, float* scale, float* min);

// x += y, n elements.
void add(float* x, const float* y, int64_t n);

}  // namespace condense::decode
