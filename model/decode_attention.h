// One decoding step's attention over a KV cache, float32 on CPU, for the fast decoder
// (model/fast_decoder.h): fp caches (rows of keys and values) and int8 caches (model/kv_cache.h's
// KIVI layout, read as bytes: never dequantized into a copy).
//
// Split-K ("flash-decoding", Dao et al. 2023): the caller cuts the positions into parts that
// threads take independently; a part yields, per query, its scores' maximum m, the sum of
// exp(score - m) and the values weighted by exp(score - m) (a Partial), and combine() merges the
// parts of a query into softmax-weighted values. Cutting by position keeps threads busy however
// few KV heads a model has (Gemma 3 1B: one), and a fixed part length makes the result independent
// of the thread count. All query heads that share a KV head (GQA) go through one call, so each
// key and value row comes from memory once per part, not once per query head.
//
// Sums run in another order than ATen's: results agree with the ATen attention to float rounding.
// Compiled with -O3 -ffp-contract=fast per CPU feature (model/simd.h), the byte loops with
// intrinsics per ISA level (decode_attention.cpp says why).
#pragma once
#include <cstdint>

namespace condense::decode {

// One part's result for nq queries: out [nq, d] (values weighted by exp(score - max), not
// normalized), max [nq], sum [nq] (of exp(score - max)).
struct Partial {
  float* out;
  float* max;
  float* sum;
};

// nq queries q [nq, d] over `length` rows of k and v [length, d]; each score is scale * (k . q),
// soft-capped at `cap` first where cap > 0 (Gemma 2: cap * tanh(score / cap)). scores: scratch
// of nq * length floats.
void attend_part(const float* q, int64_t nq, const float* k, const float* v, int64_t length, int64_t d,
                 float scale, float cap, float* scores, Partial part);

// One KV head of an int8 cache: keys of complete groups as codes with a scale and minimum per
// group and channel, the current group's keys in full precision, values as codes with a scale
// and minimum per position. Pointers are the head's slices of the cache's buffers.
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

// The same over positions [begin, end) of `head`, where `last` is the newest position held:
// positions below done = last / group * group are in complete groups, the others in the tail.
// A code's key is code * key_scale + key_min per channel, so a group's scores are
// (q * key_scale) . codes + q . key_min; values likewise (a sum of weight * value_scale * codes,
// plus the sum of weight * value_min in every channel). scores: nq * (end - begin) floats; qs: d.
void attend_int8_part(const float* q, int64_t nq, const Int8Head& head, int64_t begin, int64_t end,
                      int64_t last, int64_t d, float scale, float cap, float* scores, float* qs,
                      Partial part);

// One query's attention from its `parts` partials: part p's values at out + p * stride * d, its
// maximum and sum at max[p * stride] and sum[p * stride] (stride: queries between parts).
void combine(const float* out, const float* max, const float* sum, int64_t parts, int64_t stride,
             int64_t d, float* result);

// One query over a whole fp head (`length` rows), or over positions first .. last of an int8 head:
// the softmax-weighted values in out [d] (one part, combined). scores: `length` (last - first + 1)
// floats; qs: d floats.
void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale, float cap = 0);
void attend_int8(const float* q, const Int8Head& head, int64_t first, int64_t last, float* out,
                 float* scores, float* qs, int64_t d, float scale, float cap = 0);

// Tests: the ISA level of the int8 byte loops: 4 (AVX-512), 3 (AVX2), 0 (scalar), -1 (the widest
// this CPU has, the default). False, and nothing changed, for a level this CPU lacks.
bool set_int8_level(int level);

// Asymmetric 8-bit quantization of one row x [n], as KVCache's values are quantized (bit for
// bit the same float arithmetic as its ATen expression): scale = max((max - min) / 255,
// 1e-12), codes = clamp(round_half_even((x - min) / scale), 0, 255).
void quantize_row(const float* x, int64_t n, uint8_t* codes, float* scale, float* min);

}  // namespace condense::decode
