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

namespace {

// y[r .. r + R) for R consecutive rows: each load of x feeds R FMAs, and R concurrent streams
// of weights keep enough cache misses in flight (one stream per row; measured on this
// machine's AVX-512 core: 4 rows 9.8 GB/s, 8 rows 11.5, 16 rows 12.9 on a 49152 x 576 matrix).
template <int R>
CONDENSE_INLINE void rows_block(const float* w, const float* x, float* y, int64_t r, int64_t cols) {
  const int64_t body = cols / kLanes * kLanes;
  const float* w0 = w + r * cols;
  v16 acc[R] = {};
  for (int64_t i = 0; i < body; i += kLanes) {
    const v16 xv = load(x + i);
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) acc[j] += load(w0 + j * cols + i) * xv;
  }
  for (int j = 0; j < R; ++j) {
    float s = hsum(acc[j]);
    for (int64_t i = body; i < cols; ++i) s += w0[j * cols + i] * x[i];
    y[r + j] = s;
  }
}

template <int R>
CONDENSE_INLINE void rows_all(const float* w, const float* x, float* y, int64_t r0, int64_t r1,
                              int64_t cols) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_block<R>(w, x, y, r, cols);
  for (; r + 4 <= r1; r += 4) rows_block<4>(w, x, y, r, cols);
  for (; r < r1; ++r) y[r] = dot(w + r * cols, x, cols);
}

// 16 rows need 16 accumulators: one register each with AVX-512's 32, two each (spilling) with
// AVX's 16, where 8 rows measured faster.
CONDENSE_CLONES
void rows16(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  rows_all<16>(w, x, y, r0, r1, cols);
}

CONDENSE_CLONES
void rows8(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  rows_all<8>(w, x, y, r0, r1, cols);
}

// A static initializer may run before libgcc's CPU detection: initialize it first.
const bool kHasAvx512 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") != 0;
}();

}  // namespace

void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols) {
  if (kHasAvx512) rows16(w, x, y, r0, r1, cols);
  else rows8(w, x, y, r0, r1, cols);
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
