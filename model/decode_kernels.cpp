#include "model/decode_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/simd.h"

// Compiled with -O3 -ffp-contract=fast and without the LibTorch PCH (model/CMakeLists.txt).
namespace condense::decode {
using namespace condense::simd;
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

CONDENSE_CLONES
void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace condense::decode
