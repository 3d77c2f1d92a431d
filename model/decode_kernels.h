// Float32 CPU kernels for decoding one position at a time (model/fast_decoder.h): matrix-vector
// rows, RMSNorm, RoPE, one query's attention over a KV cache, SwiGLU. At one position the work
// is small and memory bound, so what matters is streaming each weight once at the memory rate
// and not paying per-operator dispatch (ATen: a few microseconds per op, hundreds of ops per
// token). Each kernel is compiled for AVX-512, AVX+FMA and baseline x86-64 and picked by CPU
// feature when the program loads (GCC target_clones), so one binary runs anywhere with the CPU's
// widest vectors.
// The kernels are serial; model/fast_decoder.cpp splits rows and heads across threads.
//
// Sums are blocked FMA sums, in another order than ATen's, so results agree with the ATen
// forward to float rounding (about 1e-6 relative), not bit for bit.
#pragma once
#include <cstdint>

namespace condense::decode {

// y[r] = dot(W[r, :], x) for rows r0 <= r < r1 of row-major W [*, cols].
void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1, int64_t cols);

// out = weight * (x / sqrt(mean(x^2) + eps)), n elements, as RMSNorm computes it in float.
void rms_norm(const float* x, const float* weight, float* out, int64_t n, double eps);

// Rotate-half RoPE in place on `heads` consecutive vectors of head_dim = 2 * half: for i < half,
// (x_i, x_{i+half}) -> (x_i c_i - x_{i+half} s_i, x_{i+half} c_{i+half} + x_i s_{i+half}), with
// cos/sin one position's row of Rope::cos_sin ([head_dim], both halves stored).
void rope(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin);

// One query vector q [d] over `length` keys and values, rows of k and v [length, d]:
// out = softmax(scale * k q) v. scores: scratch of `length` floats.
void attend(const float* q, const float* k, const float* v, float* out, float* scores, int64_t d,
            int64_t length, float scale);

// g <- silu(g) * u, n elements (SwiGLU's gate times up).
void silu_mul(float* g, const float* u, int64_t n);

// x += y, n elements.
void add(float* x, const float* y, int64_t n);

}  // namespace condense::decode
