// Multi-rank tests of compressed gradient exchange (comm/gradient_compression.h), under
// mpirun -np 2 and -np 4: codec "none" is the plain all-reduce bit for bit; every codec leaves
// the same mean on every rank (int8 and sparseloco, the pseudo-gradient codecs, included); Top-K's mean is the rank-ordered sum of each rank's own top-k;
// the error-control invariants hold over many steps with random gradients for several codecs
// and eta, also for 1-bit Adam's compressed all-reduce with its server error; warm-up steps
// are dense; a restored state continues bit for bit; and training with
// compressed GradientSync keeps parameters identical on all ranks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <tuple>

#include "comm/grad_sync.h"
#include "comm/gradient_compression.h"
#include "comm/topk_select.h"
#include "core/error.h"
#include "tests/mpi/mpi_fixtures.h"
#include "trainer/adamw.h"

namespace condense {
namespace {

using test::same_on_all_ranks;
using test::world;

// Two matrices and two vectors: PowerSGD compresses the matrices and sends the vectors dense.
BucketLayout layout() {
  BucketLayout l;
  std::vector<std::vector<int64_t>> shapes = {{24, 16}, {16}, {12, 20}, {7}};
  for (auto& s : shapes) {
    l.offsets.push_back(l.numel);
    l.shapes.push_back(s);
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    l.numel += n;
  }
  return l;
}

// This rank's gradient at `step`: different on every rank and step, with a common component.
at::Tensor gradient(int64_t numel, int step) {
  at::Generator common = at::make_generator<at::CPUGeneratorImpl>(77 + step);
  at::Generator mine = at::make_generator<at::CPUGeneratorImpl>(1000 * (world().rank() + 1) + step);
  return at::randn({numel}, common, at::kFloat) + 0.5 * at::randn({numel}, mine, at::kFloat);
}

CompressionConfig config(const std::string& codec, const std::string& ec, double eta = 0.1) {
  CompressionConfig c;
  c.codec = codec;
  c.error_control = ec;
  c.eta = eta;
  c.ratio = 0.1;
  c.block = 32;
  c.rank = 2;
  c.chunk = 64;  // sparseloco: 8 x 8 tiles of the 24 x 16 matrix, runs of 64 elsewhere
  c.seed = 5;
  return c;
}

at::Tensor plain_mean(const at::Tensor& g) {
  at::Tensor t = g.clone();
  world().all_reduce_sum(t);
  return t.div_(world().size());
}

TEST(Compression, NoneIsThePlainAllReduceBitForBit) {
  GradientCompression gc(world(), config("none", "none"), {layout()});
  for (int step = 0; step < 3; ++step) {
    at::Tensor g = gradient(layout().numel, step), expected = plain_mean(g);
    gc.begin_step();
    gc.exchange(0, g);
    gc.end_step();
    EXPECT_TRUE(at::equal(g, expected));
    EXPECT_EQ(gc.stats().payload_bytes, 4 * layout().numel);
    EXPECT_EQ(gc.stats().wire_bytes, gc.stats().dense_wire_bytes);
  }
}

TEST(Compression, EveryCodecGivesTheSameMeanOnEveryRank) {
  for (const char* codec : {"fp16", "bf16", "topk", "randk", "qsgd", "sign", "powersgd", "int8",
                            "sparseloco"}) {
    for (const char* ec : {"none", "ef", "ef21", "econtrol"}) {
      GradientCompression gc(world(), config(codec, ec), {layout()});
      for (int step = 0; step < 3; ++step) {
        at::Tensor g = gradient(layout().numel, step);
        gc.begin_step();
        gc.exchange(0, g);
        gc.end_step();
        EXPECT_TRUE(same_on_all_ranks(g)) << codec << " " << ec << " step " << step;
        EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << codec << " " << ec;
      }
      EXPECT_GT(gc.stats().payload_bytes, 0);
      // int8's 1 KB codebook per tensor outweighs these 647 elements; it pays off on real tensors.
      if (std::string(codec) != "int8") EXPECT_LT(gc.stats().payload_bytes, 4 * layout().numel) << codec;
    }
  }
}

TEST(Compression, SixteenBitMeansAreCloseToTheTrueMean) {
  for (const char* codec : {"fp16", "bf16"}) {
    GradientCompression gc(world(), config(codec, "none"), {layout()});
    at::Tensor g = gradient(layout().numel, 0), expected = plain_mean(g);
    gc.begin_step();
    gc.exchange(0, g);
    double tol = std::string(codec) == "fp16" ? 2e-3 : 2e-2;  // ~ a few units of the last bit
    EXPECT_LT((g - expected).abs().max().item<double>(), tol * expected.abs().max().item<double>())
        << codec;
  }
}

// Top-K's mean: gather every rank's vector, take each one's top-k by magnitude with torch::topk,
// sum in rank order, divide by n.
TEST(Compression, TopKMeanIsTheRankOrderedSumOfEachRanksTopK) {
  Communicator& c = world();
  const int64_t numel = layout().numel;
  GradientCompression gc(c, config("topk", "none"), {layout()});
  at::Tensor g = gradient(numel, 0);
  at::Tensor all = at::empty({numel * c.size()}, at::kFloat);
  c.all_gather(g, all);
  const int64_t k = kept_elements(config("topk", "none"), numel);
  at::Tensor expected = at::zeros({numel}, at::kFloat);
  for (int r = 0; r < c.size(); ++r) {
    at::Tensor v = all.narrow(0, r * numel, numel);
    at::Tensor idx = std::get<1>(at::topk(v.abs(), k));
    expected.index_add_(0, idx, v.index_select(0, idx));
  }
  expected.div_(c.size());
  gc.begin_step();
  gc.exchange(0, g);
  // Bit for bit: the same per-rank scatter-adds in rank order, then one division.
  EXPECT_TRUE(at::equal(g, expected)) << (g - expected).abs().max().item<float>();
  EXPECT_EQ(gc.stats().payload_bytes, 8 * k);
  EXPECT_EQ(gc.stats().wire_bytes, (c.size() - 1) * 8 * k);
}

// Runs `steps` exchanges and checks the invariant of the error control (comm/error_control.h):
//  ef, econtrol: sum of returned vectors + mean over ranks of the final e = sum of mean gradients
//  ef21:         h = mean over ranks of h_i after every step
void check_invariant(const std::string& codec, const std::string& ec, double eta) {
  Communicator& c = world();
  const int64_t numel = layout().numel;
  GradientCompression gc(c, config(codec, ec, eta), {layout()});
  at::Tensor returned = at::zeros({numel}, at::kDouble), mean_g = at::zeros({numel}, at::kDouble);
  const int steps = 25;
  for (int step = 0; step < steps; ++step) {
    at::Tensor g = gradient(numel, step);
    mean_g += plain_mean(g.to(at::kDouble));
    gc.begin_step();
    gc.exchange(0, g);
    gc.end_step();
    returned += g.to(at::kDouble);
    if (ec == "ef21") {
      at::Tensor h_local = gc.state().narrow(0, 0, numel), h = gc.state().narrow(0, numel, numel);
      at::Tensor mean_h_local = plain_mean(h_local.to(at::kDouble));
      EXPECT_LT((h.to(at::kDouble) - mean_h_local).abs().max().item<double>(), 1e-5 * (step + 1))
          << codec << " step " << step;
      // The state moves (an EF21 that never updated its zeros would pass the line above) and
      // what the exchange returns is the global estimate h itself.
      EXPECT_GT(h_local.abs().max().item<float>(), 0.f) << codec << " step " << step;
      EXPECT_TRUE(at::equal(g, h)) << codec << " step " << step;
    }
  }
  if (ec == "ef21") return;
  at::Tensor e = gc.state().narrow(0, 0, numel).to(at::kDouble);  // e comes first in the state
  at::Tensor lhs = returned + plain_mean(e);
  double scale = mean_g.abs().max().item<double>();
  double err = (lhs - mean_g).abs().max().item<double>();
  EXPECT_LT(err, 2e-5 * scale * steps) << codec << " " << ec << " eta " << eta << ": " << err;
  // And the compression did something: the returned sum differs from the sum of gradients.
  EXPECT_GT((returned - mean_g).abs().max().item<double>(), 1e-3 * scale) << codec << " " << ec;
}

TEST(ErrorControl, EfInvariantSentPlusResidualEqualsGradients) {
  for (const char* codec : {"topk", "randk", "qsgd", "sign", "powersgd", "int8", "sparseloco"})
    check_invariant(codec, "ef", 0);
}

TEST(ErrorControl, EControlInvariantForSeveralEta) {
  for (const char* codec : {"topk", "randk", "sign", "powersgd", "sparseloco"})
    for (double eta : {0.05, 0.2, 1.0}) check_invariant(codec, "econtrol", eta);
}

// 1-bit Adam's compressed all-reduce (comm/codec_compressed_allreduce.cpp) with EF on the
// workers: the mean is the same on every rank, and over the steps
//   sum of returned vectors + mean over ranks of the worker errors + the servers' errors
//   (chunk j from rank j) = sum of mean gradients,
// since the server's own error feedback keeps what its re-compression dropped. A restored
// state continues bit for bit, and from 3 ranks on it sends fewer bytes than the all-gather.
TEST(Compression, CompressedAllReduceKeepsWorkerAndServerErrors) {
  Communicator& c = world();
  const int64_t numel = layout().numel;
  const int64_t chunk = (numel + c.size() - 1) / c.size();
  for (const char* codec : {"sign", "qsgd"}) {
    CompressionConfig cfg = config(codec, "ef");
    cfg.collective = "compressed_all_reduce";
    GradientCompression gc(c, cfg, {layout()});
    at::Tensor returned = at::zeros({numel}, at::kDouble), mean_g = at::zeros({numel}, at::kDouble);
    const int steps = 25;
    auto run = [&](GradientCompression& x, int step) {
      at::Tensor g = gradient(numel, step);
      x.begin_step();
      x.exchange(0, g);
      x.end_step();
      return g;
    };
    for (int step = 0; step < steps; ++step) {
      mean_g += plain_mean(gradient(numel, step).to(at::kDouble));
      at::Tensor g = run(gc, step);
      EXPECT_TRUE(same_on_all_ranks(g)) << codec << " step " << step;
      returned += g.to(at::kDouble);
    }
    at::Tensor state = gc.state();
    ASSERT_EQ(state.numel(), numel + chunk) << codec;  // worker e, then this rank's server error
    at::Tensor e = state.narrow(0, 0, numel).to(at::kDouble);
    at::Tensor servers = at::empty({c.size() * chunk}, at::kFloat);
    c.all_gather(state.narrow(0, numel, chunk).contiguous(), servers);
    at::Tensor lhs = returned + plain_mean(e) + servers.narrow(0, 0, numel).to(at::kDouble);
    const double scale = mean_g.abs().max().item<double>();
    EXPECT_LT((lhs - mean_g).abs().max().item<double>(), 2e-5 * scale * steps) << codec;
    EXPECT_GT((returned - mean_g).abs().max().item<double>(), 1e-3 * scale) << codec;
    EXPECT_GT(servers.abs().max().item<float>(), 0.0f) << codec;  // the server error is used

    GradientCompression b(c, cfg, {layout()});
    b.load_state(gc.state().clone(), gc.step(), "test");
    for (int step = steps; step < steps + 3; ++step)
      EXPECT_TRUE(at::equal(run(gc, step), run(b, step))) << codec << " " << step;

    CompressionConfig gather = config(codec, "ef");
    GradientCompression plain(c, gather, {layout()});
    run(plain, 0);
    if (c.size() >= 3) EXPECT_LT(gc.stats().wire_bytes, plain.stats().wire_bytes) << codec;
    EXPECT_EQ(gc.stats().wire_bytes, gc.plan().wire_bytes) << codec;
  }
}

TEST(ErrorControl, Ef21GlobalEstimateIsTheMeanOfLocalEstimates) {
  for (const char* codec : {"topk", "qsgd", "powersgd"}) check_invariant(codec, "ef21", 0);
}

TEST(Compression, WarmUpStepsAreDenseThenCompressed) {
  CompressionConfig cfg = config("topk", "ef");
  cfg.warmup_steps = 2;
  GradientCompression gc(world(), cfg, {layout()});
  for (int step = 0; step < 4; ++step) {
    at::Tensor g = gradient(layout().numel, step), expected = plain_mean(g);
    gc.begin_step();
    gc.exchange(0, g);
    gc.end_step();
    if (step < 2) {
      EXPECT_TRUE(at::equal(g, expected)) << step;  // e stays 0 under a dense exchange
      EXPECT_EQ(gc.stats().payload_bytes, 4 * layout().numel);
      EXPECT_TRUE(at::equal(gc.state(), at::zeros_like(gc.state())));
    } else {
      EXPECT_FALSE(at::equal(g, expected)) << step;
      EXPECT_LT(gc.stats().payload_bytes, layout().numel);
    }
  }
}

// State saved after some steps and loaded into a fresh compressor continues bit for bit.
TEST(Compression, RestoredStateContinuesBitForBit) {
  for (auto [codec, ec] : std::vector<std::pair<std::string, std::string>>{
           {"topk", "econtrol"}, {"powersgd", "ef"}, {"qsgd", "ef21"}, {"randk", "ef"}}) {
    CompressionConfig cfg = config(codec, ec);
    cfg.warmup_steps = 1;
    GradientCompression a(world(), cfg, {layout()});
    auto run = [&](GradientCompression& gc, int step) {
      at::Tensor g = gradient(layout().numel, step);
      gc.begin_step();
      gc.exchange(0, g);
      gc.end_step();
      return g;
    };
    for (int step = 0; step < 4; ++step) run(a, step);
    at::Tensor saved = a.state().clone();
    GradientCompression b(world(), cfg, {layout()});
    b.load_state(saved, a.step(), "test");
    for (int step = 4; step < 8; ++step) EXPECT_TRUE(at::equal(run(a, step), run(b, step))) << codec << " " << step;
    EXPECT_TRUE(at::equal(a.state(), b.state()));
    // A state of the wrong length names what it expected.
    try {
      b.load_state(at::zeros({3}), 0, "ckpt.h5:comm/compression_rank0");
      FAIL() << "wrong-length state accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ckpt.h5:comm/compression_rank0"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find(codec), std::string::npos);
    }
  }
}

TEST(Compression, TrainingWithCompressedSyncKeepsParametersIdentical) {
  Communicator& c = world();
  for (const char* codec : {"topk", "powersgd", "qsgd"}) {
    torch::manual_seed(7);
    LlamaForCausalLM model(test::tiny());
    GradSyncConfig sc{0.01, true, config(codec, "econtrol")};  // several buckets, overlapped
    GradientSync sync(c, test::named(model), sc);
    ASSERT_NE(sync.compression(), nullptr);
    EXPECT_GT(sync.buckets().size(), 2u);
    AdamW opt(test::named(model), {});
    for (int step = 0; step < 3; ++step) {
      sync.begin_backward(true);
      test::lm_loss(model, test::rank_batch(c.rank() + 10 * step)).backward();
      sync.finish();
      EXPECT_LT(sync.last_step().exchange.wire_bytes, sync.last_step().exchange.dense_wire_bytes);
      opt.step(1e-3);
      opt.zero_grad();
    }
    for (auto& p : model->named_parameters()) EXPECT_TRUE(same_on_all_ranks(p.value())) << codec << " " << p.key();
  }
}

}  // namespace
}  // namespace condense
