// Multi-rank tests of comm/, run under `mpirun -np 2` and `mpirun -np 4` (see
// tests/CMakeLists.txt): collective closed forms, gradient sync equals the mean of the ranks'
// gradients, parameters stay bitwise identical across ranks after optimizer steps, gradient
// accumulation skips the exchange until the last micro-step, and buckets are exchanged while
// backward is still running; Open MPI TCP defaults are set before MPI_Init.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "comm/communicator.h"
#include "comm/grad_sync.h"
#include "comm/mpi_communicator.h"
#include "core/error.h"
#include <ATen/CPUGeneratorImpl.h>
#include "model/llama.h"
#include "trainer/adamw.h"
#include "tests/mpi/mpi_fixtures.h"

namespace condense {
namespace {

using test::lm_loss;
using test::named;
using test::rank_batch;
using test::tiny;
using test::world;

// dst takes src's weights (no gradients).
void copy_weights(LlamaForCausalLM& dst, LlamaForCausalLM& src) {
  torch::NoGradGuard ng;
  auto from = src->named_parameters();
  for (auto& p : dst->named_parameters()) p.value().copy_(from[p.key()]);
}

// True when t is a view into one of sync's bucket buffers.
bool in_a_bucket(const GradientSync& sync, const at::Tensor& t) {
  for (const auto& b : sync.buckets())
    if (t.is_alias_of(b.flat)) return true;
  return false;
}

}  // namespace

TEST(Collectives, ClosedForms) {
  Communicator& c = world();
  int n = c.size(), r = c.rank();
  ASSERT_GE(n, 2);
  at::Tensor t = at::full({5}, double(r));
  c.all_reduce_sum(t);
  EXPECT_TRUE(at::equal(t, at::full({5}, n * (n - 1) / 2.0)));

  at::Tensor mine = at::arange(3, at::kLong) + 10 * r, all = at::empty({3 * n}, at::kLong);
  c.all_gather(mine, all);
  for (int k = 0; k < n; ++k)
    EXPECT_TRUE(at::equal(all.narrow(0, 3 * k, 3), at::arange(3, at::kLong) + 10 * k));

  auto parts = c.all_gather_v(at::full({r + 1}, float(r)));  // rank k sends k+1 copies of k
  ASSERT_EQ(parts.size(), size_t(n));
  for (int k = 0; k < n; ++k) EXPECT_TRUE(at::equal(parts[k], at::full({k + 1}, float(k))));

  auto to_last = c.gather_v(at::full({r + 1}, float(r)), n - 1);  // only the root receives
  ASSERT_EQ(to_last.size(), r == n - 1 ? size_t(n) : 0u);
  for (size_t k = 0; k < to_last.size(); ++k) EXPECT_TRUE(at::equal(to_last[k], at::full({int64_t(k) + 1}, float(k))));

  at::Tensor b = at::full({4}, float(r));
  c.broadcast(b, n - 1);
  EXPECT_TRUE(at::equal(b, at::full({4}, float(n - 1))));

  at::Tensor in = at::arange(2 * n, at::kFloat), out = at::empty({2}, at::kFloat);
  c.reduce_scatter_sum(in, out);  // every rank sends 0..2n-1; rank r gets n * [2r, 2r+1]
  EXPECT_TRUE(at::equal(out, at::tensor({float(n * 2 * r), float(n * (2 * r + 1))})));

  // all_to_all transposes blocks: rank r sends 100 r + d to rank d (two bytes each), so rank r
  // receives 100 s + r from every rank s.
  at::Tensor a2a_in = at::empty({2 * n}, at::kInt), a2a_out = at::empty({2 * n}, at::kInt);
  for (int d = 0; d < n; ++d) a2a_in.narrow(0, 2 * d, 2).fill_(100 * r + d);
  c.all_to_all(a2a_in, a2a_out);
  for (int s = 0; s < n; ++s)
    EXPECT_TRUE(at::equal(a2a_out.narrow(0, 2 * s, 2), at::full({2}, 100 * s + r, at::kInt))) << s;

  // Large buffers take the ring (MpiCommunicator::kRingMinBytes): an odd length, so chunks differ.
  const int64_t big = 100003;
  at::Tensor ring = at::arange(big, at::kFloat) + r;
  c.all_reduce_sum(ring);
  EXPECT_TRUE(at::equal(ring, at::arange(big, at::kFloat) * n + n * (n - 1) / 2.0));
  at::Tensor ring16 = (at::arange(2 * big, at::kFloat).remainder(100) + r).to(at::kHalf);
  c.all_reduce_sum(ring16);
  EXPECT_TRUE(at::equal(ring16, (at::arange(2 * big, at::kFloat).remainder(100) * n + n * (n - 1) / 2.0).to(at::kHalf)));
  at::Tensor noise = at::randn({big}, at::make_generator<at::CPUGeneratorImpl>(r), at::kFloat);
  c.all_reduce_sum(noise);  // rounding differs by order, but every rank gets the same bits
  EXPECT_TRUE(test::same_on_all_ranks(noise));

  // 16-bit floats (MPI has no such types: user-defined sum operations), exact for small integers.
  for (at::ScalarType type : {at::kHalf, at::kBFloat16}) {
    at::Tensor h = (at::arange(6, at::kFloat) + r).to(type);
    c.all_reduce_sum(h);
    EXPECT_TRUE(at::equal(h, (at::arange(6, at::kFloat) * n + n * (n - 1) / 2.0).to(type)))
        << c10::toString(type);
  }
  c.barrier();
}

TEST(MpiRuntime, OpenMpiTcpDefaultsAreInPlace) {
  world();  // MPI is initialized by now
  // comm/mpi_runtime.cpp sets these before MPI_Init unless the launch set them: without them,
  // two-way transfers over TCP run at half the link (bench/RESULTS.md). The test launch does
  // not set them, so condense's values must be there.
  const char* flags = std::getenv("OMPI_MCA_btl_tcp_flags");
  const char* eager = std::getenv("OMPI_MCA_btl_tcp_eager_limit");
  ASSERT_NE(flags, nullptr);
  ASSERT_NE(eager, nullptr);
  EXPECT_EQ(std::string(flags).find("put"), std::string::npos) << flags;
  EXPECT_STREQ(eager, "1048576");
}

TEST(Collectives, SameTextCheck) {
  Communicator& c = world();
  EXPECT_NO_THROW(check_same_on_all_ranks(c, "same recipe", "recipe"));
  std::string text = c.rank() == c.size() - 1 ? "other" : "same";
  try {
    check_same_on_all_ranks(c, text, "the resolved recipe");
    FAIL() << "mismatch not detected on rank " << c.rank();
  } catch (const Error& e) {
    // The exact phrase: a bare digit would also match inside the hashes in the message.
    const std::string expected = "rank(s) " + std::to_string(c.size() - 1) + " disagree with rank 0";
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    // The differing rank names its first differing line against rank 0's text.
    if (c.rank() == c.size() - 1)
      EXPECT_NE(std::string(e.what()).find("(line): other here, same on rank 0"), std::string::npos)
          << e.what();
  }
}

TEST(GradientSync, GradsAreTheMeanOverRanksAndParamsStayIdentical) {
  Communicator& c = world();
  torch::manual_seed(7);  // same init everywhere
  LlamaForCausalLM model(tiny());
  LlamaForCausalLM reference(tiny());  // local gradients, averaged by hand
  copy_weights(reference, model);
  GradientSync sync(c, named(model), GradSyncConfig{0.01, true});  // several buckets
  EXPECT_GT(sync.buckets().size(), 2u);
  AdamW opt(named(model), {});
  for (int step = 0; step < 4; ++step) {
    at::Tensor ids = rank_batch(c.rank() + 17 * step);
    sync.begin_backward(true);
    lm_loss(model, ids).backward();
    sync.finish();
    lm_loss(reference, ids).backward();
    auto ref = reference->named_parameters();
    for (auto& p : model->named_parameters()) {
      at::Tensor g = ref[p.key()].grad().clone();
      c.all_reduce_sum(g);
      g.div_(c.size());
      EXPECT_TRUE(at::allclose(p.value().grad(), g, 1e-6, 1e-7)) << p.key();
      // Held once: every grad is a view into its bucket (no second copy of the gradients).
      EXPECT_TRUE(in_a_bucket(sync, p.value().grad())) << p.key();
    }
    opt.step(1e-2);
    opt.zero_grad();
    for (auto& p : reference->named_parameters()) p.value().mutable_grad() = at::Tensor();
    copy_weights(reference, model);  // keep the reference on the same weights
    // Bitwise identical weights on every rank after the optimizer step.
    for (auto& p : model->named_parameters()) {
      at::Tensor root = p.value().detach().clone();
      c.broadcast(root, 0);
      EXPECT_TRUE(at::equal(root, p.value().detach())) << p.key() << " differs on rank " << c.rank();
    }
  }
}

TEST(GradientSync, AccumulationExchangesOnlyOnTheLastMicroStep) {
  Communicator& c = world();
  torch::manual_seed(3);
  LlamaForCausalLM model(tiny());
  GradientSync sync(c, named(model), GradSyncConfig{25.0, true});
  at::Tensor a = rank_batch(c.rank()), b = rank_batch(c.rank() + 50);
  sync.begin_backward(false);
  lm_loss(model, a).backward();
  at::Tensor local = model->model->norm->weight.grad().clone();  // not exchanged yet
  sync.begin_backward(true);
  lm_loss(model, b).backward();
  sync.finish();
  EXPECT_GT(sync.last_step().exchange.payload_bytes, 0);
  // Reference: (grad_a + grad_b) of every rank, averaged.
  LlamaForCausalLM fresh(tiny());
  copy_weights(fresh, model);
  (lm_loss(fresh, a) + lm_loss(fresh, b)).backward();
  at::Tensor g = fresh->model->norm->weight.grad().clone();
  c.all_reduce_sum(g);
  g.div_(c.size());
  EXPECT_TRUE(at::allclose(model->model->norm->weight.grad(), g, 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(local, g, 1e-5, 1e-6));
  // After the first micro-step each rank holds its own gradient of a, not the mean over ranks
  // (an exchange there would leave the final mean above unchanged).
  LlamaForCausalLM only_a(tiny());
  copy_weights(only_a, model);
  lm_loss(only_a, a).backward();
  at::Tensor own = only_a->model->norm->weight.grad().clone(), mean_a = own.clone();
  c.all_reduce_sum(mean_a);
  mean_a.div_(c.size());
  EXPECT_TRUE(at::allclose(local, own, 1e-6, 1e-7));
  EXPECT_FALSE(at::allclose(local, mean_a, 1e-5, 1e-6));
}

TEST(GradientSync, AGradReplacedDuringBackwardIsStillExchanged) {
  // A grad that is not its bucket view when its hook fires (here replaced by the caller between
  // begin_backward and backward) is copied into the bucket, re-pointed and exchanged.
  Communicator& c = world();
  torch::manual_seed(5);
  LlamaForCausalLM model(tiny());
  GradientSync sync(c, named(model), GradSyncConfig{25.0, true});
  at::Tensor ids = rank_batch(c.rank() + 3);
  sync.begin_backward(true);
  at::Tensor& w = model->model->norm->weight;
  w.mutable_grad() = at::full_like(w, 0.5);  // replaces the bound view; autograd adds to it
  lm_loss(model, ids).backward();
  sync.finish();
  LlamaForCausalLM fresh(tiny());
  copy_weights(fresh, model);
  lm_loss(fresh, ids).backward();
  at::Tensor g = fresh->model->norm->weight.grad() + 0.5;
  c.all_reduce_sum(g);
  g.div_(c.size());
  EXPECT_TRUE(at::allclose(w.grad(), g, 1e-5, 1e-6));
  EXPECT_TRUE(in_a_bucket(sync, w.grad()));
}

TEST(GradientSync, FirstBucketIsExchangedBeforeBackwardEnds) {
  Communicator& c = world();
  torch::manual_seed(11);
  LlamaConfig cfg = tiny();
  cfg.num_hidden_layers = 6;
  cfg.hidden_size = 128;
  cfg.intermediate_size = 384;
  LlamaForCausalLM model(cfg);
  GradientSync sync(c, named(model), GradSyncConfig{0.25, true});
  ASSERT_GT(sync.buckets().size(), 3u);
  at::Tensor ids = rank_batch(c.rank(), 8, 32);
  sync.begin_backward(true);
  lm_loss(model, ids).backward();
  auto backward_end = GradientSync::Clock::now();
  sync.finish();
  EXPECT_LT(sync.last_step().first_exchange_start, backward_end)
      << "no bucket was exchanged while backward ran";
}

}  // namespace condense
