// Single-process properties of what local-update training exchanges: the int8 codebook codec
// keeps each bin's mass (the decoded tensor sums to the input's sum) with at most 256 values per
// tensor; the SparseLoCo operator keeps exactly the k largest magnitudes of every chunk (64 x 64
// tiles of matrices, padded runs of 1-D tensors), represents each chunk's largest value exactly
// and every kept value within half a quantization step, and its bit packing round-trips at
// 2..8 bits; EF with a decayed buffer follows its recurrence; the outer optimizers take the
// closed-form step; 1-bit Adam is AdamW before its freeze and Adam with a frozen second moment
// after it; 0/1 Adam's variance steps follow DeepSpeed's schedule and match a reference Adam
// that updates v only there; coordinates whose v is 0 stay put under a sign codec. Multi-rank behaviour is in tests/mpi/test_local_update_mpi.cpp and
// tests/python/test_local_update.py.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <limits>

#include "comm/codec.h"
#include "comm/error_control.h"
#include "comm/local_update.h"
#include "core/error.h"
#include "trainer/onebit_adam.h"
#include "tests/test_support.h"

namespace condense {
namespace {

Communicator& self() { return test::self_communicator(); }

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed), at::kFloat);
}

std::pair<at::Tensor, at::Tensor> run(Codec& codec, const at::Tensor& v) {
  ExchangeStats stats;
  ExchangeContext ctx{self(), 1, 2, stats};
  at::Tensor local = at::full_like(v, 123.0), mean = at::full_like(v, 456.0);
  codec.exchange(v, &local, mean, ctx);
  return {local, mean};
}

CompressionConfig sparseloco(int64_t chunk, int64_t k, int64_t bits) {
  CompressionConfig c;
  c.codec = "sparseloco";
  c.chunk = chunk;
  c.k = k;
  c.bits = bits;
  return c;
}

TEST(Int8Codec, KeepsEachBinsMassWithAtMost256ValuesPerTensor) {
  at::Tensor a = randn({40, 50}, 1) * 3 + 0.5, b = randn({700}, 2) * 1e-3;
  at::Tensor v = at::cat({a.reshape({-1}), b});
  BucketLayout layout{{0, 2000}, {{40, 50}, {700}}, 2700};
  CompressionConfig c;
  c.codec = "int8";
  auto codec = make_codec(c, layout, 1, true);
  EXPECT_EQ(codec->payload_bytes(), 2 * 256 * 4 + 2700);  // 3724: already a multiple of 4
  EXPECT_FALSE(codec->summable());
  auto [local, mean] = run(*codec, v);
  EXPECT_TRUE(at::equal(local, mean));  // a world of one: the mean is this rank's C(v)
  for (auto [offset, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 2000}, {2000, 700}}) {
    at::Tensor x = v.narrow(0, offset, n).to(at::kDouble), y = local.narrow(0, offset, n).to(at::kDouble);
    EXPECT_LE(std::get<0>(at::_unique2(y)).numel(), 256);
    // Every code's value is the mean of the inputs that got it: sums agree per tensor.
    EXPECT_NEAR(y.sum().item<double>(), x.sum().item<double>(), 1e-4 * x.abs().sum().item<double>());
    // Inside +-3 std each value is within one bin width (6 std / 256) of its input.
    double sd = x.std().item<double>(), mu = x.mean().item<double>();
    at::Tensor inside = (x - mu).abs() < 2.9 * sd;
    double worst = (x - y).abs().masked_select(inside).max().item<double>();
    EXPECT_LE(worst, 6 * sd / 256 * 1.0001) << offset;
  }
}

TEST(SparseLoCoCodec, KeepsTheTopKOfEveryTileAndChunk) {
  // A 128 x 192 matrix (6 tiles of 64 x 64 at chunk 4096) and a 5000-element vector (2 runs,
  // the second padded).
  at::Tensor m = randn({128, 192}, 3), s = randn({5000}, 4);
  at::Tensor v = at::cat({m.reshape({-1}), s});
  BucketLayout layout{{0, 128 * 192}, {{128, 192}, {5000}}, 128 * 192 + 5000};
  const int64_t k = 40, bits = 8;
  auto codec = make_codec(sparseloco(4096, k, bits), layout, 1, true);
  const int64_t chunks = 6 + 2;
  EXPECT_EQ(codec->payload_bytes(), (4 * chunks + 2 * chunks * k + chunks * k * bits / 8 + 3) / 4 * 4);
  auto [local, mean] = run(*codec, v);
  EXPECT_TRUE(at::equal(local, mean));
  auto check_chunk = [&](const at::Tensor& x, const at::Tensor& y, const std::string& where) {
    at::Tensor idx = std::get<1>(at::topk(x.abs(), std::min<int64_t>(k, x.numel())));
    at::Tensor kept = y.ne(0);
    EXPECT_EQ(kept.sum().item<int64_t>(), idx.numel()) << where;
    EXPECT_TRUE(kept.index_select(0, idx).all().item<bool>()) << where;
    // The largest magnitude is exact; every kept value within half a step (m / 255).
    at::Tensor xi = x.index_select(0, idx), yi = y.index_select(0, idx);
    double top = x.abs().max().item<double>();
    EXPECT_EQ(y.abs().max().item<float>(), static_cast<float>(top)) << where;
    EXPECT_LE((xi - yi).abs().max().item<double>(), top / 255 * 1.0001) << where;
  };
  at::Tensor lm = local.narrow(0, 0, 128 * 192).view({128, 192});
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 3; ++c)
      check_chunk(m.narrow(0, 64 * r, 64).narrow(1, 64 * c, 64).reshape({-1}),
                  lm.narrow(0, 64 * r, 64).narrow(1, 64 * c, 64).reshape({-1}),
                  "tile " + std::to_string(r) + "," + std::to_string(c));
  at::Tensor ls = local.narrow(0, 128 * 192, 5000);
  check_chunk(s.narrow(0, 0, 4096), ls.narrow(0, 0, 4096), "run 0");
  check_chunk(s.narrow(0, 4096, 904), ls.narrow(0, 4096, 904), "run 1 (padded)");
}

// Ties in magnitude go to the lower index, as the stable-sort reference keeps them, so the
// choice does not depend on the device's topk (CUDA breaks ties otherwise); NaN is the largest
// magnitude, and a chunk with more than k NaN keeps the first k.
TEST(SparseLoCoCodec, TiesGoToTheLowerIndex) {
  const int64_t chunk = 100, k = 10;
  auto codec_for = [&](int64_t n) {
    return make_codec(sparseloco(chunk, k, 32), BucketLayout{{0}, {{n}}, n}, 1, true);
  };
  // Kept positions of v (bits 32: the kept values come back as they are, so every kept nonzero
  // is nonzero in `local`).
  auto kept = [&](const at::Tensor& v) {
    at::Tensor local = run(*codec_for(v.numel()), v).first;
    return local.ne(0).logical_or_(local.isnan());
  };
  at::Tensor v = at::randint(0, 2, {chunk}, at::make_generator<at::CPUGeneratorImpl>(1), at::kFloat)
                     .mul_(2).sub_(1);  // +-1
  v[50] = 2.0f;
  v[70] = -2.0f;
  v[90] = 2.0f;
  at::Tensor expected = at::zeros({chunk}, at::kBool);
  for (int64_t i : {0, 1, 2, 3, 4, 5, 6, 50, 70, 90}) expected[i] = true;
  EXPECT_TRUE(at::equal(kept(v), expected)) << kept(v).nonzero().view(-1);

  at::Tensor w = randn({chunk}, 2);
  w.narrow(0, 5, 16).fill_(std::numeric_limits<float>::quiet_NaN());
  at::Tensor first_nan = at::zeros({chunk}, at::kBool);
  first_nan.narrow(0, 5, k).fill_(true);
  EXPECT_TRUE(at::equal(kept(w), first_nan)) << kept(w).nonzero().view(-1);

  // Many chunks of values from {-2, ..., 2} (ties everywhere), the last one padded, and a few
  // NaN: the stable descending sort's first k per chunk.
  const int64_t n = 40 * chunk + 37;
  at::Tensor x = at::randint(-2, 3, {n}, at::make_generator<at::CPUGeneratorImpl>(3), at::kFloat);
  x[123] = std::numeric_limits<float>::quiet_NaN();
  x[4010] = -std::numeric_limits<float>::quiet_NaN();
  at::Tensor padded = at::zeros({41 * chunk});
  padded.narrow(0, 0, n).copy_(x);
  at::Tensor order = std::get<1>(padded.view({41, chunk}).abs().sort(/*stable=*/true, 1, /*descending=*/true));
  at::Tensor reference = at::zeros({41, chunk}, at::kBool)
                             .scatter_(1, order.narrow(1, 0, k), true).view(-1).narrow(0, 0, n);
  EXPECT_TRUE(at::equal(kept(x), reference.logical_and_(x.ne(0))));
}

// DeMo's DCT (transform: dct): a 2-D cosine of one frequency pair, or a constant, is one DCT-II
// coefficient of its 8 x 8 chunk, so k = 1 rebuilds it (to float rounding of the transform),
// where k = 1 without the transform keeps one element of 64. Sending everything (k = chunk,
// fp32) returns the input, since the transform is orthonormal.
TEST(SparseLoCoCodec, DctKeepsOneFrequencyWithOneCoefficient) {
  const int64_t side = 8;
  at::Tensor n = at::arange(side, at::kDouble);
  at::Tensor wave = at::outer(at::cos(M_PI * (2 * n + 1) * 3 / (2.0 * side)),
                              at::cos(M_PI * (2 * n + 1) * 5 / (2.0 * side))).to(at::kFloat);
  // A 16 x 8 matrix: two tiles (the wave, then a constant), and a 64-element run (the wave).
  at::Tensor m = at::cat({wave, at::full({side, side}, 0.7f)});
  at::Tensor v = at::cat({m.reshape({-1}), wave.reshape({-1})});
  BucketLayout layout{{0, 128}, {{16, 8}, {64}}, 192};
  CompressionConfig c = sparseloco(64, 1, 32);
  c.transform = "dct";
  auto codec = make_codec(c, layout, 1, true);
  auto [local, mean] = run(*codec, v);
  EXPECT_TRUE(at::equal(local, mean));
  EXPECT_TRUE(at::allclose(local, v, 0, 1e-5)) << (local - v).abs().max();
  c.transform = "none";
  auto plain = make_codec(c, layout, 1, true);
  EXPECT_EQ(run(*plain, v).first.ne(0).sum().item<int64_t>(), 3);  // one element per chunk

  at::Tensor r = randn({192}, 9);
  CompressionConfig all = sparseloco(64, 64, 32);
  all.transform = "dct";
  auto everything = make_codec(all, layout, 1, true);
  EXPECT_TRUE(at::allclose(run(*everything, r).first, r, 0, 1e-5));
  // And it refuses a chunk that is not a square.
  CompressionConfig bad = sparseloco(60, 4, 32);
  bad.transform = "dct";
  EXPECT_THROW(make_codec(bad, layout, 1, true), Error);
}

TEST(SparseLoCoCodec, BitPackingRoundTripsAtEveryWidth) {
  at::Tensor v = randn({3000}, 5);
  BucketLayout layout{{0}, {{3000}}, 3000};
  for (int64_t bits = 2; bits <= 8; ++bits) {
    auto codec = make_codec(sparseloco(100, 7, bits), layout, 1, true);
    auto [local, mean] = run(*codec, v);
    // mean is decoded from the packed payload, local from the codes before packing.
    EXPECT_TRUE(at::equal(local, mean)) << bits;
    const double levels = double((1 << bits) - 1);
    for (int64_t c = 0; c < 30; ++c) {
      at::Tensor x = v.narrow(0, 100 * c, 100), y = local.narrow(0, 100 * c, 100);
      at::Tensor kept = y.ne(0);
      double top = x.abs().max().item<double>();
      EXPECT_LE((x - y).masked_select(kept).abs().max().item<double>(), top / levels * 1.0001)
          << bits << " bits, chunk " << c;
    }
  }
}

TEST(ErrorControl, DecayedErrorFeedbackFollowsItsRecurrence) {
  // e_t = v_t - C(v_t), v_t = g_t + beta e_{t-1} (SparseLoCo's buffer), checked step by step.
  BucketLayout layout{{0}, {{512}}, 512};
  auto codec = make_codec(sparseloco(64, 4, 4), layout, 1, true);
  ErrorControl ec("ef", 0.1, 512, at::kCPU, 0.95);
  at::Tensor e = at::zeros({512});
  for (uint64_t t = 0; t < 5; ++t) {
    at::Tensor g = randn({512}, 10 + t);
    at::Tensor v = g + 0.95 * e;
    auto [expected_sent, unused] = run(*codec, v);
    at::Tensor out = g.clone();
    ExchangeStats stats;
    ExchangeContext ctx{self(), 1, 2, stats};
    ec.step(out, *codec, ctx);
    EXPECT_TRUE(at::allclose(out, expected_sent, 0, 1e-6)) << t;
    e = v - expected_sent;
    EXPECT_TRUE(at::allclose(ec.state()[0], e, 0, 1e-5)) << t;
  }
}

// Outer steps in a world of one: the pseudo-gradient is the local move D = anchor - w.
TEST(LocalUpdate, OuterStepsTakeTheClosedFormStep) {
  for (const std::string opt : {"sgd", "nesterov"}) {
    at::Tensor w = randn({10, 6}, 7), b = randn({6}, 8);
    at::Tensor w0 = w.clone(), b0 = b.clone();
    SyncConfig sync;
    sync.mode = "diloco";
    sync.inner_steps = 3;
    sync.outer_optimizer = opt;
    sync.outer_lr = 0.7;
    sync.outer_momentum = 0.9;
    LocalUpdate lu(self(), {{"w", w}, {"b", b}}, sync, CompressionConfig{}, 25.0);
    EXPECT_FALSE(lu.due(2, 10));
    EXPECT_TRUE(lu.due(3, 10));
    EXPECT_TRUE(lu.due(10, 10));  // the last step always ends a round
    // Round 1: the inner steps moved w by -0.1 everywhere: D = 0.1.
    w.sub_(0.1);
    lu.outer_step();
    // m = D; sgd: a -= lr m; nesterov: a -= lr (D + mu m).
    const double step1 = opt == "sgd" ? 0.7 * 0.1 : 0.7 * (0.1 + 0.9 * 0.1);
    EXPECT_TRUE(at::allclose(w, w0 - step1, 0, 1e-6)) << opt;
    EXPECT_TRUE(at::equal(b, b0)) << opt;  // no move, no step
    // Round 2: D = 0.2: m = 0.9 * 0.1 + 0.2.
    at::Tensor a1 = w.clone();
    w.sub_(0.2);
    lu.outer_step();
    const double m2 = 0.9 * 0.1 + 0.2;
    const double step2 = opt == "sgd" ? 0.7 * m2 : 0.7 * (0.2 + 0.9 * m2);
    EXPECT_TRUE(at::allclose(w, a1 - step2, 0, 1e-6)) << opt;
    EXPECT_EQ(lu.outer_steps(), 2);
    // Swapping the anchor in and out is exact.
    at::Tensor anchor = w.clone();
    w.add_(1.0);
    at::Tensor moved = w.clone();
    lu.swap_anchor();
    EXPECT_TRUE(at::equal(w, anchor));
    lu.swap_anchor();
    EXPECT_TRUE(at::equal(w, moved));
    // The state names what it holds and restores it.
    auto state = lu.shared_state();
    EXPECT_EQ(state.size(), 2u);
    EXPECT_TRUE(state.count("local_update/anchor0") && state.count("local_update/momentum0"));
    state.erase("local_update/momentum0");
    try {
      lu.load_shared_state(state, "ckpt.h5");
      FAIL() << "a missing momentum was accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("ckpt.h5: no 'local_update/momentum0'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(LocalUpdate, OuterLrOneWithoutMomentumLandsOnTheLocalWeights) {
  at::Tensor w = randn({300}, 9);
  SyncConfig sync;
  sync.mode = "diloco";
  sync.outer_optimizer = "sgd";
  sync.outer_lr = 1.0;
  sync.outer_momentum = 0;
  LocalUpdate lu(self(), {{"w", w}}, sync, CompressionConfig{}, 25.0);
  at::Tensor moved = w.add(randn({300}, 10));
  w.copy_(moved);
  lu.outer_step();
  EXPECT_TRUE(at::allclose(w, moved, 0, 1e-6));
}

// Streaming: four tensors of 100, 300, 200, 400 elements in P = 2 fragments (the cut passes
// half of the 1000 elements after the third tensor); with H = 4 fragment 0 steps at 2, 6, ...
// and fragment 1 at 4, 8, ...; an outer step of one fragment moves only its tensors.
TEST(LocalUpdate, FragmentsStepInTurn) {
  std::vector<at::Tensor> t = {randn({100}, 20), randn({10, 30}, 21), randn({200}, 22), randn({400}, 23)};
  std::vector<at::Tensor> t0;
  for (auto& x : t) t0.push_back(x.clone());
  SyncConfig sync;
  sync.mode = "diloco";
  sync.inner_steps = 4;
  sync.fragments = 2;
  sync.outer_optimizer = "sgd";
  sync.outer_lr = 0.5;
  sync.outer_momentum = 0;
  LocalUpdate lu(self(), {{"a", t[0]}, {"b", t[1]}, {"c", t[2]}, {"d", t[3]}}, sync,
                 CompressionConfig{}, 25.0);
  using F = std::vector<int64_t>;
  EXPECT_EQ(lu.fragments_due(1, 20), F{});
  EXPECT_EQ(lu.fragments_due(2, 20), F{0});
  EXPECT_EQ(lu.fragments_due(4, 20), F{1});
  EXPECT_EQ(lu.fragments_due(6, 20), F{0});
  EXPECT_EQ(lu.fragments_due(8, 20), F{1});
  EXPECT_EQ(lu.fragments_due(7, 7), (F{0, 1}));  // the last step synchronizes everything
  for (auto& x : t) x.sub_(0.2);                  // every tensor moved: D = 0.2
  lu.outer_step({0});                             // anchor -= 0.5 D in fragment 0 only
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(at::allclose(t[i], t0[i] - 0.1, 0, 1e-6)) << i;
  EXPECT_TRUE(at::allclose(t[3], t0[3] - 0.2, 0, 1e-6));  // fragment 1 keeps its local weights
  EXPECT_EQ(lu.compression().stats().dense_wire_bytes, 0);  // a world of one sends nothing
  lu.outer_step({1});
  EXPECT_TRUE(at::allclose(t[3], t0[3] - 0.1, 0, 1e-6));
  EXPECT_EQ(lu.outer_steps(), 2);
  // P must divide H, and a fragment needs a tensor of its own.
  sync.fragments = 3;
  EXPECT_THROW(LocalUpdate(self(), {{"a", t[0]}, {"b", t[1]}, {"c", t[2]}}, sync, CompressionConfig{}, 25.0),
               Error);
  sync.inner_steps = 6;
  sync.fragments = 6;
  EXPECT_THROW(LocalUpdate(self(), {{"a", t[0]}, {"b", t[1]}}, sync, CompressionConfig{}, 25.0), Error);
}

TEST(OneBitAdam, IsAdamWBeforeTheFreezeAndFreezesVAfter) {
  at::Tensor w = randn({6, 5}, 11).set_requires_grad(true), b = randn({5}, 12).set_requires_grad(true);
  at::Tensor w_ref = w.detach().clone().set_requires_grad(true);
  at::Tensor b_ref = b.detach().clone().set_requires_grad(true);
  AdamWOptions opt{0.9, 0.95, 1e-8, 0.1};
  OneBitAdam onebit({{"w", w}, {"b", b}}, opt, VarianceSchedule{3, 0}, self(), CompressionConfig{},
                    25.0);
  AdamW adam({{"w", w_ref}, {"b", b_ref}}, opt);
  for (uint64_t t = 1; t <= 3; ++t) {
    EXPECT_FALSE(onebit.compressed(static_cast<int64_t>(t)));
    at::Tensor gw = randn({6, 5}, 20 + t), gb = randn({5}, 30 + t);
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    w_ref.mutable_grad() = gw.clone();
    b_ref.mutable_grad() = gb.clone();
    onebit.step(0.01);
    adam.step(0.01);
    EXPECT_TRUE(at::equal(w, w_ref)) << t;  // the same kernel: bit for bit
    EXPECT_TRUE(at::equal(b, b_ref)) << t;
  }
  EXPECT_TRUE(onebit.compressed(4));
  auto before = onebit.state();
  at::Tensor v_w = before.at("w/exp_avg_sq").clone(), m_w = before.at("w/exp_avg").clone();
  at::Tensor v_b = before.at("b/exp_avg_sq").clone(), m_b = before.at("b/exp_avg").clone();
  at::Tensor w0 = w.detach().clone(), b0 = b.detach().clone();
  at::Tensor gw = randn({6, 5}, 40), gb = randn({5}, 41);
  w.mutable_grad() = gw.clone();
  b.mutable_grad() = gb.clone();
  onebit.step(0.01);  // step 4: codec none in a world of one sends m_r exactly
  auto after = onebit.state();
  EXPECT_TRUE(at::equal(after.at("w/exp_avg_sq"), v_w));
  EXPECT_TRUE(at::equal(after.at("b/exp_avg_sq"), v_b));
  at::Tensor m_w4 = m_w * 0.9 + 0.1 * gw, m_b4 = m_b * 0.9 + 0.1 * gb;
  EXPECT_TRUE(at::allclose(after.at("w/exp_avg"), m_w4, 0, 1e-7));
  EXPECT_EQ(after.at("w/step").item<float>(), 4.0f);
  const double bc1 = 1 - std::pow(0.9, 4), bc2 = 1 - std::pow(0.95, 3);
  at::Tensor w_exp = w0 * (1 - 0.01 * 0.1) - 0.01 / bc1 * m_w4 / ((v_w / bc2).sqrt() + 1e-8);
  at::Tensor b_exp = b0 - 0.01 / bc1 * m_b4 / ((v_b / bc2).sqrt() + 1e-8);  // norms: no decay
  EXPECT_TRUE(at::allclose(w.detach(), w_exp, 0, 1e-6)) << (w.detach() - w_exp).abs().max();
  EXPECT_TRUE(at::allclose(b.detach(), b_exp, 0, 1e-6)) << (b.detach() - b_exp).abs().max();
}


TEST(OneBitAdam, VarianceSchedules) {
  EXPECT_EQ((VarianceSchedule{4, 0}.steps()), (std::vector<int64_t>{1, 2, 3, 4}));
  // Interval 1 for two steps, then 2 for two, then 4, ... up to the freeze.
  EXPECT_EQ((VarianceSchedule{30, 2}.steps()), (std::vector<int64_t>{1, 2, 4, 6, 8, 12, 16, 24}));
  EXPECT_EQ((VarianceSchedule{1, 16}.steps()), (std::vector<int64_t>{1}));
  const VarianceSchedule bad{0, 0};
  EXPECT_THROW(bad.steps(), Error);
}

// 0/1 Adam with codec none in a world of one: variance steps are AdamW on g, momentum steps
// move m only, and the step divides by v's bias correction over the variance steps alone.
TEST(OneBitAdam, ZeroOneScheduleMatchesAReferenceAdam) {
  at::Tensor w = randn({7, 3}, 50).set_requires_grad(true);
  AdamWOptions opt{0.9, 0.95, 1e-8, 0.1};
  VarianceSchedule schedule{12, 2};  // variance steps 1, 2, 4, 6, 8, 12
  OneBitAdam zo({{"w", w}}, opt, schedule, self(), CompressionConfig{}, 25.0);
  at::Tensor p = w.detach().clone(), m = at::zeros_like(p), v = at::zeros_like(p);
  int64_t n = 0;
  for (int64_t t = 1; t <= 14; ++t) {
    const bool variance = t == 1 || t == 2 || t == 4 || t == 6 || t == 8 || t == 12;
    EXPECT_EQ(zo.compressed(t), !variance) << t;
    at::Tensor g = randn({7, 3}, 60 + static_cast<uint64_t>(t));
    w.mutable_grad() = g.clone();
    const double lr = 0.01 * (1.0 + 0.1 * static_cast<double>(t));
    zo.step(lr);
    m = m * 0.9 + 0.1 * g;
    if (variance) {
      v = v * 0.95 + 0.05 * g * g;
      ++n;
    }
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.95, n);
    p = p * (1 - lr * 0.1) - lr / bc1 * m / ((v / bc2).sqrt() + 1e-8);
    EXPECT_TRUE(at::allclose(w.detach(), p, 1e-5, 1e-6)) << t << " " << (w.detach() - p).abs().max();
    EXPECT_TRUE(at::allclose(zo.state().at("w/exp_avg_sq"), v, 1e-6, 1e-9)) << t;
  }
  EXPECT_EQ(zo.state().at("w/step").item<float>(), 14.0f);
}

// A row that never has a gradient keeps v = 0; the sign codec decodes its zero momentum to
// +-scale, which without the mask would move it by about lr scale / eps.
TEST(OneBitAdam, MasksCoordinatesWhoseVarianceIsZero) {
  at::Tensor e = randn({4, 8}, 70).set_requires_grad(true);
  const at::Tensor row3 = e.detach()[3].clone();
  CompressionConfig sign;
  sign.codec = "sign";
  sign.error_control = "ef";
  OneBitAdam onebit({{"e", e}}, AdamWOptions{0.9, 0.95, 1e-8, 0.0}, VarianceSchedule{2, 0}, self(),
                    sign, 25.0);
  for (uint64_t t = 1; t <= 5; ++t) {
    at::Tensor g = randn({4, 8}, 80 + t);
    g[3].zero_();
    e.mutable_grad() = g;
    onebit.step(0.01);
    EXPECT_TRUE(at::equal(e.detach()[3], row3)) << t;
    EXPECT_TRUE(at::isfinite(e.detach()).all().item<bool>()) << t;
  }
  EXPECT_FALSE(at::equal(e.detach()[0], randn({4, 8}, 70)[0]));  // the others trained
  EXPECT_TRUE(at::equal(onebit.state().at("e/exp_avg")[3], at::zeros({8})));
}

}  // namespace
}  // namespace condense
