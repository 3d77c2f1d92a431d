#include "model/decode_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

// Compiled with -O3 -ffp-contract=fast (model/CMakeLists.txt) so that a * b + c becomes one FMA,
// and without the precompiled LibTorch header: this file includes no LibTorch.

// Clones by CPU feature, not by "arch=": GCC's resolver tests an arch= clone with
// __builtin_cpu_is (that exact microarchitecture), so on any other CPU it falls through to the
// baseline. "fma" implies AVX: 256-bit float vectors with fused multiply-adds.
#define CONDENSE_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#define CONDENSE_INLINE inline __attribute__((always_inline))

namespace condense::decode {
namespace {

// 16 floats: one AVX-512 register, two AVX2 registers, four SSE registers in each clone.
typedef float v16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

CONDENSE_INLINE v16 load(const float* p) {
  v16 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

CONDENSE_INLINE void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

CONDENSE_INLINE float hsum(v16 v) {
  float s = 0;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

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

}  // namespace

CONDENSE_CLONES
void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  const int64_t body = cols / kLanes * kLanes;
  int64_t r = r0;
  // Four rows at a time: each load of x feeds four FMAs, and four independent accumulators
  // cover the FMA latency.
  for (; r + 4 <= r1; r += 4) {
    const float* w0 = w + r * cols;
    const float* w1 = w0 + cols;
    const float* w2 = w1 + cols;
    const float* w3 = w2 + cols;
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < body; i += kLanes) {
      const v16 xv = load(x + i);
      a0 += load(w0 + i) * xv;
      a1 += load(w1 + i) * xv;
      a2 += load(w2 + i) * xv;
      a3 += load(w3 + i) * xv;
    }
    float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
    for (int64_t i = body; i < cols; ++i) {
      s0 += w0[i] * x[i];
      s1 += w1[i] * x[i];
      s2 += w2[i] * x[i];
      s3 += w3[i] * x[i];
    }
    y[r] = s0;
    y[r + 1] = s1;
    y[r + 2] = s2;
    y[r + 3] = s3;
  }
  for (; r < r1; ++r) y[r] = dot(w + r * cols, x, cols);
}

CONDENSE_CLONES
void rms_norm(const float* x, const float* weight, float* out, int64_t n, double eps) {
  const float mean = dot(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv);
}

CONDENSE_CLONES
void rope(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* a = x + h * head_dim;
    float* b = a + half;
    for (int64_t i = 0; i < half; ++i) {
      const float lo = a[i], hi = b[i];
      a[i] = lo * cos[i] - hi * sin[i];
      b[i] = hi * cos[half + i] + lo * sin[half + i];
    }
  }
}

CONDENSE_CLONES
void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale) {
  float top = -INFINITY;
  for (int64_t j = 0; j < length; ++j) {
    scores[j] = dot(q, k + j * d, d) * scale;
    top = std::max(top, scores[j]);
  }
  float total = 0;
  for (int64_t j = 0; j < length; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  const float inv = 1.0f / total;
  std::fill(out, out + d, 0.0f);
  const int64_t body = d / kLanes * kLanes;
  for (int64_t j = 0; j < length; ++j) {
    const float p = scores[j] * inv;
    const float* vj = v + j * d;
    for (int64_t i = 0; i < body; i += kLanes) store(out + i, load(out + i) + p * load(vj + i));
    for (int64_t i = body; i < d; ++i) out[i] += p * vj[i];
  }
}

CONDENSE_CLONES
void silu_mul(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

CONDENSE_CLONES
void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace condense::decode
