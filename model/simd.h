// 16-float vectors for condense's own float32 kernels (model/decode_kernels.cpp,
// model/decode_attention.cpp, model/fused_kernels.cpp), header-only and without LibTorch. Include it only from files built
// with -O3 -ffp-contract=fast (model/CMakeLists.txt), so that a * b + c becomes one FMA.
//
// CONDENSE_CLONES compiles a kernel for x86-64-v4 (AVX-512 F/BW/DQ/VL + v3), x86-64-v3 (AVX2 +
// FMA), AVX+FMA and baseline x86-64, chosen by CPU feature when the program loads. Not by a
// microarchitecture ("arch=haswell"): GCC's resolver tests those with __builtin_cpu_is (that
// exact CPU), so on any other it falls through to the baseline (measured: an Intel Xeon ran the
// SSE2 clone); the ISA levels are tested by their features (GCC 12). Not "avx512f" alone either:
// it implies AVX2 but not FMA, so that clone contracted a * b + c into one FMA on 16-float
// vectors and not on 8-float ones, and the kernels' two widths differed in the last bit
// (measured on an AVX-512 EPYC: 10 of 1665 SwiGLU outputs). "fma" implies AVX but not AVX2,
// whose 256-bit integer ops the bf16 conversions and exp's exponent bits need (without them GCC
// splits each into two 128-bit halves).
#pragma once
#include <cstdint>
#include <cstring>

#define CONDENSE_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "fma", "default")))
#define CONDENSE_INLINE inline __attribute__((always_inline))

namespace condense::simd {

// 16 floats: one AVX-512 register, two AVX registers, four SSE registers in each clone.
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

// 8 floats: one AVX register. GCC 12 lowers arithmetic on v16 well in an AVX2 clone (two
// instructions per op) but compares and selects (a < b ? a : b) on v16 to scalar code with
// stack spills (measured: exp's clamp made the fused SwiGLU and cross-entropy 1.9x and 2.6x
// slower than ATen's on an AVX2 EPYC), so kernels with compares are templates over the vector type
// and run on v8 where AVX-512 is missing (wide_vectors()).
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// The float vector type V's lanes and its int32 vector of as many lanes.
template <class V>
constexpr int64_t lanes = sizeof(V) / sizeof(float);
template <class V>
struct int_vector;
template <>
struct int_vector<v16> {
  typedef v16i type;
};
template <>
struct int_vector<v8> {
  typedef v8i type;
};

// True where the CPU has AVX-512 (32 registers of 16 floats): the kernels' choice of v16 over
// v8. Read from GCC's CPU model, initialized first (idempotent): a static initializer may run
// before libgcc's CPU detection.
CONDENSE_INLINE bool wide_vectors() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

template <class V = v16>
CONDENSE_INLINE V load(const float* p) {
  V r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

template <class V>
CONDENSE_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// The lanes' sum, in lane order.
template <class V>
CONDENSE_INLINE float hsum(V v) {
  float s = 0;
  for (int i = 0; i < lanes<V>; ++i) s += v[i];
  return s;
}

// The lanes' sum as a tree (halves added until one lane is left): 4 dependent adds for 16 lanes
// where hsum() takes 15, which bounds kernels that reduce once per short row (attention scores).
CONDENSE_INLINE float hsum_tree(v16 v) {
  typedef float v4 __attribute__((vector_size(16)));
  v8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const v8 s8 = lo + hi;
  v4 a, b;
  std::memcpy(&a, &s8, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof a, sizeof b);
  const v4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// dot(a, b) over n floats: two 16-float accumulators, then the tree sum and the scalar tail.
CONDENSE_INLINE float dot(const float* a, const float* b, int64_t n) {
  v16 acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 += load(a + i) * load(b + i);
    acc1 += load(a + i + kLanes) * load(b + i + kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += load(a + i) * load(b + i);
  float s = hsum_tree(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// e^x per lane: Cephes' expf (range reduction by ln 2 split in two constants, a degree-6
// polynomial on [-ln2/2, ln2/2], the exponent put in by integer arithmetic); within 2 ulp of
// std::exp over the clamp range [-87.3, 88.7] (below: about 1e-38 instead of a denormal or 0).
template <class V>
CONDENSE_INLINE V vexp(V x) {
  using VI = typename int_vector<V>::type;
  const V lo = V{} - 87.3f, hi = V{} + 88.7f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace condense::simd
