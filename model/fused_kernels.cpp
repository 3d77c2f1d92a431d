#include "model/fused_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "model/simd.h"

// Compiled with -O3 -ffp-contract=fast and without the LibTorch PCH (model/CMakeLists.txt).
// Each kernel is a template over its storage types (float or bf16), instantiated by the
// CONDENSE_CLONES overloads at the end of the file (one set of CPU-feature clones per overload);
// those with compares also over the vector type, v16 with AVX-512 and v8 without (simd.h).
namespace condense::fused {
namespace {
using namespace condense::simd;

// The uint32 and uint16 vectors of V's lane count, for bf16 conversion.
template <class V>
struct bf16_vectors;
template <>
struct bf16_vectors<v16> {
  typedef uint32_t u32 __attribute__((vector_size(64)));
  typedef uint16_t u16 __attribute__((vector_size(32)));
};
template <>
struct bf16_vectors<v8> {
  typedef uint32_t u32 __attribute__((vector_size(32)));
  typedef uint16_t u16 __attribute__((vector_size(16)));
};

// The low halves of 32-bit lanes (each below 2^16 here). 16 lanes run with AVX-512 only, where
// the conversion is one vpmovdw; for 8 lanes a shuffle of the 16-bit view, since GCC 12 lowers
// that conversion to scalar code without AVX-512.
CONDENSE_INLINE bf16_vectors<v16>::u16 narrow(bf16_vectors<v16>::u32 v) {
  return __builtin_convertvector(v, bf16_vectors<v16>::u16);
}

CONDENSE_INLINE bf16_vectors<v8>::u16 narrow(bf16_vectors<v8>::u32 v) {
  typedef uint16_t w16 __attribute__((vector_size(32)));
  const w16 h = reinterpret_cast<w16>(v);
  return __builtin_shufflevector(h, h, 0, 2, 4, 6, 8, 10, 12, 14);
}

CONDENSE_INLINE float widen(float x) { return x; }

CONDENSE_INLINE float widen(bf16 x) {
  const uint32_t b = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

CONDENSE_INLINE void put(float* p, float x) { *p = x; }

// Round to nearest even, NaN to the quiet NaN 0x7FC0 (c10::BFloat16's rounding).
CONDENSE_INLINE void put(bf16* p, float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  p->bits = x != x ? uint16_t{0x7FC0} : static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// V's lanes from float or bf16 storage, and back (bf16 rounded as put() rounds).
template <class V>
CONDENSE_INLINE V vload(const float* p) {
  return load<V>(p);
}

template <class V>
CONDENSE_INLINE V vload(const bf16* p) {
  using U32 = typename bf16_vectors<V>::u32;
  using U16 = typename bf16_vectors<V>::u16;
  U16 h;
  std::memcpy(&h, p, sizeof h);
  const U32 w = __builtin_convertvector(h, U32) << 16;
  V r;
  std::memcpy(&r, &w, sizeof r);
  return r;
}

template <class V>
CONDENSE_INLINE void vstore(float* p, V v) {
  store(p, v);
}

template <class V>
CONDENSE_INLINE void vstore(bf16* p, V v) {
  using U32 = typename bf16_vectors<V>::u32;
  using U16 = typename bf16_vectors<V>::u16;
  U32 b;
  std::memcpy(&b, &v, sizeof b);
  const U32 rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  // NaN to the quiet NaN, by one select (masking with and/andnot/or measured 1.25x slower in
  // the AVX2 SwiGLU, an integer-domain NaN test 1.13x).
  const U32 bits = v == v ? rounded : U32{} + 0x7FC0u;
  const U16 h = narrow(bits);
  std::memcpy(p, &h, sizeof h);
}

template <class Y>
CONDENSE_INLINE void rms_norm_forward_t(const float* x, const float* w, Y* y, float* rstd,
                                        int64_t r0, int64_t r1, int64_t n, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    Y* yr = y + r * n;
    // The mean square in double: rows are short (the hidden size), and float sums in another
    // order than ATen's moved logits by ~1e-5 against transformers.
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float mean = static_cast<float>(ss / static_cast<double>(n));
    const float inv = 1.0f / std::sqrt(mean + eps);
    rstd[r] = inv;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) put(yr + i, w[i] * (xr[i] * inv));
  }
}

template <class DY>
CONDENSE_INLINE void rms_norm_backward_t(const float* x, const float* w, const float* rstd,
                                         const DY* dy, float* dx, float* dw_acc, int64_t r0,
                                         int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    const DY* dyr = dy + r * n;
    float* dxr = dx + r * n;
    const float inv = rstd[r];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < n; ++i) dot += widen(dyr[i]) * w[i] * xr[i];
    const float k = inv * inv * inv * dot / static_cast<float>(n);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float d = widen(dyr[i]);
      dxr[i] = inv * (d * w[i]) - xr[i] * k;
      dw_acc[i] += d * (xr[i] * inv);
    }
  }
}

template <class V, class T>
CONDENSE_INLINE void swiglu_forward_t(const T* g, const T* u, T* h, int64_t i0, int64_t i1) {
  constexpr int64_t L = lanes<V>;
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const V gv = vload<V>(g + i);
    vstore(h + i, gv / (1.0f + vexp(-gv)) * vload<V>(u + i));
  }
  for (; i < i1; ++i) {
    const float gi = widen(g[i]);
    put(h + i, gi / (1.0f + std::exp(-gi)) * widen(u[i]));
  }
}

template <class V, class T>
CONDENSE_INLINE void swiglu_backward_t(const T* g, const T* u, const T* dh, T* dg, T* du,
                                       int64_t i0, int64_t i1) {
  constexpr int64_t L = lanes<V>;
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const V gv = vload<V>(g + i), dv = vload<V>(dh + i);
    const V s = 1.0f / (1.0f + vexp(-gv));
    vstore(du + i, dv * (gv * s));
    vstore(dg + i, dv * vload<V>(u + i) * (s * (1.0f + gv * (1.0f - s))));
  }
  for (; i < i1; ++i) {
    const float gi = widen(g[i]), di = widen(dh[i]);
    const float s = 1.0f / (1.0f + std::exp(-gi));
    put(du + i, di * (gi * s));
    put(dg + i, di * widen(u[i]) * (s * (1.0f + gi * (1.0f - s))));
  }
}

// GeGLU with GELU's tanh approximation (Hendrycks & Gimpel 2016), written as a sigmoid:
// 0.5 x (1 + tanh(y)) = x sigmoid(2 y), y = sqrt(2 / pi) (x + 0.044715 x^3), so the same exp as
// SiLU and no cancellation near 0. z = 2 y = x (kA + kB x^2); dz/dx = kA + 3 kB x^2.
constexpr float kGeluA = 1.5957691216057308f;                 // 2 sqrt(2 / pi)
constexpr float kGeluB = 1.5957691216057308f * 0.044715f;     // 2 sqrt(2 / pi) 0.044715

template <class V, class T>
CONDENSE_INLINE void geglu_forward_t(const T* g, const T* u, T* h, int64_t i0, int64_t i1) {
  constexpr int64_t L = lanes<V>;
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const V gv = vload<V>(g + i);
    const V z = gv * (kGeluA + kGeluB * gv * gv);
    vstore(h + i, gv / (1.0f + vexp(-z)) * vload<V>(u + i));
  }
  for (; i < i1; ++i) {
    const float gi = widen(g[i]);
    const float z = gi * (kGeluA + kGeluB * gi * gi);
    put(h + i, gi / (1.0f + std::exp(-z)) * widen(u[i]));
  }
}

// gelu'(x) = s + x s (1 - s) dz/dx, s = sigmoid(z).
template <class V, class T>
CONDENSE_INLINE void geglu_backward_t(const T* g, const T* u, const T* dh, T* dg, T* du,
                                      int64_t i0, int64_t i1) {
  constexpr int64_t L = lanes<V>;
  int64_t i = i0;
  for (; i + L <= i1; i += L) {
    const V gv = vload<V>(g + i), dv = vload<V>(dh + i), g2 = gv * gv;
    const V s = 1.0f / (1.0f + vexp(-(gv * (kGeluA + kGeluB * g2))));
    vstore(du + i, dv * (gv * s));
    vstore(dg + i, dv * vload<V>(u + i) * (s + gv * s * (1.0f - s) * (kGeluA + 3.0f * kGeluB * g2)));
  }
  for (; i < i1; ++i) {
    const float gi = widen(g[i]), di = widen(dh[i]), g2 = gi * gi;
    const float s = 1.0f / (1.0f + std::exp(-(gi * (kGeluA + kGeluB * g2))));
    put(du + i, di * (gi * s));
    put(dg + i, di * widen(u[i]) * (s + gi * s * (1.0f - s) * (kGeluA + 3.0f * kGeluB * g2)));
  }
}

template <class T>
CONDENSE_INLINE void rope_row_forward_t(const T* x, T* y, const float* c, const float* s,
                                        int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = widen(x[i]), x2 = widen(x[half + i]);
    put(y + i, x1 * c[i] - x2 * s[i]);
    put(y + half + i, x2 * c[half + i] + x1 * s[half + i]);
  }
}

template <class T>
CONDENSE_INLINE void rope_row_backward_t(const T* dy, T* dx, const float* c, const float* s,
                                         int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float d1 = widen(dy[i]), d2 = widen(dy[half + i]);
    put(dx + i, d1 * c[i] + d2 * s[half + i]);
    put(dx + half + i, d2 * c[half + i] - d1 * s[i]);
  }
}

template <class V, class T>
CONDENSE_INLINE void cross_entropy_forward_t(const T* logits, const int64_t* targets, float* lse,
                                             float* loss, int64_t r0, int64_t r1, int64_t vocab) {
  constexpr int64_t L = lanes<V>;
  const int64_t body = vocab / L * L;
  for (int64_t r = r0; r < r1; ++r) {
    const T* l = logits + r * vocab;
    // The row maximum, a vector at a time (a scalar max is a dependency chain per element).
    V most = V{} - INFINITY;
    for (int64_t j = 0; j < body; j += L) {
      const V v = vload<V>(l + j);
      most = v > most ? v : most;
    }
    float top = -INFINITY;
    for (int k = 0; k < L; ++k) top = std::max(top, most[k]);
    for (int64_t j = body; j < vocab; ++j) top = std::max(top, widen(l[j]));
    V acc = {};
    for (int64_t j = 0; j < body; j += L) acc += vexp(vload<V>(l + j) - top);
    float sum = hsum(acc);
    for (int64_t j = body; j < vocab; ++j) sum += std::exp(widen(l[j]) - top);
    lse[r] = top + std::log(sum);
    loss[r] = lse[r] - widen(l[targets[r]]);
  }
}

template <class V, class T>
CONDENSE_INLINE void cross_entropy_backward_t(const T* logits, const int64_t* targets,
                                              const float* lse, float scale, T* dlogits,
                                              int64_t r0, int64_t r1, int64_t vocab) {
  constexpr int64_t L = lanes<V>;
  const int64_t body = vocab / L * L;
  for (int64_t r = r0; r < r1; ++r) {
    const T* l = logits + r * vocab;
    T* d = dlogits + r * vocab;
    const float m = lse[r];
    for (int64_t j = 0; j < body; j += L) vstore(d + j, scale * vexp(vload<V>(l + j) - m));
    for (int64_t j = body; j < vocab; ++j) put(d + j, scale * std::exp(widen(l[j]) - m));
    // The target's entry again with the one-hot subtracted, rounded once.
    const int64_t t = targets[r];
    put(d + t, scale * std::exp(widen(l[t]) - m) - scale);
  }
}

std::atomic<int> forced_lanes{0};

// v16 or v8 for the kernels with compares: by CPU (simd.h), unless a test forced one.
bool use_v16() {
  const int forced = forced_lanes.load(std::memory_order_relaxed);
  return forced != 0 ? forced == 16 : wide_vectors();
}

}  // namespace

void set_vector_lanes(int lanes) { forced_lanes.store(lanes == 8 || lanes == 16 ? lanes : 0); }

// A kernel template with compares, on v16 or v8 (use_v16()).
#define CONDENSE_BY_WIDTH(kernel, ...) \
  (use_v16() ? kernel<v16>(__VA_ARGS__) : kernel<v8>(__VA_ARGS__))

// The clones: one overload per storage type.

CONDENSE_CLONES
void rms_norm_forward(const float* x, const float* w, float* y, float* rstd, int64_t r0,
                      int64_t r1, int64_t n, float eps) {
  rms_norm_forward_t(x, w, y, rstd, r0, r1, n, eps);
}

CONDENSE_CLONES
void rms_norm_forward(const float* x, const float* w, bf16* y, float* rstd, int64_t r0,
                      int64_t r1, int64_t n, float eps) {
  rms_norm_forward_t(x, w, y, rstd, r0, r1, n, eps);
}

CONDENSE_CLONES
void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* dy,
                       float* dx, float* dw_acc, int64_t r0, int64_t r1, int64_t n) {
  rms_norm_backward_t(x, w, rstd, dy, dx, dw_acc, r0, r1, n);
}

CONDENSE_CLONES
void rms_norm_backward(const float* x, const float* w, const float* rstd, const bf16* dy,
                       float* dx, float* dw_acc, int64_t r0, int64_t r1, int64_t n) {
  rms_norm_backward_t(x, w, rstd, dy, dx, dw_acc, r0, r1, n);
}

CONDENSE_CLONES
void swiglu_forward(const float* g, const float* u, float* h, int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(swiglu_forward_t, g, u, h, i0, i1);
}

CONDENSE_CLONES
void swiglu_forward(const bf16* g, const bf16* u, bf16* h, int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(swiglu_forward_t, g, u, h, i0, i1);
}

CONDENSE_CLONES
void swiglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                     int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(swiglu_backward_t, g, u, dh, dg, du, i0, i1);
}

CONDENSE_CLONES
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dh, bf16* dg, bf16* du,
                     int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(swiglu_backward_t, g, u, dh, dg, du, i0, i1);
}

CONDENSE_CLONES
void geglu_forward(const float* g, const float* u, float* h, int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(geglu_forward_t, g, u, h, i0, i1);
}

CONDENSE_CLONES
void geglu_forward(const bf16* g, const bf16* u, bf16* h, int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(geglu_forward_t, g, u, h, i0, i1);
}

CONDENSE_CLONES
void geglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                    int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(geglu_backward_t, g, u, dh, dg, du, i0, i1);
}

CONDENSE_CLONES
void geglu_backward(const bf16* g, const bf16* u, const bf16* dh, bf16* dg, bf16* du,
                    int64_t i0, int64_t i1) {
  CONDENSE_BY_WIDTH(geglu_backward_t, g, u, dh, dg, du, i0, i1);
}

CONDENSE_CLONES
void rope_row_forward(const float* x, float* y, const float* c, const float* s, int64_t half) {
  rope_row_forward_t(x, y, c, s, half);
}

CONDENSE_CLONES
void rope_row_forward(const bf16* x, bf16* y, const float* c, const float* s, int64_t half) {
  rope_row_forward_t(x, y, c, s, half);
}

CONDENSE_CLONES
void rope_row_backward(const float* dy, float* dx, const float* c, const float* s, int64_t half) {
  rope_row_backward_t(dy, dx, c, s, half);
}

CONDENSE_CLONES
void rope_row_backward(const bf16* dy, bf16* dx, const float* c, const float* s, int64_t half) {
  rope_row_backward_t(dy, dx, c, s, half);
}

CONDENSE_CLONES
void cross_entropy_forward(const float* logits, const int64_t* targets, float* lse, float* loss,
                           int64_t r0, int64_t r1, int64_t vocab) {
  CONDENSE_BY_WIDTH(cross_entropy_forward_t, logits, targets, lse, loss, r0, r1, vocab);
}

CONDENSE_CLONES
void cross_entropy_forward(const bf16* logits, const int64_t* targets, float* lse, float* loss,
                           int64_t r0, int64_t r1, int64_t vocab) {
  CONDENSE_BY_WIDTH(cross_entropy_forward_t, logits, targets, lse, loss, r0, r1, vocab);
}

CONDENSE_CLONES
void cross_entropy_backward(const float* logits, const int64_t* targets, const float* lse,
                            float scale, float* dlogits, int64_t r0, int64_t r1, int64_t vocab) {
  CONDENSE_BY_WIDTH(cross_entropy_backward_t, logits, targets, lse, scale, dlogits, r0, r1, vocab);
}

CONDENSE_CLONES
void cross_entropy_backward(const bf16* logits, const int64_t* targets, const float* lse,
                            float scale, bf16* dlogits, int64_t r0, int64_t r1, int64_t vocab) {
  CONDENSE_BY_WIDTH(cross_entropy_backward_t, logits, targets, lse, scale, dlogits, r0, r1, vocab);
}

}  // namespace condense::fused
