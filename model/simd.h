// 16-float vectors for condense's own float32 kernels (model/decode_kernels.cpp,
// model/fused_kernels.cpp), header-only and without LibTorch. Include it only from files built
// with -O3 -ffp-contract=fast (model/CMakeLists.txt), so that a * b + c becomes one FMA.
//
// CONDENSE_CLONES compiles a kernel for AVX-512, AVX+FMA and baseline x86-64, chosen by CPU
// feature when the program loads. Not by "arch=": GCC's resolver tests an arch= clone with
// __builtin_cpu_is (that exact microarchitecture), so on any other CPU it falls through to the
// baseline (measured: this machine ran the SSE2 clone). "fma" implies AVX.
#pragma once
#include <cstdint>
#include <cstring>

#define CONDENSE_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#define CONDENSE_INLINE inline __attribute__((always_inline))

namespace condense::simd {

// 16 floats: one AVX-512 register, two AVX registers, four SSE registers in each clone.
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
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

// e^x for 16 lanes: Cephes' expf (range reduction by ln 2 split in two constants, a degree-6
// polynomial on [-ln2/2, ln2/2], the exponent put in by integer arithmetic); within 2 ulp of
// std::exp over the clamp range [-87.3, 88.7] (below: about 1e-38 instead of a denormal or 0).
CONDENSE_INLINE v16 exp16(v16 x) {
  const v16 lo = v16{} - 87.3f, hi = v16{} + 88.7f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v16 magic = v16{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const v16 n = (x * 1.44269504088896341f + magic) - magic;
  v16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16 p = v16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace condense::simd
