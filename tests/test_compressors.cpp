// Tests for compressors/ (calibration, masks, mask pruning, LoRA adapters) and the trainable
// machinery (trainer/trainable.h): calibration statistics against a direct computation of the
// projections' inputs; Wanda's per-row sparsity and score; magnitude's per-matrix count; N:M
// groups; layer-sequential Wanda equals calibrating the partly pruned model; masks kept
// through AdamW steps (weights, gradients and moments); LoRA / MaskLoRA / ScaleLoRA forms,
// gradients that reach only the adapters, merges that keep zeros; every option error.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "compressors/calibration.h"
#include "compressors/lora.h"
#include "compressors/masks.h"
#include "compressors/prune_masked.h"
#include "compressors/recovery_data.h"
#include "core/error.h"
#include "trainer/adamw.h"
#include "trainer/trainable.h"

namespace condense {
namespace {

LlamaConfig tiny() {
  LlamaConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = false;
  return c;
}

std::vector<at::Tensor> windows(int count, int64_t b = 2, int64_t t = 16) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < count; ++i) out.push_back(at::randint(0, 61, {b, t}, at::kLong));
  return out;
}

// Elements of the direct sum_t x_tj^2 of layer 0's q_proj input (the input_layernorm output).
at::Tensor direct_q0_sq_norms(LlamaForCausalLM& m, const std::vector<at::Tensor>& ws) {
  at::NoGradGuard g;
  at::Tensor acc = at::zeros({m->config().hidden_size}, at::kDouble);
  for (const auto& ids : ws) {
    at::Tensor x = m->model->layer_list[0]->input_layernorm(m->embed(ids));
    acc += x.reshape({-1, x.size(-1)}).to(at::kDouble).square().sum(0);
  }
  return acc;
}

// dst's weights := src's (same config).
void copy_weights(LlamaForCausalLM& dst, LlamaForCausalLM& src) {
  at::NoGradGuard g;
  for (auto& p : dst->named_parameters()) p.value().copy_(src->named_parameters()[p.key()]);
}

// A model pruned to 50% by magnitude, and its masks.
WeightMasks half_pruned(LlamaForCausalLM& m) {
  MaskPruneOptions opt;
  opt.sparsity = 0.5;
  return prune_masked(m, opt);
}

std::string layer_weight(int layer, const std::string& proj) {
  bool attn = proj[0] == 'q' || proj[0] == 'k' || proj[0] == 'v' || proj[0] == 'o';
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + proj + ".weight";
}

}  // namespace

TEST(Calibration, InputNormsAndBlockInfluenceMatchDirectComputation) {
  torch::manual_seed(1);
  LlamaForCausalLM m(tiny());
  auto ws = windows(3);
  CalibrationStats st = calibrate(m, ws);
  EXPECT_EQ(st.tokens, 3 * 2 * 16);
  EXPECT_EQ(st.input_sq_norms.size(), 2u * 7u);  // 7 projections per layer
  // Per-batch float32 sums, accumulated in float64.
  EXPECT_TRUE(at::allclose(st.input_sq_norms.at(layer_weight(0, "q_proj")), direct_q0_sq_norms(m, ws),
                           1e-6, 1e-6));
  // q, k and v read the same input.
  EXPECT_TRUE(at::equal(st.input_sq_norms.at(layer_weight(1, "q_proj")),
                        st.input_sq_norms.at(layer_weight(1, "v_proj"))));
  EXPECT_EQ(st.input_sq_norms.at(layer_weight(0, "down_proj")).numel(), 48);
  // Block influence: mean over tokens of 1 - cos(layer input, layer output).
  at::NoGradGuard g;
  double sum = 0;
  for (const auto& ids : ws) {
    std::vector<at::Tensor> hs;
    DecoderInput in{ids};
    in.hidden_states = &hs;
    m->hidden(in);
    ASSERT_EQ(hs.size(), 3u);
    sum += (1 - at::cosine_similarity(hs[1].reshape({-1, 32}), hs[2].reshape({-1, 32}), 1)).sum().item<double>();
  }
  EXPECT_NEAR(st.block_influence[1], sum / st.tokens, 1e-6);
  EXPECT_TRUE(m->is_training());  // calibration restores the mode
  EXPECT_FALSE(m->projection_hook());
}

TEST(PruneMasked, WandaPrunesEachRowByScore) {
  torch::manual_seed(2);
  LlamaForCausalLM m(tiny());
  auto ws = windows(2);
  at::Tensor w0 = m->named_parameters()[layer_weight(0, "q_proj")].clone();
  at::Tensor norms = direct_q0_sq_norms(m, ws).sqrt().to(at::kFloat);
  MaskPruneOptions opt;
  opt.method = "wanda";
  opt.sparsity = 0.4;
  WeightMasks masks = prune_masked(m, opt, ws);
  EXPECT_EQ(masks.masks().size(), 14u);
  at::Tensor mask = *masks.find(layer_weight(0, "q_proj"));
  at::Tensor score = w0.abs() * norms.unsqueeze(0);
  const int64_t pruned_per_row = static_cast<int64_t>(0.4 * 32);  // 12
  for (int64_t r = 0; r < mask.size(0); ++r) {
    at::Tensor keep = mask[r];
    EXPECT_EQ(32 - keep.sum().item<int64_t>(), pruned_per_row) << "row " << r;
    // Every kept score is at least every pruned score of the row.
    double min_kept = score[r].masked_select(keep).min().item<double>();
    double max_pruned = score[r].masked_select(keep.logical_not()).max().item<double>();
    EXPECT_GE(min_kept, max_pruned);
  }
  // The model's weight is pruned in place and equals W * M.
  at::Tensor now = m->named_parameters()[layer_weight(0, "q_proj")];
  EXPECT_TRUE(at::equal(now, w0 * mask));
  EXPECT_EQ(masks.pruned_weights(), [&] {
    int64_t n = 0;
    for (auto& kv : masks.masks()) n += kv.second.size(0) * static_cast<int64_t>(0.4 * kv.second.size(1));
    return n;
  }());
}

TEST(PruneMasked, SequentialWandaScoresLayerOneOnPrunedLayerZero) {
  torch::manual_seed(3);
  LlamaForCausalLM a(tiny()), b(tiny());
  copy_weights(b, a);
  auto ws = windows(2);
  MaskPruneOptions opt;
  opt.method = "wanda";
  opt.sparsity = 0.5;
  WeightMasks seq = prune_masked(a, opt, ws);
  // Reference: prune layer 0 alone, calibrate the result, prune layer 1 with those statistics.
  MaskPruneOptions l0 = opt, l1 = opt;
  l0.targets = {R"(model\.layers\.0\..*_proj\.weight)"};
  l0.sequential = false;
  prune_masked(b, l0, ws);
  CalibrationStats st = calibrate(b, ws);
  for (const char* proj : {"q_proj", "up_proj", "down_proj", "o_proj"}) {
    std::string name = layer_weight(1, proj);
    at::Tensor w = b->named_parameters()[name];
    at::Tensor expect = score_mask(w.abs() * st.input_norms(name).unsqueeze(0), 0.5, true);
    EXPECT_TRUE(at::equal(*seq.find(name), expect)) << name;
  }
  // Scoring layer 1 on the unpruned inputs gives other masks: the test tells the two apart.
  torch::manual_seed(3);
  LlamaForCausalLM fresh(tiny());  // a's original weights (same seed, same draw order)
  opt.sequential = false;
  WeightMasks once = prune_masked(fresh, opt, ws);
  int differing = 0;
  for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    differing += !at::equal(*once.find(layer_weight(1, proj)), *seq.find(layer_weight(1, proj)));
  EXPECT_GT(differing, 0);
  for (const char* proj : {"q_proj", "down_proj"})  // layer 0 sees the same inputs either way
    EXPECT_TRUE(at::equal(*once.find(layer_weight(0, proj)), *seq.find(layer_weight(0, proj))));
}

TEST(PruneMasked, MagnitudeOneThresholdPerMatrix) {
  torch::manual_seed(4);
  LlamaForCausalLM m(tiny());
  at::Tensor w0 = m->named_parameters()[layer_weight(1, "up_proj")].clone();
  MaskPruneOptions opt;
  opt.sparsity = 0.3;
  WeightMasks masks = prune_masked(m, opt);
  at::Tensor mask = *masks.find(layer_weight(1, "up_proj"));
  EXPECT_EQ(mask.numel() - mask.sum().item<int64_t>(), static_cast<int64_t>(0.3 * w0.numel()));
  EXPECT_GE(w0.abs().masked_select(mask).min().item<double>(),
            w0.abs().masked_select(mask.logical_not()).max().item<double>());
  // Rows are not balanced: magnitude ranks the whole matrix.
  at::Tensor per_row = mask.logical_not().sum(1);
  EXPECT_GT(per_row.max().item<int64_t>(), per_row.min().item<int64_t>());
}

TEST(PruneMasked, NmPatternHoldsInEveryGroup) {
  for (auto [n, mm] : {std::pair<int64_t, int64_t>{2, 4}, {4, 8}, {1, 4}}) {
    torch::manual_seed(5);
    LlamaForCausalLM m(tiny());
    at::Tensor w0 = m->named_parameters()[layer_weight(0, "o_proj")].clone();
    MaskPruneOptions opt;
    opt.method = "magnitude";
    opt.n = n;
    opt.m = mm;
    WeightMasks masks = prune_masked(m, opt);
    for (const auto& [name, mask] : masks.masks()) {
      at::Tensor groups = mask.reshape({-1, mm});
      EXPECT_TRUE(at::all(groups.sum(1) == n).item<bool>()) << name << " " << n << ":" << mm;
    }
    at::Tensor mask = *masks.find(layer_weight(0, "o_proj"));
    at::Tensor s = w0.abs().reshape({-1, mm}), k = mask.reshape({-1, mm});
    for (int64_t g = 0; g < s.size(0); ++g) {
      EXPECT_GE(s[g].masked_select(k[g]).min().item<double>(),
                s[g].masked_select(k[g].logical_not()).max().item<double>());
    }
  }
}

TEST(PruneMasked, BadOptionsAreRefusedBeforeAnyChange) {
  torch::manual_seed(6);
  LlamaForCausalLM m(tiny());
  at::Tensor before = m->named_parameters()[layer_weight(0, "q_proj")].clone();
  auto expect_error = [&](MaskPruneOptions o, const std::string& needle) {
    try {
      prune_masked(m, o, windows(1));
      FAIL() << "expected an error containing " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  MaskPruneOptions o;
  o.sparsity = 1.0;
  expect_error(o, "sparsity must be in [0, 1)");
  o.sparsity = -0.1;
  expect_error(o, "sparsity must be in [0, 1)");
  o = {};
  o.n = 4;
  o.m = 4;
  expect_error(o, "N must be in [1, M)");
  o.n = 2;
  o.m = 5;
  expect_error(o, "does not divide the input width");
  o = {};
  o.targets = {"model\\.layers\\.9\\..*"};
  expect_error(o, "matches no weight");
  o = {};
  o.method = "random";
  expect_error(o, "unknown pruning method 'random'");
  o = {};
  o.targets = {"model\\.norm\\.weight"};
  expect_error(o, "is not a matrix");
  EXPECT_TRUE(at::equal(before, m->named_parameters()[layer_weight(0, "q_proj")]));
}

TEST(Masks, SurviveAdamWStepsWithZeroMoments) {
  torch::manual_seed(7);
  LlamaForCausalLM m(tiny());
  WeightMasks masks = half_pruned(m);
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (auto& p : m->named_parameters()) params.emplace_back(p.key(), p.value());
  AdamW adam(params, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  for (int step = 0; step < 3; ++step) {
    at::Tensor ids = at::randint(0, 61, {2, 8}, at::kLong);
    m->forward(ids).square().mean().backward();
    masks.mask_gradients(m);
    adam.step(1e-2);
    adam.zero_grad();
    masks.apply(m);
    masks.mask_state(adam.state());
  }
  auto state = adam.state();
  for (const auto& [name, mask] : masks.masks()) {
    at::Tensor w = m->named_parameters()[name];
    at::Tensor off = mask.logical_not();
    EXPECT_EQ(w.masked_select(off).abs().max().item<double>(), 0.0) << name;
    EXPECT_EQ(state.at(name + "/exp_avg").masked_select(off).abs().max().item<double>(), 0.0);
    EXPECT_EQ(state.at(name + "/exp_avg_sq").masked_select(off).abs().max().item<double>(), 0.0);
    EXPECT_GT(w.masked_select(mask).abs().min().item<double>(), 0.0);  // kept weights train
  }
}

TEST(Lora, FormsGradientsAndMergesKeepZeros) {
  torch::manual_seed(8);
  LlamaForCausalLM m(tiny());
  WeightMasks masks = half_pruned(m);
  const std::string q = layer_weight(0, "q_proj");
  for (const char* kind : {"lora", "masklora", "scalelora"}) {
    LlamaForCausalLM s(tiny());
    copy_weights(s, m);
    for (auto& p : s->parameters()) p.requires_grad_(false);
    auto ad = std::make_shared<LoraAdapters>(s, std::vector<std::string>{q, layer_weight(1, "down_proj")},
                                             LoraSpec{kind, 4, 8.0}, &masks);
    auto params = ad->parameters();
    ASSERT_EQ(params.size(), 4u);
    EXPECT_EQ(params[0].first, "lora.model.layers.0.self_attn.q_proj.A");
    at::Tensor w = s->named_parameters()[q];
    // Starts at W exactly (B = 0).
    EXPECT_TRUE(at::equal(ad->weight(q, w), w)) << kind;
    { at::NoGradGuard g; params[1].second.normal_(); }  // B != 0
    at::Tensor ba = at::matmul(params[1].second, params[0].second).detach();
    at::Tensor eff = ad->weight(q, w).detach();
    at::Tensor mask = masks.find(q)->to(at::kFloat);
    at::Tensor expect = std::string(kind) == "lora"       ? w + ba * 2.0
                        : std::string(kind) == "masklora" ? w + ba * mask * 2.0
                                                          : w * (ba + 1.0);
    EXPECT_TRUE(at::allclose(eff, expect, 1e-6, 1e-6)) << kind;
    // Gradients reach the adapters only.
    s->set_projection_hook(ad);
    s->forward(at::randint(0, 61, {2, 8}, at::kLong)).square().mean().backward();
    EXPECT_TRUE(params[0].second.grad().defined());
    EXPECT_FALSE(w.grad().defined());
    // Merge: the plain model now computes what the adapted one did.
    at::Tensor ids = at::randint(0, 61, {1, 8}, at::kLong);
    at::Tensor adapted = s->forward(ids).detach();
    ad->merge(s);
    s->set_projection_hook(nullptr);
    EXPECT_TRUE(at::allclose(s->forward(ids), adapted, 1e-5, 1e-5)) << kind;
    int64_t zeros_before = (m->named_parameters()[q] == 0).sum().item<int64_t>();
    int64_t zeros_after = (s->named_parameters()[q] == 0).sum().item<int64_t>();
    if (std::string(kind) == "lora") EXPECT_LT(zeros_after, zeros_before);
    else EXPECT_EQ(zeros_after, zeros_before) << kind;  // MaskLoRA / ScaleLoRA keep the zeros
  }
}

TEST(Lora, MaskLoraNeedsMasksAndTargetsMustMatch) {
  torch::manual_seed(9);
  LlamaForCausalLM m(tiny());
  WeightMasks none;
  EXPECT_THROW(LoraAdapters(m, {layer_weight(0, "q_proj")}, LoraSpec{"masklora", 2, 4}, &none), Error);
  EXPECT_THROW(LoraAdapters(m, {layer_weight(0, "q_proj")}, LoraSpec{"dora", 2, 4}, &none), Error);
  EXPECT_THROW(LoraAdapters(m, {layer_weight(0, "q_proj")}, LoraSpec{"lora", 64, 4}, &none), Error);
  RecoveryConfig rc;
  rc.method = "perp";
  EXPECT_THROW(adapter_targets(m, rc, none), Error);  // perp without masks or targets
  rc.method = "lora";
  EXPECT_EQ(adapter_targets(m, rc, none).size(), 14u);
  rc.targets = {"nothing"};
  EXPECT_THROW(adapter_targets(m, rc, none), Error);
}

TEST(Trainable, RegexSelectsAndRefusesUnmatched) {
  torch::manual_seed(10);
  LlamaForCausalLM m(tiny());
  set_trainable(m, {R"(.*norm\.weight)"}, "train.trainable");
  int64_t trained = 0;
  for (auto& p : m->named_parameters()) {
    bool is_norm = p.key().find("norm.weight") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), is_norm) << p.key();
    trained += p.value().requires_grad();
  }
  EXPECT_EQ(trained, 5);  // 2 layers x 2 norms + the final norm
  try {
    set_trainable(m, {"model\\.layers\\.7\\..*"}, "train.trainable");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.trainable: 'model\\.layers\\.7\\..*' matches no parameter"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(set_trainable(m, {"(unclosed"}, "train.trainable"), Error);
  Trainable t;
  t.model = m;
  set_trainable(m, {R"(lm_head\.weight)"}, "k");
  EXPECT_EQ(trained_parameters(t).size(), 1u);
}

TEST(RecoveryData, JsdClosedFormsAndKmeansOnSeparatedClusters) {
  at::Tensor a = at::randn({5, 11}, at::kDouble);
  EXPECT_NEAR(mean_jsd(a, a).item<double>(), 0.0, 1e-12);
  // Two distributions on disjoint supports: JSD = ln 2.
  at::Tensor p = at::full({1, 4}, -1e9, at::kDouble), q = p.clone();
  p.index_put_({0, 0}, 0.0);
  q.index_put_({0, 3}, 0.0);
  EXPECT_NEAR(mean_jsd(p, q).item<double>(), std::log(2.0), 1e-9);
  // JSD is symmetric and bounded by ln 2.
  at::Tensor b = at::randn({5, 11}, at::kDouble);
  EXPECT_NEAR(mean_jsd(a, b).item<double>(), mean_jsd(b, a).item<double>(), 1e-12);
  EXPECT_LE(mean_jsd(a, b * 10).item<double>(), std::log(2.0));
  // Three well separated blobs come back as three clusters, deterministically.
  at::Tensor centers = at::tensor({0.0, 0.0, 10.0, 0.0, 0.0, 10.0}, at::kDouble).view({3, 2});
  at::Tensor x = centers.repeat_interleave(20, 0) + 0.1 * at::randn({60, 2}, at::kDouble);
  std::vector<int64_t> c = kmeans(x, 3, 42);
  for (int blob = 0; blob < 3; ++blob)
    for (int i = 1; i < 20; ++i) EXPECT_EQ(c[blob * 20 + i], c[blob * 20]);
  EXPECT_NE(c[0], c[20]);
  EXPECT_NE(c[20], c[40]);
  EXPECT_EQ(kmeans(x, 3, 42), c);
}

TEST(RecoveryData, BudgetFollowsDegradationAndCapsAtClusterSize) {
  EXPECT_EQ(allocate_budget({1, 1, 2}, {10, 10, 10}, 8), (std::vector<int64_t>{2, 2, 4}));
  EXPECT_EQ(allocate_budget({3, 1}, {2, 10}, 8), (std::vector<int64_t>{2, 6}));  // capped, moved
  EXPECT_EQ(allocate_budget({1, 1, 1}, {1, 1, 1}, 5), (std::vector<int64_t>{1, 1, 1}));
  std::vector<int64_t> r = allocate_budget({0.5, 0.3, 0.2}, {100, 100, 100}, 7);
  EXPECT_EQ(r[0] + r[1] + r[2], 7);
  EXPECT_GE(r[0], r[1]);
}

TEST(RecoveryData, PaserPicksTheMostDegradedWindowsWithinBudget) {
  torch::manual_seed(11);
  LlamaForCausalLM teacher(tiny()), pruned(tiny());
  copy_weights(pruned, teacher);
  MaskPruneOptions o;
  o.sparsity = 0.6;
  prune_masked(pruned, o);
  at::Tensor ids = at::randint(0, 61, {16 * 40 + 1}, at::kInt);
  DataSelectionOptions opt;
  opt.method = "paser";
  opt.budget = 0.25;
  opt.candidates = 0;
  opt.clusters = 1;  // one cluster: the budget goes to the highest divergences overall
  DataSelection sel = select_recovery_windows(teacher, pruned, ids, 16, opt);
  ASSERT_EQ(sel.candidates.size(), 40u);
  ASSERT_EQ(sel.windows.size(), 10u);
  std::vector<double> sorted = sel.divergence;
  std::sort(sorted.rbegin(), sorted.rend());
  for (int64_t w : sel.windows) EXPECT_GE(sel.divergence[w], sorted[9]);  // candidates are 0..39
  // Direct JSD of one window.
  at::NoGradGuard g;
  at::Tensor x = ids.narrow(0, 5 * 16, 16).to(at::kLong).unsqueeze(0);
  teacher->eval();
  pruned->eval();
  EXPECT_NEAR(sel.divergence[5], mean_jsd(teacher->forward(x)[0], pruned->forward(x)[0]).item<double>(), 1e-9);
  opt.method = "random";
  DataSelection rnd = select_recovery_windows(teacher, pruned, ids, 16, opt);
  EXPECT_EQ(rnd.windows.size(), 10u);
  EXPECT_TRUE(rnd.divergence.empty());
  opt.clusters = 4;
  opt.method = "paser";
  EXPECT_EQ(select_recovery_windows(teacher, pruned, ids, 16, opt).windows.size(), 10u);
  opt.budget = 0;
  EXPECT_THROW(select_recovery_windows(teacher, pruned, ids, 16, opt), Error);
}

}  // namespace condense
