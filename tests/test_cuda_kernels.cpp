// condense's CUDA kernels (comm/cuda_kernels_switch.h): the quantizing codecs'
// (comm/quantized_cuda_kernels.cu) and Top-K selection's (comm/topk_cuda_kernels.cu).
//  - DevicePath.*: on CPU, each kernel's work replayed in its thread-block order through the
//    functions the kernels call (comm/quantized_element.h, comm/topk_radix.h), against the CPU
//    paths bit for bit. CI has no GPU: this covers the shared per-element and per-chunk steps
//    and their order there, not the .cu files' own code (indexing, shared-memory scans, the
//    grid-stride loops and the multi-round carry of inputs over 4M elements), which only the
//    Cuda.* tests on a device exercise.
//  - Cuda.*: the kernels themselves (and the tensor-op paths they replace) against the CPU
//    paths; each skips itself without a CUDA device or a build without nvcc.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "comm/codec_kernels.h"
#include "comm/cuda_kernels_switch.h"
#include "comm/quantized_element.h"
#include "comm/topk_radix.h"
#include "comm/topk_select.h"
#include "tests/test_support.h"

namespace condense {
namespace {

using test::bitwise_equal;
using test::kCuda;
using test::test_vector;

// The CUDA kernels' work (comm/quantized_cuda_kernels.cu) replayed on the CPU: one "thread
// block" per codec block, kCudaThreads strided partial sums combined pairwise in the kernel's
// order, then groups of 8 elements per thread, through the same quantized_element.h functions
// the kernels call.
void emulate_cuda_encode(const QuantizedFormat& f, const float* v, uint64_t seed, uint8_t* payload) {
  using namespace quantized;
  for (int64_t b = 0; b < f.blocks; ++b) {
    const int64_t lo = b * f.block, hi = std::min(f.numel, lo + f.block);
    const float scale = block_scale(block_sum(v, lo, hi, f.levels), f.levels, hi - lo);
    std::memcpy(payload + 4 * b, &scale, 4);
    for (int t = 0; t < kCudaThreads; ++t)
      for (int64_t i0 = lo + kGroup * t; i0 < hi; i0 += kGroup * kCudaThreads)
        encode_group(v, i0, std::min(hi, i0 + kGroup), scale, level_step(scale, f.levels), f.levels, f.bits,
                     uniform_key(seed), payload + 4 * f.blocks);
  }
}

void emulate_cuda_decode_add(const QuantizedFormat& f, const uint8_t* payload, float* out) {
  using namespace quantized;
  for (int64_t b = 0; b < f.blocks; ++b) {
    const int64_t lo = b * f.block, hi = std::min(f.numel, lo + f.block);
    float scale;
    std::memcpy(&scale, payload + 4 * b, 4);
    float table[256];
    for (uint32_t c = 0; c < (1u << f.bits); ++c) table[c] = decoded_value(c, scale, f.levels);
    for (int t = 0; t < kCudaThreads; ++t)
      for (int64_t i0 = lo + kGroup * t; i0 < hi; i0 += kGroup * kCudaThreads)
        decode_add_group(payload + 4 * f.blocks, i0, std::min(hi, i0 + kGroup), table, f.bits, out);
  }
}

// The formats the kernel tests sweep: every code width, short last blocks, blocks shorter than a
// group's reach per thread (12) and longer (1000: threads loop twice), and an all-zero block.
template <typename F>
void for_each_kernel_format(const F& check) {
  for (int64_t levels : {0, 1, 3, 7, 127}) {
    for (int64_t block : {12, 64, 512, 1000}) {
      for (int64_t numel : {1, 9, 1000, 4097, 100003}) {
        QuantizedFormat f(numel, levels, block);
        if (!quantized::groups_fit(f.block, f.bits)) continue;  // sign with block 12: tensor ops
        at::Tensor v = test_vector(numel, 5 + numel + block, true).mul_(3);
        v.narrow(0, 0, std::min<int64_t>(numel, block)).zero_();
        if (numel > 100) v[70] = -0.0f;
        check(f, v);
      }
    }
  }
}

TEST(DevicePath, CudaKernelReplayGivesTheLoopsBytes) {
  int checked = 0;
  for_each_kernel_format([&](const QuantizedFormat& f, const at::Tensor& v) {
    const std::string what = "levels " + std::to_string(f.levels) + " block " + std::to_string(f.block) +
                             " numel " + std::to_string(f.numel);
    at::Tensor loops = at::empty({f.payload_bytes()}, at::kByte);
    // Garbage first: the replay must write every byte of the payload.
    at::Tensor replay = at::full({f.payload_bytes()}, 0xA5, at::kByte);
    quantized_encode(f, v, 1234, loops, false);
    emulate_cuda_encode(f, v.data_ptr<float>(), 1234, replay.data_ptr<uint8_t>());
    ASSERT_TRUE(bitwise_equal(replay, loops)) << what;
    // Decoding at an odd offset inside a larger buffer (as a slice of a gathered buffer is).
    at::Tensor gathered = at::zeros({f.payload_bytes() + 3}, at::kByte);
    gathered.narrow(0, 3, f.payload_bytes()).copy_(loops);
    at::Tensor x = test_vector(f.numel, 77, false), y = x.clone();
    quantized_decode_add(f, loops, x, false);
    emulate_cuda_decode_add(f, gathered.data_ptr<uint8_t>() + 3, y.data_ptr<float>());
    ASSERT_TRUE(bitwise_equal(y, x)) << what;
    ++checked;
  });
  EXPECT_EQ(checked, 5 * 4 * 5 - 5);  // all but sign with block 12
}

// The CUDA Top-K kernels' steps (comm/topk_radix.h) replayed on the CPU in the kernels' order.
// The exact path over n keys (or float bits): three histogram passes and digit selections,
// per-tile counts and their prefix sums, then per tile the threads' chunks with exclusive scans
// of their ties and their taken counts. Tiles are x's (seg_base null) or, on the sampled path,
// the candidates' segments per x tile, written through map.
// The histogram kernel's last block: thread t of 256 searches digits [bins - (t + 1) per,
// bins - t per) given the count above them (an exclusive scan over the threads). Returns how
// many threads found the digit (the kernel relies on exactly one when the histogram holds at
// least s.remaining keys).
int select_digit_by_threads(const int32_t* hist, int pass, topk_radix::Selection& s) {
  constexpr int kThreads = 256;
  const int bins = 1 << topk_radix::digit_width(pass), per = bins / kThreads;
  int found = 0;
  int32_t above = 0;
  const topk_radix::Selection start = s;
  for (int t = 0; t < kThreads; ++t) {
    const int d_hi = bins - t * per, d_lo = d_hi - per;
    topk_radix::Selection mine = start;
    if (topk_radix::select_digit_range(hist, pass, d_lo, d_hi, above, mine)) {
      ++found;
      s = mine;
    }
    for (int d = d_lo; d < d_hi; ++d) above += hist[d];
  }
  return found;
}

void emulate_exact_path(const uint32_t* bits, int64_t n, int64_t k, int64_t tiles, const int64_t* seg_base,
                        const int32_t* seg_count, const int32_t* map, int32_t* out,
                        const topk_radix::Selection* preset = nullptr) {  // T and need: no histograms
  using namespace topk_radix;
  Selection s{0u, static_cast<int32_t>(k)};
  if (preset) s = *preset;
  for (int pass = 0; pass < (preset ? 0 : kPasses); ++pass) {
    std::vector<int32_t> hist(kMaxBins, 0);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t key = key_of(bits[i]);
      if (in_prefix(key, pass, s.prefix)) ++hist[digit_of(key, pass)];
    }
    EXPECT_EQ(select_digit_by_threads(hist.data(), pass, s), 1);
  }
  const uint32_t t = s.prefix;
  const int64_t need = s.remaining;
  std::vector<int64_t> above(tiles), ties(tiles);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    int64_t lo, hi;
    tile_range(tile, n, seg_base, seg_count, lo, hi);
    for (int64_t i = lo; i < hi; ++i) {
      above[tile] += key_of(bits[i]) > t;
      ties[tile] += key_of(bits[i]) == t;
    }
  }
  int64_t above_before = 0, ties_before = 0;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    int64_t lo, hi;
    tile_range(tile, n, seg_base, seg_count, lo, hi);
    const int64_t taken_before = above_before + std::min(need, ties_before);
    int64_t tie_base = ties_before, pos = taken_before;
    std::vector<int64_t> tie_bases(kTileThreads);
    for (int th = 0; th < kTileThreads; ++th) {  // exclusive scan of the threads' ties
      int64_t i0, i1;
      chunk_bounds(lo, hi, th, i0, i1);
      tie_bases[th] = tie_base;
      tie_base += chunk_ties(bits, i0, i1, t);
    }
    for (int th = 0; th < kTileThreads; ++th) {  // exclusive scan of the taken counts, then writes
      int64_t i0, i1;
      chunk_bounds(lo, hi, th, i0, i1);
      const int taken = chunk_taken(bits, i0, i1, t, need, tie_bases[th]);
      chunk_write(bits, i0, i1, t, need, tie_bases[th], map, out, pos, k);
      pos += taken;
    }
    above_before += above[tile];
    ties_before += ties[tile];
  }
}

int64_t tiles_of(int64_t n) { return (n + topk_radix::kTile - 1) / topk_radix::kTile; }

at::Tensor emulate_cuda_topk(const at::Tensor& x, int64_t k) {
  at::Tensor out = at::full({k}, -1, at::kInt);
  emulate_exact_path(reinterpret_cast<const uint32_t*>(x.data_ptr<float>()), x.numel(), k, tiles_of(x.numel()),
                     nullptr, nullptr, nullptr, out.data_ptr<int32_t>());
  return out;
}

// The sampled path (plan as cuda_topk makes it for sampled_min_n = 0): the sample kernel's sort
// and rank; the collection, whose tiles reserve their segments here in reverse order (on the
// GPU in whatever order they run), each filled in index order up to capacity; the outcome;
// then the exact path on the candidates' segments, or over x (missed), or its count and write
// over x with T = 0 (zero fill).
enum class SampledOutcome { NotPlanned, Candidates, Missed, ZeroFill };
at::Tensor emulate_cuda_topk_sampled(const at::Tensor& x, int64_t k, SampledOutcome& outcome) {
  using namespace topk_radix;
  const int64_t n = x.numel(), tiles = tiles_of(n);
  const auto* bits = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  const SamplePlan plan = plan_sample(n, k, 0);
  at::Tensor out = at::full({k}, -1, at::kInt);
  outcome = SampledOutcome::NotPlanned;
  if (plan.strata == 0) return out;
  std::vector<uint32_t> sample(kSampleMax, 0u);
  for (int64_t s = 0; s < plan.strata * kSampleRun; ++s)
    sample[s] = key_of(bits[sample_position(plan, s / kSampleRun, static_cast<int>(s % kSampleRun))]);
  std::sort(sample.begin(), sample.end());
  const uint32_t t = sample_threshold(sample[kSampleMax - plan.rank]);
  std::vector<int32_t> indices(plan.capacity, -1);
  std::vector<uint32_t> keys(plan.capacity, 0xffffffffu);
  std::vector<int64_t> seg_base(tiles);
  std::vector<int32_t> seg_count(tiles);
  int64_t count = 0;
  for (int64_t tile = tiles - 1; tile >= 0; --tile) {
    seg_base[tile] = count;
    for (int64_t i = tile * kTile; i < std::min(n, (tile + 1) * kTile); ++i) {
      if (key_of(bits[i]) < t) continue;
      if (count < plan.capacity) {
        indices[count] = static_cast<int32_t>(i);
        keys[count] = key_of(bits[i]);
      }
      ++count;
      ++seg_count[tile];
    }
  }
  const int32_t result = sample_outcome(count, k, plan.capacity, t);
  if (result == kMissed) {
    outcome = SampledOutcome::Missed;
    emulate_exact_path(bits, n, k, tiles, nullptr, nullptr, nullptr, out.data_ptr<int32_t>());
  } else if (result == kZeroFill) {
    outcome = SampledOutcome::ZeroFill;
    const Selection zeros = zero_fill_selection(k, count);
    emulate_exact_path(bits, n, k, tiles, nullptr, nullptr, nullptr, out.data_ptr<int32_t>(), &zeros);
  } else {
    outcome = SampledOutcome::Candidates;
    emulate_exact_path(keys.data(), count, k, tiles, seg_base.data(), seg_count.data(), indices.data(),
                       out.data_ptr<int32_t>());
  }
  return out;
}

// An input the sample misses: the sampled positions of the first 50 strata hold 10, everything
// else is below 1, so t = key(10) has only 200 entries at or above it, fewer than k = n / 100.
at::Tensor sample_adversary(int64_t n, int64_t k) {
  const topk_radix::SamplePlan plan = topk_radix::plan_sample(n, k, 0);
  at::Tensor x = test_vector(n, 31, false).mul_(0.1).clamp_(-0.9, 0.9);
  for (int64_t j = 0; j < 50; ++j)
    for (int q = 0; q < topk_radix::kSampleRun; ++q) x[topk_radix::sample_position(plan, j, q)] = 10.0f;
  return x;
}

// Inputs for the Top-K kernels: gradient-like values with and without ties, all zeros (every
// key tied), and special values (NaN of both signs, infinities, zeros of both signs).
// n gradient-like values of which a fraction `density` (at random places) are nonzero.
at::Tensor sparse_vector(int64_t n, double density) {
  at::Tensor x = test_vector(n, 17, false);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(23);
  return x.mul_(at::rand({n}, g).lt(density));
}

std::vector<std::pair<std::string, at::Tensor>> topk_kernel_inputs() {
  std::vector<std::pair<std::string, at::Tensor>> v;
  for (int64_t n : {2, 100, 4096, 4097, 100003, 3000000})
    for (bool ties : {false, true}) v.push_back({std::to_string(n) + (ties ? " ties" : ""), test_vector(n, n + ties, ties)});
  v.push_back({"zeros", at::zeros({10000})});
  // Mostly zeros (as gradients of unused embedding rows): 0.5% and 1.5% nonzero, so at k = n /
  // 100 the nonzeros are fewer than k (zero fill) or more (candidates with t = 1).
  v.push_back({"sparse 0.5%", sparse_vector(100003, 0.005)});
  v.push_back({"sparse 1.5%", sparse_vector(100003, 0.015)});
  at::Tensor special = test_vector(20000, 3, true);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t i : {5, 900, 15000}) special[i] = nan;
  special[901] = -nan;
  special[17] = inf;
  special[18000] = -inf;
  special[19999] = -0.0f;
  v.push_back({"special", special});
  return v;
}

std::vector<int64_t> topk_kernel_ks(int64_t n) {
  std::vector<int64_t> ks = {1, std::max<int64_t>(1, n / 100), n / 2, n - 1, 7};
  ks.erase(std::remove_if(ks.begin(), ks.end(), [n](int64_t k) { return k < 1 || k >= n; }), ks.end());
  return ks;
}

// Encodes v with the loops, with tensor ops and with the kernels' CPU replay; asserts (fatally)
// that all three give the same bytes and returns them.
at::Tensor encode_every_path(const QuantizedFormat& f, const at::Tensor& v, uint64_t seed) {
  at::Tensor loops = at::empty({f.payload_bytes()}, at::kByte), ops = at::empty_like(loops);
  at::Tensor replay = at::full_like(loops, 0xA5);  // garbage: the replay must write every byte
  quantized_encode(f, v, seed, loops, false);
  quantized_encode(f, v, seed, ops, true);
  emulate_cuda_encode(f, v.data_ptr<float>(), seed, replay.data_ptr<uint8_t>());
  EXPECT_TRUE(bitwise_equal(ops, loops)) << "tensor ops vs loops";
  EXPECT_TRUE(bitwise_equal(replay, loops)) << "replay vs loops";
  return loops;
}

// Blocks of 512 whose scale depends on the order of their double sum: a few large terms whose
// sum sits exactly on a float rounding tie of the scale, and small terms of a quarter of the
// large sum's ulp each. Added one by one to the large sum (a sequential loop) they are lost;
// summed apart first (block_sum's partials) they tip the tie: sign (levels 0) mean |x| = 1 +
// 2^-24 and qsgd (levels 7) sqrt of (1 + 2^-24)^2 give 1 + 2^-23 by block_sum, 1 by a loop.
// The third block goes the other way: its small terms share the large one's partial and are
// lost there, where at::sum keeps them (1 by block_sum, 1 + 2^-23 by at::sum).
struct OrderSensitiveBlock {
  int64_t levels;
  at::Tensor v;
  float scale;  // block_sum's
};

std::vector<OrderSensitiveBlock> order_sensitive_blocks() {
  const float up = std::nextafter(1.0f, 2.0f);
  at::Tensor sign = at::full({512}, std::ldexp(1.0f, -45));
  sign[0] = 512.0f;
  sign[1] = std::ldexp(1.0f, -15);
  at::Tensor qsgd = at::full({512}, std::ldexp(1.0f, -27));
  qsgd[0] = 1.0f;
  qsgd[1] = qsgd[2] = std::ldexp(1.0f, -12);
  qsgd[3] = std::ldexp(1.0f, -24);
  at::Tensor one_partial = at::zeros({512});
  one_partial[5] = 512.0f;
  one_partial[1] = std::ldexp(1.0f, -15);
  for (int64_t j = 1; j < 8; ++j) one_partial[5 + 64 * j] = std::ldexp(1.0f, -45);
  return {{0, sign, up}, {7, qsgd, up}, {0, one_partial, 1.0f}};
}

TEST(DevicePath, BlockScalesSumInOneOrderOnEveryPath) {
  for (const auto& [levels, v, scale] : order_sensitive_blocks()) {
    SCOPED_TRACE("levels " + std::to_string(levels) + " scale " + std::to_string(scale));
    const float* x = v.data_ptr<float>();
    ASSERT_EQ(quantized::block_scale(quantized::block_sum(x, 0, 512, levels), levels, 512), scale);
    // Another order gives another scale (else the input would not test the order).
    double sequential = 0;
    for (int64_t i = 0; i < 512; ++i) sequential += quantized::scale_term(x[i], levels);
    const at::Tensor t = v.to(at::kDouble);
    const double aten = (levels ? t.mul(t) : t.abs()).sum().item<double>();
    ASSERT_TRUE(quantized::block_scale(sequential, levels, 512) != scale ||
                quantized::block_scale(aten, levels, 512) != scale);
    const at::Tensor loops = encode_every_path(QuantizedFormat(512, levels, 512), v, 3);
    EXPECT_EQ(loops.narrow(0, 0, 4).view(at::kFloat).item<float>(), scale);
  }
}

TEST(DevicePath, QsgdCodesOfNonFiniteValuesAreDefined) {
  // An infinite element makes its block's scale infinite, its step 0 and its own a = inf * 0 NaN: the
  // code is s (level 0), and the block's finite elements round to level 0 too. The same bytes on
  // every path (before, the loops converted NaN to an integer: undefined behaviour).
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t levels : {1, 7, 127}) {
    QuantizedFormat f(1000, levels, 100);
    at::Tensor v = test_vector(1000, 9, false);
    v[150] = inf;
    v[420] = -inf;
    v[777] = nan;
    SCOPED_TRACE("levels " + std::to_string(levels));
    const at::Tensor loops = encode_every_path(f, v, 5);
    if (HasFailure()) return;
    const uint8_t* codes = loops.data_ptr<uint8_t>() + 4 * f.blocks;
    const uint32_t mask = (1u << f.bits) - 1;
    auto code = [&](int64_t i) { return (codes[i / f.per_byte()] >> ((i % f.per_byte()) * f.bits)) & mask; };
    for (int64_t i : {int64_t{150}, int64_t{160}, int64_t{420}, int64_t{777}})
      EXPECT_EQ(code(i), static_cast<uint32_t>(levels)) << "levels " << levels << " element " << i;
  }
}

TEST(DevicePath, QsgdBlocksWithTinyScalesStayUnbiased) {
  // Scales below s / FLT_MAX overflow the step s / scale; those blocks divide per element (else
  // every nonzero element would round to level s and decode 20x too large). Same bytes on every
  // path, and the decoded block's mean near the input's.
  for (int64_t levels : {1, 7, 127}) {
    QuantizedFormat f(16384, levels, 512);  // 32 blocks: s = 1's mean within about 4% (1 sigma)
    // Magnitudes about s / FLT_MAX / 100: a block's l2 norm (about 25 of them) stays below s /
    // FLT_MAX (denormal for s = 1: the sums are in double, the scale a float denormal).
    const float tiny = static_cast<float>(levels) / std::numeric_limits<float>::max() / 100.0f;
    at::Tensor v = test_vector(16384, 3, false).abs_().add_(0.5).mul_(tiny);
    SCOPED_TRACE("levels " + std::to_string(levels));
    const at::Tensor loops = encode_every_path(f, v, 8);
    if (HasFailure()) return;
    const float scale = loops.narrow(0, 0, 4).view(at::kFloat).item<float>();
    ASSERT_FALSE(std::isfinite(quantized::level_step(scale, levels))) << "the test's scale is not tiny enough";
    at::Tensor decoded = at::zeros({16384});
    quantized_decode_add(f, loops, decoded, false);
    EXPECT_NEAR(decoded.sum().item<double>() / v.sum().item<double>(), 1.0, 0.15) << levels;
  }
}

TEST(DevicePath, CudaTopkReplayGivesTheCpuSelection) {
  for (const auto& [name, x] : topk_kernel_inputs())
    for (int64_t k : topk_kernel_ks(x.numel()))
      ASSERT_TRUE(bitwise_equal(emulate_cuda_topk(x, k), topk_abs_indices(x, k))) << name << " k " << k;
}

TEST(DevicePath, DigitSelectionByThreadsIsTheSerialOne) {
  // Histograms of every shape the passes see: empty bins, one full bin (all keys tied), the
  // answer at either end, random counts; remaining from 1 to the total.
  std::mt19937 rng(11);
  for (int pass = 0; pass < topk_radix::kPasses; ++pass) {
    const int bins = 1 << topk_radix::digit_width(pass);
    for (int shape = 0; shape < 40; ++shape) {
      std::vector<int32_t> hist(bins, 0);
      if (shape == 0) hist[0] = 1000;
      else if (shape == 1) hist[bins - 1] = 5;
      else if (shape == 2) hist[bins / 2] = 7, hist[bins / 2 - 1] = 3;
      else
        for (int d = 0; d < bins; ++d) hist[d] = rng() % 4 == 0 ? static_cast<int32_t>(rng() % 50) : 0;
      int32_t total = 0;
      for (int32_t c : hist) total += c;
      for (int32_t remaining : {1, 2, total / 3 + 1, total / 2 + 1, total - 1, total}) {
        if (remaining < 1 || remaining > total) continue;
        topk_radix::Selection serial{5u, remaining}, threads{5u, remaining};
        topk_radix::select_digit(hist.data(), pass, serial);
        ASSERT_EQ(select_digit_by_threads(hist.data(), pass, threads), 1) << pass << " " << shape;
        EXPECT_EQ(threads.prefix, serial.prefix) << pass << " " << shape << " " << remaining;
        EXPECT_EQ(threads.remaining, serial.remaining) << pass << " " << shape << " " << remaining;
      }
    }
  }
}

TEST(DevicePath, CudaTopkSampledReplayGivesTheCpuSelection) {
  std::map<SampledOutcome, int> outcomes;
  auto check = [&](const std::string& name, const at::Tensor& x, int64_t k) {
    SampledOutcome outcome;
    at::Tensor got = emulate_cuda_topk_sampled(x, k, outcome);
    ++outcomes[outcome];
    if (outcome != SampledOutcome::NotPlanned)
      ASSERT_TRUE(bitwise_equal(got, topk_abs_indices(x, k))) << name << " k " << k;
  };
  for (const auto& [name, x] : topk_kernel_inputs())
    for (int64_t k : topk_kernel_ks(x.numel())) check(name, x, k);
  // Every way out of the sample: too many candidates (every key tied at one nonzero value: the
  // threshold collects all)...
  const int64_t n = 100003, k = n / 100;
  SampledOutcome outcome;
  check("ones", at::ones({n}), k);
  emulate_cuda_topk_sampled(at::ones({n}), k, outcome);
  EXPECT_EQ(outcome, SampledOutcome::Missed);
  // ... too few (t above the k-th key) ...
  at::Tensor adversary = sample_adversary(n, k);
  check("adversary", adversary, k);
  emulate_cuda_topk_sampled(adversary, k, outcome);
  EXPECT_EQ(outcome, SampledOutcome::Missed);
  // ... and fewer nonzeros than k: all of them plus the first zeros.
  for (const at::Tensor& x : {at::zeros({n}), sparse_vector(n, 0.005)}) {
    emulate_cuda_topk_sampled(x, k, outcome);
    EXPECT_EQ(outcome, SampledOutcome::ZeroFill);
  }
  emulate_cuda_topk_sampled(sparse_vector(n, 0.015), k, outcome);  // t = 1: the nonzeros suffice
  EXPECT_EQ(outcome, SampledOutcome::Candidates);
  // The gradient-like inputs take the candidates (every n of at least 64 with k <= n / 8).
  EXPECT_GE(outcomes[SampledOutcome::Candidates], 10);
}

TEST(DevicePath, TopkSamplePlanBoundsTheCandidates) {
  // The plan's promise on gradient-like data: t below the k-th key and the candidates within
  // capacity; and the workspace it asks for stays within max(12 k, n / 8) + 4096 candidates.
  for (int64_t n : {int64_t{1} << 18, int64_t{3000000}})
    for (int64_t k : {int64_t{1}, n / 1000, n / 100, n / 10}) {
      const topk_radix::SamplePlan plan = topk_radix::plan_sample(n, k);
      ASSERT_GT(plan.strata, 0) << n << " " << k;
      EXPECT_EQ(plan.strata * topk_radix::kSampleRun, topk_radix::kSampleMax);
      at::Tensor x = test_vector(n, k + 5, false);
      SampledOutcome outcome;
      emulate_cuda_topk_sampled(x, k, outcome);
      EXPECT_EQ(outcome, SampledOutcome::Candidates) << n << " " << k;
      EXPECT_LE(plan.capacity, std::max<int64_t>(12 * k, n / 8) + 4096) << n << " " << k;
    }
  EXPECT_EQ(topk_radix::plan_sample(int64_t{1} << 17, 100).strata, 0);  // small: the exact path
  EXPECT_EQ(topk_radix::plan_sample(int64_t{1} << 20, (int64_t{1} << 20) / 4).strata, 0);  // large k
}

// ---------------------------------------------------------------------------------------------
// CUDA.

TEST(Cuda, QuantizedKernelsGiveTheLoopsBytes) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_kernels_built()) GTEST_SKIP() << "built without nvcc: no CUDA kernels to test";
  for (bool kernels : {true, false}) {  // the kernels, then the tensor-op path they replace
    if (!kernels) setenv("CONDENSE_CUDA_KERNELS", "0", 1);
    for_each_kernel_format([&](const QuantizedFormat& f, const at::Tensor& v) {
      const std::string what = std::string(kernels ? "kernels" : "tensor ops") + " levels " +
                               std::to_string(f.levels) + " block " + std::to_string(f.block) + " numel " +
                               std::to_string(f.numel);
      at::Tensor loops = at::empty({f.payload_bytes()}, at::kByte);
      quantized_encode(f, v, 1234, loops, false);
      at::Tensor gpu = at::full({f.payload_bytes()}, 0xA5, at::TensorOptions(kCuda).dtype(at::kByte));
      quantized_encode(f, v.to(kCuda), 1234, gpu, true);
      ASSERT_TRUE(bitwise_equal(gpu, loops)) << what;
      at::Tensor gathered = at::zeros({f.payload_bytes() + 3}, gpu.options());
      gathered.narrow(0, 3, f.payload_bytes()).copy_(gpu);
      at::Tensor x = test_vector(f.numel, 77, false), y = x.to(kCuda);
      quantized_decode_add(f, loops, x, false);
      quantized_decode_add(f, gathered.narrow(0, 3, f.payload_bytes()), y, true);
      ASSERT_TRUE(bitwise_equal(y, x)) << what;
    });
    for (const auto& block : order_sensitive_blocks()) {  // the scales' summation order
      const QuantizedFormat f(512, block.levels, 512);
      at::Tensor loops = at::empty({f.payload_bytes()}, at::kByte);
      quantized_encode(f, block.v, 9, loops, false);
      // tensor_ops = false asks for the CPU loops, which a CUDA vector cannot take: the kernels,
      // or with them off the tensor ops, whatever it says.
      for (bool tensor_ops : {true, false}) {
        at::Tensor gpu = at::empty({f.payload_bytes()}, at::TensorOptions(kCuda).dtype(at::kByte));
        quantized_encode(f, block.v.to(kCuda), 9, gpu, tensor_ops);
        ASSERT_TRUE(bitwise_equal(gpu, loops)) << (kernels ? "kernels" : "tensor ops") << " levels "
                                               << block.levels << " tensor_ops " << tensor_ops;
        at::Tensor x = test_vector(512, 12, false), y = x.to(kCuda);
        quantized_decode_add(f, loops, x, false);
        quantized_decode_add(f, gpu, y, tensor_ops);
        ASSERT_TRUE(bitwise_equal(y, x)) << "decode, tensor_ops " << tensor_ops;
      }
    }
    unsetenv("CONDENSE_CUDA_KERNELS");
  }
}

TEST(Cuda, TopkKernelsGiveTheCpuSelection) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_kernels_built()) GTEST_SKIP() << "built without nvcc: no CUDA kernels to test";
  for (bool kernels : {true, false}) {  // the kernels, then the tensor-op path they replace
    if (!kernels) setenv("CONDENSE_CUDA_KERNELS", "0", 1);
    for (const auto& [name, x] : topk_kernel_inputs()) {
      at::Tensor gx = x.to(kCuda);
      for (int64_t k : topk_kernel_ks(x.numel()))
      {
        at::Tensor cpu = topk_abs_indices(x, k);
        ASSERT_TRUE(bitwise_equal(topk_abs_indices_tensor_ops(gx, k), cpu))
            << (kernels ? "kernels " : "tensor ops ") << name << " k " << k;
        if (kernels)  // each path of the kernels on every input: sampled where it applies, exact
          for (int64_t min_n : {int64_t{0}, std::numeric_limits<int64_t>::max()})
            ASSERT_TRUE(bitwise_equal(detail::topk_abs_indices_cuda_kernels(gx, k, min_n), cpu))
                << "kernels, sampled_min_n " << min_n << " " << name << " k " << k;
      }
      // A slice at an odd offset (per-tensor Top-K selects from views of the bucket).
      if (x.numel() > 10) {
        at::Tensor part = gx.narrow(0, 3, x.numel() - 3);
        const int64_t k = (x.numel() - 3) / 10 + 1;
        ASSERT_TRUE(bitwise_equal(topk_abs_indices_tensor_ops(part, k), topk_abs_indices(x.narrow(0, 3, x.numel() - 3), k)))
            << name << " slice";
      }
    }
    if (kernels) {  // the sample's misses on the GPU: too many candidates, too few; zero fill
      const int64_t n = 100003, k = n / 100;
      for (const at::Tensor& x : {at::ones({n}), sample_adversary(n, k), at::zeros({n}), sparse_vector(n, 0.005)})
        ASSERT_TRUE(bitwise_equal(detail::topk_abs_indices_cuda_kernels(x.to(kCuda), k, 0), topk_abs_indices(x, k)));
      // Sizes only a device runs (the replays stop at 3M): over 1024 tiles the last block's
      // prefix scan carries across rounds, over 2048 the per-tile kernels loop over tiles and
      // the histograms cap their blocks.
      for (int64_t big : {int64_t{10000019}}) {
        for (bool ties : {false, true}) {
          const at::Tensor x = test_vector(big, 41 + ties, ties), gx = x.to(kCuda);
          for (int64_t k : {int64_t{1}, big / 100, big / 2})
            for (int64_t min_n : {int64_t{0}, std::numeric_limits<int64_t>::max()})
              ASSERT_TRUE(bitwise_equal(detail::topk_abs_indices_cuda_kernels(gx, k, min_n), topk_abs_indices(x, k)))
                  << "n " << big << (ties ? " ties" : "") << " k " << k << " sampled_min_n " << min_n;
        }
      }
    }
    unsetenv("CONDENSE_CUDA_KERNELS");
  }
}

}  // namespace
}  // namespace condense
