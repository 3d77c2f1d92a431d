#include "model/decode_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "model/simd.h"

// Compiled with -O3 -ffp-contract=fast and without the LibTorch PCH (model/CMakeLists.txt).
namespace condense::decode {
using namespace condense::simd;
namespace {

// Rows per pass: the scores and the values of one part go through the rows in chunks that stay
// in L1 (32 rows of up to 256 floats: 32 KB) while every query of the KV head reads them.
constexpr int64_t kChunk = 32;

// Scores (scaled, capped) -> exp(score - max) in place; the maximum and the sum into *max, *sum.
// Vectorized (Cephes' exp, simd.h): one std::exp per score took over a third of an attention
// over head_dim 64 (measured). A template over the vector type because it compares (simd.h: v8 without AVX-512).
// vexp clamps: a score more than 87.3 below the maximum weighs ~1e-38 instead of 0 (nothing
// here is masked with -inf; a masking caller would have to zero such weights itself).
template <class V>
CONDENSE_INLINE void exp_scores_t(float* scores, int64_t length, float scale, float cap, float* max, float* sum) {
  constexpr int64_t L = lanes<V>;
  const int64_t body = length / L * L;
  if (cap > 0) {  // Gemma 2: cap * tanh(score / cap)
    for (int64_t j = 0; j < length; ++j) scores[j] = std::tanh(scores[j] * scale / cap) * cap;
  } else {
    for (int64_t j = 0; j < body; j += L) store(scores + j, load<V>(scores + j) * scale);
    for (int64_t j = body; j < length; ++j) scores[j] *= scale;
  }
  V top_v = V{} - INFINITY;
  for (int64_t j = 0; j < body; j += L) {
    const V x = load<V>(scores + j);
    top_v = x > top_v ? x : top_v;
  }
  float top = -INFINITY;
  for (int64_t i = 0; i < L; ++i) top = std::max(top, top_v[i]);
  for (int64_t j = body; j < length; ++j) top = std::max(top, scores[j]);
  V acc = {};
  for (int64_t j = 0; j < body; j += L) {
    const V e = vexp(load<V>(scores + j) - top);
    store(scores + j, e);
    acc += e;
  }
  float total = hsum(acc);
  for (int64_t j = body; j < length; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  *max = top;
  *sum = total;
}

CONDENSE_INLINE void exp_scores(float* scores, int64_t length, float scale, float cap, float* max, float* sum) {
  if (wide_vectors()) exp_scores_t<v16>(scores, length, scale, cap, max, sum);
  else exp_scores_t<v8>(scores, length, scale, cap, max, sum);
}

// Byte codes times floats, the inner loops of attend_int8_part: intrinsics in functions compiled
// per ISA level and chosen at run time, because GCC 12 lowers the generic vectors' byte-to-float
// conversion (__builtin_convertvector from bytes, or through int32 lanes) to scalar code and stack
// round trips: attention over codes ran 4-5x slower than over floats. vpmovzxbd widens 16
// (AVX-512) or 8 (AVX2) bytes to int32 lanes, vcvtdq2ps makes them floats.
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

std::atomic<int> chosen_level{-1};  // set_int8_level(); -1: cpu_level()

int level() {
  const int chosen = chosen_level.load(std::memory_order_relaxed);
  return chosen >= 0 ? chosen : cpu_level();
}

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

}  // namespace

bool set_int8_level(int level) {
  if (level > u8::cpu_level() || (level != -1 && level != 0 && level != 3 && level != 4)) return false;
  u8::chosen_level.store(level, std::memory_order_relaxed);
  return true;
}

CONDENSE_CLONES
void attend_part(const float* q, int64_t nq, const float* k, const float* v, int64_t length, int64_t d,
                 float scale, float cap, float* scores, Partial part) {
  for (int64_t r0 = 0; r0 < length; r0 += kChunk) {
    const int64_t r1 = std::min(length, r0 + kChunk);
    for (int64_t h = 0; h < nq; ++h)
      for (int64_t r = r0; r < r1; ++r) scores[h * length + r] = dot(q + h * d, k + r * d, d);
  }
  for (int64_t h = 0; h < nq; ++h) exp_scores(scores + h * length, length, scale, cap, part.max + h, part.sum + h);
  std::fill(part.out, part.out + nq * d, 0.0f);
  const int64_t body = d / kLanes * kLanes;
  for (int64_t r0 = 0; r0 < length; r0 += kChunk) {
    const int64_t r1 = std::min(length, r0 + kChunk);
    for (int64_t h = 0; h < nq; ++h) {
      float* out = part.out + h * d;
      const float* w = scores + h * length;
      for (int64_t i = 0; i < body; i += kLanes) {  // a vector of out stays in a register over the chunk
        v16 acc = load(out + i);
        for (int64_t r = r0; r < r1; ++r) acc += w[r] * load(v + r * d + i);
        store(out + i, acc);
      }
      for (int64_t i = body; i < d; ++i)
        for (int64_t r = r0; r < r1; ++r) out[i] += w[r] * v[r * d + i];
    }
  }
}

CONDENSE_CLONES
void attend_int8_part(const float* q, int64_t nq, const Int8Head& head, int64_t begin, int64_t end,
                      int64_t last, int64_t d, float scale, float cap, float* scores, float* qs,
                      Partial part) {
  const int64_t g = head.group, done = last / g * g, length = end - begin;
  int64_t p = begin;
  while (p < std::min(end, done)) {  // complete groups: each query scaled by the group's scales once
    const int64_t group = p / g, stop = std::min({end, done, (group + 1) * g});
    const int64_t slot = group % head.key_groups;
    const uint8_t* codes = head.key_codes + (slot * g + p - group * g) * d;
    for (int64_t h = 0; h < nq; ++h) {
      const float* qh = q + h * d;
      const float* ks = head.key_scale + slot * d;
      for (int64_t i = 0; i < d; ++i) qs[i] = qh[i] * ks[i];
      const float bias = dot(qh, head.key_min + slot * d, d);
      u8::scores(qs, codes, stop - p, d, bias, scores + h * length + p - begin);
    }
    p = stop;
  }
  for (; p < end; ++p)  // the current group's keys in full precision
    for (int64_t h = 0; h < nq; ++h) scores[h * length + p - begin] = dot(q + h * d, head.key_tail + (p - done) * d, d);
  for (int64_t h = 0; h < nq; ++h) exp_scores(scores + h * length, length, scale, cap, part.max + h, part.sum + h);

  // Values: each query's weights times value_scale against the codes, plus the weights times
  // value_min in every channel; slots run contiguously until a ring wraps, in chunks of rows.
  std::fill(part.out, part.out + nq * d, 0.0f);
  for (int64_t j = 0; j < length;) {
    const int64_t slot = (begin + j) % head.value_slots;
    const int64_t run = std::min({length - j, head.value_slots - slot, kChunk});
    for (int64_t h = 0; h < nq; ++h) {
      float* w = scores + h * length + j;
      float shift = 0;
      for (int64_t r = 0; r < run; ++r) {
        shift += w[r] * head.value_min[slot + r];
        w[r] *= head.value_scale[slot + r];
      }
      float* out = part.out + h * d;
      u8::accumulate(out, w, head.value_codes + slot * d, run, d);
      for (int64_t i = 0; i < d; ++i) out[i] += shift;
    }
    j += run;
  }
}

CONDENSE_CLONES
void combine(const float* out, const float* max, const float* sum, int64_t parts, int64_t stride,
             int64_t d, float* result) {
  float top = -INFINITY;
  for (int64_t p = 0; p < parts; ++p) top = std::max(top, max[p * stride]);
  float total = 0;
  std::fill(result, result + d, 0.0f);
  for (int64_t p = 0; p < parts; ++p) {
    const float f = std::exp(max[p * stride] - top);
    total += f * sum[p * stride];
    const float* o = out + p * stride * d;
    for (int64_t i = 0; i < d; ++i) result[i] += f * o[i];
  }
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < d; ++i) result[i] *= inv;
}

void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale, float cap) {
  float max = 0, sum = 0;
  attend_part(q, 1, k, v, length, d, scale, cap, scores, {out, &max, &sum});
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

void attend_int8(const float* q, const Int8Head& head, int64_t first, int64_t last, float* out,
                 float* scores, float* qs, int64_t d, float scale, float cap) {
  float max = 0, sum = 0;
  attend_int8_part(q, 1, head, first, last + 1, last, d, scale, cap, scores, qs, {out, &max, &sum});
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

void quantize_row(const float* x, int64_t n, uint8_t* codes, float* scale, float* min) {
  // ATen's amin / amax propagate a NaN (std::min / std::max would skip it): then the scale and
  // minimum are NaN and every code 0, as the cache's expression gives on x86.
  float lo = x[0], hi = x[0];
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan = nan || std::isnan(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (nan) {
    std::fill(codes, codes + n, uint8_t{0});
    *scale = *min = NAN;
    return;
  }
  const float s = std::max((hi - lo) / 255.0f, 1e-12f);
  for (int64_t i = 0; i < n; ++i) {
    // clamp(round(.), 0, 255); a NaN (a row with infinities) becomes 0 without an undefined cast.
    const float c = std::nearbyint((x[i] - lo) / s);
    codes[i] = c >= 0.0f && c <= 255.0f ? static_cast<uint8_t>(c) : (c > 255.0f ? 255 : 0);
  }
  *scale = s;
  *min = lo;
}

}  // namespace condense::decode
