// The chunked loss (memory/chunked_cross_entropy.h) against the full-logits loss: values and
// gradients (1e-5), gradient filtering, Gemma 2's logit soft cap, through a model's MemoryPolicy
// (with recompute) and under bf16 autocast.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>

#include "memory/chunked_cross_entropy.h"
#include "tests/memory_fixture.h"

namespace condense {
namespace {

using test::Fixture;
using test::small_config;

TEST(ChunkedLoss, MatchesFullLossAndGradients) {
  torch::manual_seed(3);
  at::Tensor h = (at::randn({300, 32}) * 2).requires_grad_();
  at::Tensor w = at::randn({1000, 32}).requires_grad_();
  at::Tensor t = at::randint(1000, {300}, at::kLong);
  t.narrow(0, 0, 7).fill_(-100);  // ignored positions
  at::Tensor full = at::cross_entropy_loss(at::matmul(h, w.t()), t);
  auto gf = torch::autograd::grad({full}, {h, w});
  at::Tensor chunked = chunked_cross_entropy(h, w, t, {64, 128, 0, -100});
  auto gc = torch::autograd::grad({chunked}, {h, w});
  EXPECT_NEAR(chunked.item<double>(), full.item<double>(), 1e-5);
  EXPECT_LT((gc[0] - gf[0]).abs().max().item<double>(), 1e-5);
  EXPECT_LT((gc[1] - gf[1]).abs().max().item<double>(), 1e-5);
  // Gradient filtering skips only negligible tiles: the error stays below eps * rows.
  at::Tensor filtered = chunked_cross_entropy(h, w, t, {64, 128, 1e-6, -100});
  auto gfl = torch::autograd::grad({filtered}, {h, w});
  EXPECT_LT((gfl[0] - gf[0]).abs().max().item<double>(), 1e-4);
  EXPECT_LT((gfl[1] - gf[1]).abs().max().item<double>(), 1e-4);
  // ... and it skips what is negligible: vocabulary rows 512..639 (one tile column) made
  // unlikely for every token (a constant feature they weigh at -10) leave their weight
  // gradient at exactly 0 when filtered, and tiny but nonzero when not.
  at::Tensor h2 = h.detach().clone(), w2 = w.detach().clone();
  h2.select(1, 0).fill_(5.0);
  w2.narrow(0, 512, 128).select(1, 0).fill_(-10.0);
  at::Tensor t2 = t.clone().masked_fill_((t >= 512) & (t < 640), 3);
  h2.requires_grad_();
  w2.requires_grad_();
  auto g_all = torch::autograd::grad({chunked_cross_entropy(h2, w2, t2, {64, 128, 0, -100})}, {h2, w2});
  auto g_cut = torch::autograd::grad({chunked_cross_entropy(h2, w2, t2, {64, 128, 1e-6, -100})}, {h2, w2});
  EXPECT_GT(g_all[1].narrow(0, 512, 128).abs().max().item<double>(), 0.0);
  EXPECT_EQ(g_cut[1].narrow(0, 512, 128).abs().max().item<double>(), 0.0);
  EXPECT_LT((g_cut[1] - g_all[1]).abs().max().item<double>(), 1e-6);
  EXPECT_LT((g_cut[0] - g_all[0]).abs().max().item<double>(), 1e-6);
}

// Gemma 2's logit soft cap (ChunkedLossOptions::softcap): the loss and gradients of cross-entropy
// over cap * tanh(h w^T / cap), ragged tiles and ignored rows, against autograd through the full
// capped logits; a cap that binds (logits of ~6 against 2.5) changes the loss.
TEST(ChunkedLoss, SoftCappedLogitsMatchTheCappedFullLoss) {
  torch::manual_seed(5);
  at::Tensor h = (at::randn({150, 24}, at::kDouble) * 1.5).requires_grad_();
  at::Tensor w = at::randn({300, 24}, at::kDouble).requires_grad_();
  at::Tensor t = at::randint(300, {150}, at::kLong);
  t.narrow(0, 0, 5).fill_(-100);
  const double cap = 2.5;
  at::Tensor full = at::cross_entropy_loss(at::tanh(at::matmul(h, w.t()) / cap) * cap, t);
  auto gf = torch::autograd::grad({full}, {h, w});
  ChunkedLossOptions o{64, 128, 0, -100, cap};
  at::Tensor chunked = chunked_cross_entropy(h, w, t, o);
  auto gc = torch::autograd::grad({chunked}, {h, w});
  EXPECT_NEAR(chunked.item<double>(), full.item<double>(), 1e-6);
  EXPECT_LT((gc[0] - gf[0]).abs().max().item<double>(), 1e-6);
  EXPECT_LT((gc[1] - gf[1]).abs().max().item<double>(), 1e-6);
  EXPECT_GT(gf[0].abs().max().item<double>(), 1e-3);
  const double uncapped = chunked_cross_entropy(h, w, t, {64, 128, 0, -100}).item<double>();
  EXPECT_GT(std::abs(uncapped - full.item<double>()), 0.5) << "the cap does not bind";
}

TEST(ChunkedLoss, ModelLossEqualsFullLoss) {
  Fixture f(small_config(0.0));
  double full = 0, chunked = 0;
  auto ref = f.grads(MemoryConfig{}, &full);
  MemoryConfig c;
  c.loss = "chunked";
  c.loss_chunk = 100;
  c.loss_vocab_chunk = 48;
  auto g = f.grads(c, &chunked);
  EXPECT_NEAR(chunked, full, 1e-5);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_LT((g[i] - ref[i]).abs().max().item<double>(), 1e-5);
  // A Gemma 2 whose logit cap binds (logits of ~0.2 at this init against 0.1): the chunked tiles are
  // capped as the model's logits are, and with full recomputation through its capped attention.
  LlamaConfig gemma2 = small_config(0.0);
  gemma2.gemma = 2;
  gemma2.attn_logit_softcapping = 0.02;
  gemma2.final_logit_softcapping = 0.1;
  gemma2.sliding_window = 50;
  gemma2.sliding_window_layers = {1, 0, 1, 0};
  Fixture g2(gemma2);
  double g2_full = 0, g2_chunked = 0;
  auto g2_ref = g2.grads(MemoryConfig{}, &g2_full);
  c.recompute = "full";
  auto g2_got = g2.grads(c, &g2_chunked);
  EXPECT_NEAR(g2_chunked, g2_full, 1e-5);
  for (size_t i = 0; i < g2_got.size(); ++i) EXPECT_LT((g2_got[i] - g2_ref[i]).abs().max().item<double>(), 1e-5);
  gemma2.final_logit_softcapping = 0;
  Fixture uncapped(gemma2);
  double u = 0;
  uncapped.grads(MemoryConfig{}, &u);
  EXPECT_GT(std::abs(u - g2_full), 1e-4) << "the logit cap does not bind";
}

// train.precision=bf16 with memory.loss=chunked: the final norm hands the loss a bf16 hidden
// state and the LM head is fp32; the loss's backward runs after the autocast scope (it failed
// there). Against the full-logits path under the same autocast, whose lm_head matmul rounds
// its logits to bf16 as the chunked tiles do.
TEST(ChunkedLoss, Bf16AutocastMatchesTheFullLogitsPath) {
  Fixture f(small_config(0.0));
  double full = 0, chunked = 0;
  auto ref = f.grads(MemoryConfig{}, &full, "bf16");
  MemoryConfig c;
  c.loss = "chunked";
  c.loss_chunk = 100;
  c.loss_vocab_chunk = 48;
  auto g = f.grads(c, &chunked, "bf16");
  EXPECT_NEAR(chunked, full, 1e-4 * full);
  for (size_t i = 0; i < g.size(); ++i)
    EXPECT_LT(((g[i] - ref[i]).norm() / ref[i].norm()).item<double>(), 2e-2) << i;
}

}  // namespace
}  // namespace condense
