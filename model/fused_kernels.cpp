#include "model/fused_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/simd.h"

// Compiled with -O3 -ffp-contract=fast and without the LibTorch PCH (model/CMakeLists.txt).
namespace condense::fused {
using namespace condense::simd;

CONDENSE_CLONES
void rms_norm_forward(const float* x, const float* w, float* y, float* rstd, int64_t r0,
                      int64_t r1, int64_t n, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    // The mean square in double: rows are short (the hidden size), and float sums in another
    // order than ATen's moved logits by ~1e-5 against transformers.
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float mean = static_cast<float>(ss / static_cast<double>(n));
    const float inv = 1.0f / std::sqrt(mean + eps);
    rstd[r] = inv;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

CONDENSE_CLONES
void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* dy,
                       float* dx, float* dw_acc, int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    const float* dyr = dy + r * n;
    float* dxr = dx + r * n;
    const float inv = rstd[r];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < n; ++i) dot += dyr[i] * w[i] * xr[i];
    const float k = inv * inv * inv * dot / static_cast<float>(n);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      dxr[i] = inv * (dyr[i] * w[i]) - xr[i] * k;
      dw_acc[i] += dyr[i] * (xr[i] * inv);
    }
  }
}

CONDENSE_CLONES
void swiglu_forward(const float* g, const float* u, float* h, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes) {
    const v16 gv = load(g + i);
    store(h + i, gv / (1.0f + exp16(-gv)) * load(u + i));
  }
  for (; i < i1; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

CONDENSE_CLONES
void swiglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                     int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes) {
    const v16 gv = load(g + i), dv = load(dh + i);
    const v16 s = 1.0f / (1.0f + exp16(-gv));
    store(du + i, dv * (gv * s));
    store(dg + i, dv * load(u + i) * (s * (1.0f + gv * (1.0f - s))));
  }
  for (; i < i1; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-g[i]));
    du[i] = dh[i] * (g[i] * s);
    dg[i] = dh[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
  }
}

CONDENSE_CLONES
void rope_row_forward(const float* x, float* y, const float* c, const float* s, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[half + i];
    y[i] = x1 * c[i] - x2 * s[i];
    y[half + i] = x2 * c[half + i] + x1 * s[half + i];
  }
}

CONDENSE_CLONES
void rope_row_backward(const float* dy, float* dx, const float* c, const float* s, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float d1 = dy[i], d2 = dy[half + i];
    dx[i] = d1 * c[i] + d2 * s[half + i];
    dx[half + i] = d2 * c[half + i] - d1 * s[i];
  }
}

CONDENSE_CLONES
void cross_entropy_forward(const float* logits, const int64_t* targets, float* lse, float* loss,
                           int64_t r0, int64_t r1, int64_t vocab) {
  const int64_t body = vocab / kLanes * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const float* l = logits + r * vocab;
    // The row maximum, 16 lanes at a time (a scalar max is a dependency chain per element).
    v16 most = v16{} - INFINITY;
    for (int64_t j = 0; j < body; j += kLanes) {
      const v16 v = load(l + j);
      most = v > most ? v : most;
    }
    float top = -INFINITY;
    for (int k = 0; k < kLanes; ++k) top = std::max(top, most[k]);
    for (int64_t j = body; j < vocab; ++j) top = std::max(top, l[j]);
    v16 acc = {};
    for (int64_t j = 0; j < body; j += kLanes) acc += exp16(load(l + j) - top);
    float sum = 0;
    for (int k = 0; k < kLanes; ++k) sum += acc[k];
    for (int64_t j = body; j < vocab; ++j) sum += std::exp(l[j] - top);
    lse[r] = top + std::log(sum);
    loss[r] = lse[r] - l[targets[r]];
  }
}

CONDENSE_CLONES
void cross_entropy_backward(const float* logits, const int64_t* targets, const float* lse,
                            float scale, float* dlogits, int64_t r0, int64_t r1, int64_t vocab) {
  const int64_t body = vocab / kLanes * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const float* l = logits + r * vocab;
    float* d = dlogits + r * vocab;
    const float m = lse[r];
    for (int64_t j = 0; j < body; j += kLanes) store(d + j, scale * exp16(load(l + j) - m));
    for (int64_t j = body; j < vocab; ++j) d[j] = scale * std::exp(l[j] - m);
    d[targets[r]] -= scale;
  }
}

}  // namespace condense::fused
