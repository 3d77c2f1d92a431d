// Row kernels of the fused training ops (model/fused_ops.h): RMSNorm, SwiGLU, GeGLU, RoPE and the
// cross-entropy, forward and backward, each one pass over its rows. Serial over the rows they
// are given; model/fused_ops.cpp splits rows across threads; the fast decoder applies the
// forwards to one row. Compiled per CPU feature with -O3 and FMA contraction (model/simd.h).
//
// Each takes float32 or bfloat16 storage (the activations of bf16 autocast training: matrix
// products write bf16) and computes in float32: a bf16 input is widened exactly, a bf16 output
// rounded once to nearest even (as c10::BFloat16 rounds; NaN stays NaN), where the composite
// ATen ops round after every op. Weights, RMSNorm's x (the float32 residual stream), its scale
// and dx, RoPE's tables and the cross-entropy's per-row values stay float32.
#pragma once
#include <cstdint>

namespace condense::fused {

// A bfloat16 value as its bits: the upper half of a float32 (at::BFloat16's layout).
struct bf16 {
  uint16_t bits;
};

// Tests: 8 or 16 forces the vector width of the kernels with compares (SwiGLU, cross-entropy,
// bf16 stores), which is otherwise 16 with AVX-512 and 8 without (model/simd.h); 0 restores
// the CPU's choice. Both widths run correctly on any x86-64 CPU.
void set_vector_lanes(int lanes);

// Rows [r0, r1) of x [*, n]: y = w * (x * rstd), rstd[r] = 1 / sqrt(mean(x_r^2) + eps).
void rms_norm_forward(const float* x, const float* w, float* y, float* rstd, int64_t r0,
                      int64_t r1, int64_t n, float eps);
void rms_norm_forward(const float* x, const float* w, bf16* y, float* rstd, int64_t r0,
                      int64_t r1, int64_t n, float eps);
// Rows [r0, r1): dx = rstd * (dy w) - x * rstd^3 * mean(dy w x); dw_acc += dy * x * rstd
// (dw_acc: this thread's partial sum over its rows).
void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* dy,
                       float* dx, float* dw_acc, int64_t r0, int64_t r1, int64_t n);
void rms_norm_backward(const float* x, const float* w, const float* rstd, const bf16* dy,
                       float* dx, float* dw_acc, int64_t r0, int64_t r1, int64_t n);

// Elements [i0, i1): h = silu(g) * u (h may be g: in place).
void swiglu_forward(const float* g, const float* u, float* h, int64_t i0, int64_t i1);
void swiglu_forward(const bf16* g, const bf16* u, bf16* h, int64_t i0, int64_t i1);
// Elements [i0, i1): dg = dh * u * silu'(g), du = dh * silu(g), with
// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) (ATen's silu_backward formula).
void swiglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                     int64_t i0, int64_t i1);
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dh, bf16* dg, bf16* du,
                     int64_t i0, int64_t i1);

// GeGLU (Gemma's MLP): h = gelu_tanh(g) * u, GELU's tanh approximation as at::gelu(g, "tanh"),
// computed as g * sigmoid(2 sqrt(2 / pi) (g + 0.044715 g^3)) (the same value); backward dg = dh *
// u * gelu_tanh'(g), du = dh * gelu_tanh(g). Elements [i0, i1); h may be g.
void geglu_forward(const float* g, const float* u, float* h, int64_t i0, int64_t i1);
void geglu_forward(const bf16* g, const bf16* u, bf16* h, int64_t i0, int64_t i1);
void geglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                    int64_t i0, int64_t i1);
void geglu_backward(const bf16* g, const bf16* u, const bf16* dh, bf16* dg, bf16* du,
                    int64_t i0, int64_t i1);

// One row of head_dim = 2 * half (rotate-half RoPE; y may be x: in place): forward
// y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2; backward (the transpose)
// dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1; c, s one position's [head_dim] row.
void rope_row_forward(const float* x, float* y, const float* c, const float* s, int64_t half);
void rope_row_backward(const float* dy, float* dx, const float* c, const float* s, int64_t half);
void rope_row_forward(const bf16* x, bf16* y, const float* c, const float* s, int64_t half);
void rope_row_backward(const bf16* dy, bf16* dx, const float* c, const float* s, int64_t half);

// Cross-entropy over rows [r0, r1) of logits [*, V] with target ids: lse[r] = log sum exp(l_r),
// loss[r] = lse[r] - l_r[target_r] (targets already checked to lie in [0, V)).
void cross_entropy_forward(const float* logits, const int64_t* targets, float* lse, float* loss,
                           int64_t r0, int64_t r1, int64_t vocab);
void cross_entropy_forward(const bf16* logits, const int64_t* targets, float* lse, float* loss,
                           int64_t r0, int64_t r1, int64_t vocab);
// dlogits_r = scale * (softmax(l_r) - onehot(target_r)), rows [r0, r1).
void cross_entropy_backward(const float* logits, const int64_t* targets, const float* lse,
                            float scale, float* dlogits, int64_t r0, int64_t r1, int64_t vocab);
void cross_entropy_backward(const bf16* logits, const int64_t* targets, const float* lse,
                            float scale, bf16* dlogits, int64_t r0, int64_t r1, int64_t vocab);

}  // namespace condense::fused
