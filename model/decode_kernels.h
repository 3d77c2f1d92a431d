// Float32 CPU kernels for decoding one position at a time (model/fast_decoder.h): matrix-vector
// rows (attention over the KV cache: model/decode_attention.h; RMSNorm, RoPE and SwiGLU are the training
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

// x += y, n elements.
void add(float* x, const float* y, int64_t n);

}  // namespace condense::decode
