#include "model/decode_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "model/simd.h"

// Compiled with -O3 -ffp-contract=fast and without the LibTorch PCH (model/CMakeLists.txt).
namespace condense::decode {
using namespace condense::simd;
namespace {

CONDENSE_INLINE float dot(const float* a, const float* b, int64_t n) {
  v16 acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 += load(a + i) * load(b + i);
    acc1 += load(a + i + kLanes) * load(b + i + kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += load(a + i) * load(b + i);
  float s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Scores (scaled, capped) -> softmax weights in place; returns nothing, the weights sum to 1.
CONDENSE_INLINE void softmax_scores(float* scores, int64_t length, float scale, float cap) {
  float top = -INFINITY;
  for (int64_t j = 0; j < length; ++j) {
    scores[j] *= scale;
    if (cap > 0) scores[j] = std::tanh(scores[j] / cap) * cap;
    top = std::max(top, scores[j]);
  }
  float total = 0;
  for (int64_t j = 0; j < length; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  const float inv = 1.0f / total;
  for (int64_t j = 0; j < length; ++j) scores[j] *= inv;
}

}  // namespace

namespace {

// y[r .. r + R) for R consecutive rows: each load of x feeds R FMAs, and R concurrent streams
// of weights keep enough cache misses in flight (one stream per row; measured on an AVX-512
// core: 4 rows 9.8 GB/s, 8 rows 11.5, 16 rows 12.9 on a 49152 x 576 matrix). V is the vector
// type: R accumulators of V must fit the register file (below).
template <class V, int R>
CONDENSE_INLINE void rows_block(const float* w, const float* x, float* y, int64_t r, int64_t cols) {
  constexpr int64_t L = lanes<V>;
  const int64_t body = cols / L * L;
  const float* w0 = w + r * cols;
  V acc[R] = {};
  for (int64_t i = 0; i < body; i += L) {
    const V xv = load<V>(x + i);
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) acc[j] += load<V>(w0 + j * cols + i) * xv;
  }
  for (int j = 0; j < R; ++j) {
    float s = hsum(acc[j]);
    for (int64_t i = body; i < cols; ++i) s += w0[j * cols + i] * x[i];
    y[r + j] = s;
  }
}

template <class V, int R>
CONDENSE_INLINE void rows_all(const float* w, const float* x, float* y, int64_t r0, int64_t r1,
                              int64_t cols) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_block<V, R>(w, x, y, r, cols);
  for (; r + 4 <= r1; r += 4) rows_block<V, 4>(w, x, y, r, cols);
  for (; r < r1; ++r) y[r] = dot(w + r * cols, x, cols);
}

// 16 rows of 16 floats: 16 accumulators, one register each with AVX-512's 32.
CONDENSE_CLONES
void rows16(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  rows_all<v16, 16>(w, x, y, r0, r1, cols);
}

// Without AVX-512 (16 registers of 8 floats): 8 rows of 8 floats, one register per accumulator.
// The former 8 rows of 16 floats took all 16 registers and spilled: generation ran at 0.56-0.77x
// llama.cpp on an AVX2 EPYC (1.03-1.24x on the AVX-512 Xeon).
CONDENSE_CLONES
void rows8(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  rows_all<v8, 8>(w, x, y, r0, r1, cols);
}

}  // namespace

void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  matvec_rows_blocked(wide_vectors() ? 16 : 8, w, x, y, r0, r1, cols);
}

void matvec_rows_blocked(int lanes, const float* w, const float* x, float* y, int64_t r0,
                         int64_t r1, int64_t cols) {
  if (lanes == 16) rows16(w, x, y, r0, r1, cols);
  else rows8(w, x, y, r0, r1, cols);
}

// Byte codes times floats, the inner loops of attend_int8: with intrinsics in functions compiled
// per ISA level and chosen at run time, because GCC 12 lowers the generic vectors' byte-to-float
// conversion (__builtin_convertvector) to scalar code: attention over codes ran 4-5x slower than
// over floats. vpmovzxbd widens 16 (AVX-512) or 8 (AVX2) bytes to int32 lanes, vcvtdq2ps makes
// them floats.
namespace u8 {

// 16 (AVX-512) or 8 (AVX2) bytes as floats.
__attribute__((target("arch=x86-64-v4"))) CONDENSE_INLINE __m512 widen16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((target("arch=x86-64-v3"))) CONDENSE_INLINE __m256 widen8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// scores[r] = dot(qs, codes[r, :]) + bias for `rows` rows of d codes; four rows at a time, so four
// independent FMA chains hide the FMA latency.
__attribute__((target("arch=x86-64-v4")))
void scores_v4(const float* qs, const uint8_t* codes, int64_t rows, int64_t d, float bias, float* scores) {
  const int64_t body = d / 16 * 16;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const uint8_t* c = codes + r * d;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < body; i += 16) {
      const __m512 q = _mm512_loadu_ps(qs + i);
      a0 = _mm512_fmadd_ps(q, widen16(c + i), a0);
      a1 = _mm512_fmadd_ps(q, widen16(c + d + i), a1);
      a2 = _mm512_fmadd_ps(q, widen16(c + 2 * d + i), a2);
      a3 = _mm512_fmadd_ps(q, widen16(c + 3 * d + i), a3);
    }
    float s[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),
                  _mm512_reduce_add_ps(a3)};
    for (int j = 0; j < 4; ++j) {
      for (int64_t i = body; i < d; ++i) s[j] += qs[i] * static_cast<float>(c[j * d + i]);
      scores[r + j] = s[j] + bias;
    }
  }
  for (; r < rows; ++r) {
    const uint8_t* c = codes + r * d;
    __m512 a = _mm512_setzero_ps();
    for (int64_t i = 0; i < body; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qs + i), widen16(c + i), a);
    float s = _mm512_reduce_add_ps(a);
    for (int64_t i = body; i < d; ++i) s += qs[i] * static_cast<float>(c[i]);
    scores[r] = s + bias;
  }
}

__attribute__((target("arch=x86-64-v3"))) CONDENSE_INLINE float hsum8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

__attribute__((target("arch=x86-64-v3")))
void scores_v3(const float* qs, const uint8_t* codes, int64_t rows, int64_t d, float bias, float* scores) {
  const int64_t body = d / 8 * 8;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const uint8_t* c = codes + r * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < body; i += 8) {
      const __m256 q = _mm256_loadu_ps(qs + i);
      a0 = _mm256_fmadd_ps(q, widen8(c + i), a0);
      a1 = _mm256_fmadd_ps(q, widen8(c + d + i), a1);
      a2 = _mm256_fmadd_ps(q, widen8(c + 2 * d + i), a2);
      a3 = _mm256_fmadd_ps(q, widen8(c + 3 * d + i), a3);
    }
    float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
    for (int j = 0; j < 4; ++j) {
      for (int64_t i = body; i < d; ++i) s[j] += qs[i] * static_cast<float>(c[j * d + i]);
      scores[r + j] = s[j] + bias;
    }
  }
  for (; r < rows; ++r) {
    const uint8_t* c = codes + r * d;
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < body; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qs + i), widen8(c + i), a);
    float s = hsum8(a);
    for (int64_t i = body; i < d; ++i) s += qs[i] * static_cast<float>(c[i]);
    scores[r] = s + bias;
  }
}

void scores_scalar(const float* qs, const uint8_t* codes, int64_t rows, int64_t d, float bias, float* scores) {
  for (int64_t r = 0; r < rows; ++r) {
    float s = 0;
    for (int64_t i = 0; i < d; ++i) s += qs[i] * static_cast<float>(codes[r * d + i]);
    scores[r] = s + bias;
  }
}

// out[i] += sum over r of weights[r] * codes[r, i], `rows` rows of d codes: 32 rows per pass over
// out's vectors, so the rows stay in L1 across the passes.
__attribute__((target("arch=x86-64-v4")))
void accumulate_v4(float* out, const float* weights, const uint8_t* codes, int64_t rows, int64_t d) {
  const int64_t body = d / 16 * 16;
  for (int64_t r0 = 0; r0 < rows; r0 += 32) {
    const int64_t r1 = std::min(rows, r0 + 32);
    for (int64_t i = 0; i < body; i += 16) {
      __m512 acc = _mm512_loadu_ps(out + i);
      for (int64_t r = r0; r < r1; ++r) {
        acc = _mm512_fmadd_ps(_mm512_set1_ps(weights[r]), widen16(codes + r * d + i), acc);
      }
      _mm512_storeu_ps(out + i, acc);
    }
    for (int64_t i = body; i < d; ++i)
      for (int64_t r = r0; r < r1; ++r) out[i] += weights[r] * static_cast<float>(codes[r * d + i]);
  }
}

__attribute__((target("arch=x86-64-v3")))
void accumulate_v3(float* out, const float* weights, const uint8_t* codes, int64_t rows, int64_t d) {
  const int64_t body = d / 8 * 8;
  for (int64_t r0 = 0; r0 < rows; r0 += 32) {
    const int64_t r1 = std::min(rows, r0 + 32);
    for (int64_t i = 0; i < body; i += 8) {
      __m256 acc = _mm256_loadu_ps(out + i);
      for (int64_t r = r0; r < r1; ++r) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(weights[r]), widen8(codes + r * d + i), acc);
      }
      _mm256_storeu_ps(out + i, acc);
    }
    for (int64_t i = body; i < d; ++i)
      for (int64_t r = r0; r < r1; ++r) out[i] += weights[r] * static_cast<float>(codes[r * d + i]);
  }
}

void accumulate_scalar(float* out, const float* weights, const uint8_t* codes, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < d; ++i) out[i] += weights[r] * static_cast<float>(codes[r * d + i]);
}

// The widest level this CPU has: 4 (AVX-512), 3 (AVX2 + FMA) or 0 (the scalar loops).
int cpu_level() {
  static const int l = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
    return 0;
  }();
  return l;
}

int chosen_level = -1;  // set_int8_level(); -1: cpu_level()

int level() { return chosen_level >= 0 ? chosen_level : cpu_level(); }

void scores(const float* qs, const uint8_t* codes, int64_t rows, int64_t d, float bias, float* out) {
  switch (level()) {
    case 4: return scores_v4(qs, codes, rows, d, bias, out);
    case 3: return scores_v3(qs, codes, rows, d, bias, out);
    default: return scores_scalar(qs, codes, rows, d, bias, out);
  }
}

void accumulate(float* out, const float* weights, const uint8_t* codes, int64_t rows, int64_t d) {
  switch (level()) {
    case 4: return accumulate_v4(out, weights, codes, rows, d);
    case 3: return accumulate_v3(out, weights, codes, rows, d);
    default: return accumulate_scalar(out, weights, codes, rows, d);
  }
}

}  // namespace u8

bool set_int8_level(int level) {
  if (level > u8::cpu_level() || (level != -1 && level != 0 && level != 3 && level != 4)) return false;
  u8::chosen_level = level;
  return true;
}

CONDENSE_CLONES
void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale, float cap) {
  for (int64_t j = 0; j < length; ++j) scores[j] = dot(q, k + j * d, d);
  softmax_scores(scores, length, scale, cap);
  std::fill(out, out + d, 0.0f);
  const int64_t body = d / kLanes * kLanes;
  for (int64_t j = 0; j < length; ++j) {
    const float p = scores[j];
    const float* vj = v + j * d;
    for (int64_t i = 0; i < body; i += kLanes) store(out + i, load(out + i) + p * load(vj + i));
    for (int64_t i = body; i < d; ++i) out[i] += p * vj[i];
  }
}

CONDENSE_CLONES
void attend_int8(const float* q, const Int8Head& head, int64_t first, int64_t last, float* out,
                 float* scores, float* qs, int64_t d, float scale, float cap) {
  const int64_t g = head.group, done = last / g * g, length = last - first + 1;
  int64_t p = first;
  while (p < done) {  // complete groups: q scaled by the group's channel scales, once per group
    const int64_t group = p / g, end = std::min(done, (group + 1) * g), slot = group % head.key_groups;
    const float* ks = head.key_scale + slot * d;
    for (int64_t i = 0; i < d; ++i) qs[i] = q[i] * ks[i];
    const float bias = dot(q, head.key_min + slot * d, d);
    u8::scores(qs, head.key_codes + (slot * g + p - group * g) * d, end - p, d, bias, scores + p - first);
    p = end;
  }
  for (; p <= last; ++p) scores[p - first] = dot(q, head.key_tail + (p - done) * d, d);
  softmax_scores(scores, length, scale, cap);

  // Values: out = sum of w * (value_scale * codes + value_min) = sum of (w * value_scale) * codes,
  // plus sum of w * value_min in every channel; slots run contiguously until a ring wraps.
  float shift = 0;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < length;) {
    const int64_t slot = (first + j) % head.value_slots;
    const int64_t run = std::min(length - j, head.value_slots - slot);
    float* w = scores + j;
    for (int64_t r = 0; r < run; ++r) {
      shift += w[r] * head.value_min[slot + r];
      w[r] *= head.value_scale[slot + r];
    }
    u8::accumulate(out, w, head.value_codes + slot * d, run, d);
    j += run;
  }
  for (int64_t i = 0; i < d; ++i) out[i] += shift;
}

void quantize_row(const float* x, int64_t n, uint8_t* codes, float* scale, float* min) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float s = std::max((hi - lo) / 255.0f, 1e-12f);
  for (int64_t i = 0; i < n; ++i)
    codes[i] = static_cast<uint8_t>(std::min(std::max(std::nearbyint((x[i] - lo) / s), 0.0f), 255.0f));
  *scale = s;
  *min = lo;
}

CONDENSE_CLONES
void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace condense::decode
