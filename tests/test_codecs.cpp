// Single-process properties of the gradient codecs (comm/codec.h): Top-K keeps exactly the k
// largest magnitudes; Random-K is unbiased after scaling and contractive without; QSGD is
// unbiased (statistical test) and its bit packing round-trips at 2, 4 and 8 bits; sign keeps
// signs with the block's mean magnitude; PowerSGD is exact when its rank covers the matrix
// rank; payload sizes depend only on the element count. Multi-rank behaviour (means, error
// control invariants, resume) is in tests/mpi/test_compression_mpi.cpp.
#include <gtest/gtest.h>

#include <functional>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "comm/codec.h"
#include "comm/communicator.h"
#include "core/error.h"
#include "tests/test_support.h"

namespace condense {
namespace {

Communicator& self() { return test::self_communicator(); }

BucketLayout flat_layout(int64_t numel) { return BucketLayout{{0}, {{numel}}, numel}; }

at::Tensor randn(int64_t n, uint64_t seed) {
  return at::randn({n}, at::make_generator<at::CPUGeneratorImpl>(seed), at::kFloat);
}

// One exchange in a world of one: returns (local, mean) for shared seed `shared` and rank
// seed `own`.
std::pair<at::Tensor, at::Tensor> run(Codec& codec, const at::Tensor& v, uint64_t shared = 1,
                                      uint64_t own = 2, ExchangeStats* stats_out = nullptr) {
  ExchangeStats stats;
  ExchangeContext ctx{self(), shared, own, stats};
  at::Tensor local = at::full_like(v, 123.0), mean = at::full_like(v, 456.0);
  codec.exchange(v, &local, mean, ctx);
  if (stats_out) *stats_out = stats;
  return {local, mean};
}

CompressionConfig cfg(const std::string& codec) {
  CompressionConfig c;
  c.codec = codec;
  return c;
}

TEST(Codecs, TopKKeepsExactlyTheLargestMagnitudes) {
  at::Tensor v = randn(5000, 3);
  CompressionConfig c = cfg("topk");
  c.ratio = 0.02;
  auto codec = make_codec(c, flat_layout(5000), 1, false);
  auto [local, mean] = run(*codec, v);
  EXPECT_EQ(local.ne(0).sum().item<int64_t>(), 100);
  at::Tensor expected = at::zeros_like(v);
  at::Tensor idx = std::get<1>(at::topk(v.abs(), 100));
  expected.index_put_({idx}, v.index_select(0, idx));
  EXPECT_TRUE(at::equal(local, expected));
  EXPECT_TRUE(at::equal(mean, expected));
  EXPECT_EQ(codec->payload_bytes(), 800);
  EXPECT_FALSE(codec->summable());
}

TEST(Codecs, TopKPerTensorScopeSelectsWithinEachTensor) {
  // Tensor 0 has small values, tensor 1 large ones: bucket scope takes everything from tensor
  // 1, tensor scope takes 10% of each.
  at::Tensor v = at::cat({randn(300, 1) * 1e-3, randn(200, 2)});
  BucketLayout layout{{0, 300}, {{300}, {20, 10}}, 500};
  CompressionConfig c = cfg("topk");
  c.ratio = 0.1;
  auto bucket = make_codec(c, layout, 1, false);
  EXPECT_EQ(run(*bucket, v).first.narrow(0, 0, 300).ne(0).sum().item<int64_t>(), 0);
  c.scope = "tensor";
  auto tensor = make_codec(c, layout, 1, false);
  auto [local, mean] = run(*tensor, v);
  for (auto [offset, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 300}, {300, 200}}) {
    at::Tensor part = v.narrow(0, offset, n), expected = at::zeros_like(part);
    at::Tensor idx = std::get<1>(at::topk(part.abs(), n / 10));
    expected.index_put_({idx}, part.index_select(0, idx));
    EXPECT_TRUE(at::equal(local.narrow(0, offset, n), expected)) << offset;
  }
  EXPECT_EQ(tensor->payload_bytes(), 8 * 50);
}

TEST(Codecs, RandKIsUnbiasedAfterScalingAndContractiveWithout) {
  const int64_t d = 64, k = 16, trials = 20000;
  at::Tensor v = randn(d, 4);
  CompressionConfig c = cfg("randk");
  c.k = k;
  auto unbiased = make_codec(c, flat_layout(d), 1, /*error_control=*/false);
  at::Tensor sum = at::zeros({d}, at::kDouble);
  for (int64_t t = 0; t < trials; ++t) {
    auto [local, mean] = run(*unbiased, v, /*shared=*/1000 + t);
    ASSERT_EQ(local.ne(0).sum().item<int64_t>(), k);
    ASSERT_TRUE(at::equal(local, mean));
    sum += mean.to(at::kDouble);
  }
  // Each coordinate: (d/k) v_i with probability k/d, so the trial mean has standard deviation
  // |v_i| sqrt((d/k - 1) / trials); allow 5 of them.
  at::Tensor err = (sum / trials - v.to(at::kDouble)).abs();
  at::Tensor tol = 5 * v.to(at::kDouble).abs() * std::sqrt((double(d) / k - 1) / trials);
  EXPECT_TRUE(err.le(tol).all().item<bool>()) << (err / tol).max().item<double>();
  // Same shared seed, same coordinates; the contractive form sends v's own values.
  auto contractive = make_codec(c, flat_layout(d), 1, /*error_control=*/true);
  auto [a, ma] = run(*contractive, v, 9);
  auto [b, mb] = run(*unbiased, v, 9);
  EXPECT_TRUE(at::equal(a.ne(0), b.ne(0)));
  at::Tensor kept = a.ne(0);
  EXPECT_TRUE(at::equal(a.masked_select(kept), v.masked_select(kept)));
  // Contractive as a compressor for error feedback: E ||C(v) - v||^2 = (1 - k/d) ||v||^2 (k of
  // d coordinates kept uniformly). The trial mean's standard deviation here is about 0.002.
  double dropped = 0;
  const int64_t draws = 2000;
  for (int64_t t = 0; t < draws; ++t) dropped += (std::get<0>(run(*contractive, v, 5000 + t)) - v).pow(2).sum().item<double>();
  EXPECT_NEAR(dropped / draws / v.pow(2).sum().item<double>(), 1.0 - double(k) / d, 0.012);
  EXPECT_EQ(unbiased->payload_bytes(), 4 * k);
  EXPECT_TRUE(unbiased->summable());
}

TEST(Codecs, QsgdIsUnbiased) {
  const int64_t d = 96, trials = 20000;
  at::Tensor v = randn(d, 5);
  CompressionConfig c = cfg("qsgd");
  c.levels = 3;
  c.block = 32;
  auto codec = make_codec(c, flat_layout(d), 1, false);
  at::Tensor sum = at::zeros({d}, at::kDouble);
  for (int64_t t = 0; t < trials; ++t) sum += run(*codec, v, 1, /*own=*/77 + t).second.to(at::kDouble);
  // Each element rounds between two adjacent levels (norm/s apart), so its variance is at most
  // (norm/s)^2 / 4: the trial mean's standard deviation is at most norm / (2 s sqrt(trials)).
  at::Tensor norms = v.view({3, 32}).norm(2, 1).repeat_interleave(32).to(at::kDouble);
  at::Tensor tol = 5 * norms / (2 * 3 * std::sqrt(double(trials)));
  at::Tensor err = (sum / trials - v.to(at::kDouble)).abs();
  EXPECT_TRUE(err.le(tol).all().item<bool>()) << (err / tol).max().item<double>();
  // One draw is not the mean (it really is random) and differs between rank seeds.
  EXPECT_FALSE(at::equal(run(*codec, v, 1, 1).second, run(*codec, v, 1, 2).second));
}

TEST(Codecs, QsgdBitPackingRoundTripsAtTwoFourAndEightBits) {
  // A block whose |v| / ||v|| * s are integers decodes exactly, whatever the rounding draws.
  for (auto [levels, bits] : std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {7, 4}, {127, 8}}) {
    // Blocks of (x, 0): |x| / ||block|| * s = s exactly, for every s.
    std::vector<float> values;
    for (int i = 0; i < 50; ++i) {
      float x = (i % 2 ? -1.0f : 1.0f) * (0.25f + i);
      values.push_back(x);
      values.push_back(0.0f);
    }
    at::Tensor v = at::tensor(values);
    CompressionConfig c = cfg("qsgd");
    c.levels = levels;
    c.block = 2;
    auto codec = make_codec(c, flat_layout(v.numel()), 1, false);
    auto [local, mean] = run(*codec, v);
    EXPECT_TRUE(at::equal(local, v)) << "levels " << levels;
    EXPECT_EQ(codec->payload_bytes(), 4 * 50 + (100 * bits + 7) / 8) << "levels " << levels;
  }
}

TEST(Codecs, SignKeepsSignsWithTheBlockMeanMagnitude) {
  at::Tensor v = randn(1000, 6);
  CompressionConfig c = cfg("sign");
  c.block = 100;
  auto codec = make_codec(c, flat_layout(1000), 1, false);
  auto [local, mean] = run(*codec, v);
  at::Tensor scale = v.abs().view({10, 100}).mean(1).repeat_interleave(100);
  at::Tensor expected = at::where(v.ge(0), scale, -scale);
  EXPECT_TRUE(at::allclose(local, expected, 1e-6, 1e-7));
  EXPECT_TRUE(at::equal(local, mean));
  EXPECT_EQ(codec->payload_bytes(), 4 * 10 + 125);  // 10 scales + 1000 bits
}

TEST(Codecs, PowerSgdIsExactWhenTheRankCoversTheMatrixRank) {
  // A rank-2 40x30 matrix, a vector, and a rank-3 20x25 matrix, in one bucket.
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(8);
  at::Tensor m1 = at::mm(at::randn({40, 2}, g), at::randn({2, 30}, g));
  at::Tensor vec = at::randn({30}, g);
  at::Tensor m2 = at::mm(at::randn({20, 3}, g), at::randn({3, 25}, g));
  at::Tensor v = at::cat({m1.reshape(-1), vec, m2.reshape(-1)});
  BucketLayout layout{{0, 1200, 1230}, {{40, 30}, {30}, {20, 25}}, v.numel()};
  CompressionConfig c = cfg("powersgd");
  c.rank = 4;
  auto codec = make_codec(c, layout, 1, false);
  auto [local, mean] = run(*codec, v);
  EXPECT_LT((mean - v).abs().max().item<double>(), 1e-4 * v.abs().max().item<double>());
  EXPECT_TRUE(at::allclose(local, mean, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(mean.narrow(0, 1200, 30), vec));  // vectors travel dense
  EXPECT_EQ(codec->payload_bytes(), 4 * (4 * (40 + 30) + 30 + 4 * (20 + 25)));
  // Rank 1 cannot: the error is large.
  c.rank = 1;
  auto low = make_codec(c, layout, 1, false);
  auto [l1, m1out] = run(*low, v);
  EXPECT_GT((m1out - v).abs().max().item<double>(), 1e-2 * v.abs().max().item<double>());
  EXPECT_EQ(low->state().size(), 2u);  // the two warm-start Q
}

TEST(Codecs, PayloadSizeDependsOnlyOnTheElementCount) {
  BucketLayout layout{{0, 600}, {{30, 20}, {41}}, 641};
  for (const auto& name : codec_names()) {
    auto codec = make_codec(cfg(name), layout, 1, false);
    ExchangeStats a, b;
    run(*codec, randn(641, 1), 1, 2, &a);
    run(*codec, randn(641, 2).mul_(1000), 3, 4, &b);
    EXPECT_EQ(a.payload_bytes, codec->payload_bytes()) << name;
    EXPECT_EQ(b.payload_bytes, codec->payload_bytes()) << name;
    EXPECT_EQ(a.wire_bytes, 0) << name;  // one rank sends nothing
  }
}

TEST(Codecs, NamesAndKeptElements) {
  try {
    make_codec(cfg("zip"), flat_layout(10), 1, false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'zip'; valid: none, fp16, bf16, topk, randk, qsgd, sign, powersgd"),
              std::string::npos) << e.what();
  }
  CompressionConfig c;
  c.ratio = 0.01;
  EXPECT_EQ(kept_elements(c, 1000), 10);
  EXPECT_EQ(kept_elements(c, 10), 1);  // at least one
  c.k = 50;
  EXPECT_EQ(kept_elements(c, 1000), 50);
  EXPECT_EQ(kept_elements(c, 20), 20);  // at most all
  ExchangeStats s;
  s.add_all_reduce(1000, 4);
  EXPECT_EQ(s.wire_bytes, 1500);
  s.add_all_gather(100, 4);
  EXPECT_EQ(s.wire_bytes, 1800);
  EXPECT_EQ(s.payload_bytes, 1100);
}

// A key the chosen codec or error control never reads, set away from its default, would be
// ignored while the recipe reads as if it took effect; at its default it is harmless.
TEST(Codecs, KeysTheChoiceIgnoresAreNamed) {
  struct Case {
    std::function<void(CompressionConfig&)> set;
    std::string expected;  // "" : every set key is read
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.codec = "topk"; }, ""},
      {[](auto& c) { c.codec = "topk"; c.levels = 3; },
       "comm.compression.levels is set, but it applies to comm.compression.codec qsgd and this "
       "recipe has 'topk'"},
      {[](auto& c) { c.codec = "qsgd"; c.levels = 3; }, ""},
      {[](auto& c) { c.codec = "topk"; c.error_control = "econtrol"; c.decay = 0.5; },
       "comm.compression.decay is set, but it applies to comm.compression.error_control ef and "
       "this recipe has 'econtrol'"},
      {[](auto& c) { c.codec = "topk"; c.error_control = "econtrol"; c.eta = 0.2; }, ""},
      {[](auto& c) { c.codec = "topk"; c.error_control = "ef"; c.eta = 0.2; }, "comm.compression.eta"},
      {[](auto& c) { c.codec = "sparseloco"; c.k = 8; c.bits = 32; c.chunk = 256; }, ""},
      {[](auto& c) { c.codec = "sign"; c.k = 8; }, "comm.compression.k is set"},
      {[](auto& c) { c.rank = 2; }, "codec powersgd and this recipe has 'none'"}};
  for (size_t i = 0; i < cases.size(); ++i) {
    CompressionConfig c;
    cases[i].set(c);
    const std::string m = unread_compression_key(c);
    if (cases[i].expected.empty()) EXPECT_EQ(m, "") << "case " << i;
    else EXPECT_NE(m.find(cases[i].expected), std::string::npos) << "case " << i << ": " << m;
  }
}

}  // namespace
}  // namespace condense
