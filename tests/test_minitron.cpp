// Tests for Minitron structured pruning (compressors/prune_minitron.h) on tiny random models,
// with calibration statistics written by hand so that the importance order is known: pruning
// MLP neurons or query heads whose outputs are zero leaves the logits unchanged; dropping layers
// equals running the original with those layers skipped (and renumbers the rest); hidden
// pruning keeps exactly the sliced values of every tensor; GQA keeps the top heads of every
// group; every target error (from the up-front check and the planner); parameter counts; and
// a plan from a real calibration pass.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <functional>
#include <initializer_list>
#include <regex>
#include <set>

#include "compressors/calibration.h"
#include "compressors/prune_minitron.h"
#include "core/error.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t layers = 3, int64_t heads = 4, int64_t kv = 2, bool tied = false) {
  LlamaConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  return c;
}

std::string w(int64_t layer, const std::string& module) {
  return "model.layers." + std::to_string(layer) + "." + module + ".weight";
}

// Positive, distinct statistics for every projection and layer (uniform in [1, 2)).
CalibrationStats random_stats(const LlamaConfig& c) {
  CalibrationStats s;
  const int64_t q = c.num_attention_heads * c.head_size();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"})
      s.input_sq_norms[w(i, m)] = at::rand({c.hidden_size}, at::kDouble) + 1;
    s.input_sq_norms[w(i, "self_attn.o_proj")] = at::rand({q}, at::kDouble) + 1;
    s.input_sq_norms[w(i, "mlp.down_proj")] = at::rand({c.intermediate_size}, at::kDouble) + 1;
    s.block_influence.push_back(0.1 + 0.01 * static_cast<double>(i));
  }
  s.tokens = 100;
  return s;
}

at::Tensor logits(LlamaForCausalLM& m, const at::Tensor& ids) {
  at::NoGradGuard g;
  m->eval();
  return m->forward(ids);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

at::Tensor ids() {
  at::manual_seed(7);
  return at::randint(0, 61, {2, 12}, at::kLong);
}

int64_t count_parameters(LlamaForCausalLM& m) {
  int64_t n = 0;
  for (const auto& p : m->named_parameters()) n += p.value().numel();
  return n;
}

// Runs fn, expecting a condense::Error whose message contains every needle.
void expect_error(const std::function<void()>& fn, std::initializer_list<const char*> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing " << *needles.begin();
  } catch (const Error& e) {
    for (const char* n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

std::vector<int64_t> range(int64_t n, const std::set<int64_t>& without = {}) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i)
    if (!without.count(i)) v.push_back(i);
  return v;
}

}  // namespace

TEST(Minitron, PruningNeuronsWithZeroOutputsKeepsLogits) {
  torch::manual_seed(1);
  LlamaConfig c = tiny();
  LlamaForCausalLM m(c);
  CalibrationStats st = random_stats(c);
  // Different neurons per layer: their down_proj columns are zero and their importance lowest.
  std::vector<std::set<int64_t>> zero = {{1, 5, 7, 40}, {0, 2, 3, 47}, {10, 11, 12, 13}};
  for (int64_t i = 0; i < 3; ++i) {
    at::NoGradGuard g;
    for (int64_t n : zero[i]) {
      m->model->layer_list[i]->mlp->down_proj->weight.select(1, n).zero_();
      st.input_sq_norms[w(i, "mlp.down_proj")][n] = 0.0;
    }
  }
  MinitronTarget t;
  t.intermediate_size = 44;
  MinitronPlan plan = plan_minitron(c, st, t);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(plan.neurons[i], range(48, zero[i])) << "layer " << i;
  LlamaForCausalLM p = apply_minitron(m, plan);
  EXPECT_EQ(p->config().intermediate_size, 44);
  EXPECT_EQ(p->model->layer_list[0]->mlp->up_proj->weight.size(0), 44);
  EXPECT_LE(max_diff(logits(p, ids()), logits(m, ids())), 1e-6);
}

// Qwen2's q/k/v biases (qkv_bias) included: a kept head keeps its own q bias rows (a wrong slice
// changes that head's output), the KV heads their whole biases.
TEST(Minitron, PruningHeadsWithZeroOutputsKeepsLogits) {
  for (int arch : {0, 2, 3}) {  // Llama, Qwen2 (q/k/v biases), Qwen3 (q/k norms)
  SCOPED_TRACE("arch " + std::to_string(arch));
  const bool qkv_bias = arch == 2;
  torch::manual_seed(2);
  LlamaConfig c = tiny();  // 4 heads of 8, 2 KV groups of 2
  c.qkv_bias = qkv_bias;
  c.qk_norm = arch == 3;
  LlamaForCausalLM m(c);
  {
    at::NoGradGuard g;
    for (auto& p : m->named_parameters()) {
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0.0, 0.5);
      if (p.key().find("_norm.weight") != std::string::npos) p.value().normal_(1.0, 0.5);
    }
  }
  CalibrationStats st = random_stats(c);
  std::vector<std::vector<int64_t>> removed = {{1, 2}, {0, 3}, {1, 3}};  // one per group
  for (int64_t i = 0; i < 3; ++i) {
    at::NoGradGuard g;
    for (int64_t h : removed[i]) {
      m->model->layer_list[i]->self_attn->o_proj->weight.narrow(1, h * 8, 8).zero_();
      st.input_sq_norms[w(i, "self_attn.o_proj")].narrow(0, h * 8, 8).zero_();
    }
  }
  MinitronTarget t;
  t.num_attention_heads = 2;
  MinitronPlan plan = plan_minitron(c, st, t);
  EXPECT_EQ(plan.heads[0], (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(plan.heads[1], (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(plan.heads[2], (std::vector<int64_t>{0, 2}));
  LlamaForCausalLM p = apply_minitron(m, plan);
  EXPECT_EQ(p->config().num_attention_heads, 2);
  EXPECT_EQ(p->config().head_dim, 8);
  // KV heads stay whole; q loses rows, o loses input columns.
  auto& a = p->model->layer_list[1]->self_attn;
  EXPECT_EQ(a->k_proj->weight.sizes(), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(a->q_proj->weight.sizes(), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(a->o_proj->weight.sizes(), (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(a->q_proj->bias.defined(), qkv_bias);
  if (arch == 3)
    EXPECT_TRUE(at::equal(a->k_norm->weight, m->model->layer_list[1]->self_attn->k_norm->weight));
  EXPECT_LE(max_diff(logits(p, ids()), logits(m, ids())), 1e-6);
  }
}

TEST(Minitron, DroppingLayersEqualsSkippingThemAndRenumbers) {
  torch::manual_seed(3);
  LlamaConfig c = tiny(4);
  LlamaForCausalLM m(c);
  CalibrationStats st = random_stats(c);
  MinitronTarget t;
  t.drop_layers = {2, 1};
  MinitronPlan plan = plan_minitron(c, st, t);
  EXPECT_EQ(plan.layers, (std::vector<int64_t>{0, 3}));
  LlamaForCausalLM p = apply_minitron(m, plan);
  // The original with layers 1 and 2 skipped, run layer by layer.
  at::Tensor x = ids(), skipped;
  {
    at::NoGradGuard g;
    m->eval();
    at::Tensor h = m->forward_layers(m->forward_layers(m->embed(x), 0, 1), 3, 4);
    skipped = m->logits(m->model->norm(h));
  }
  EXPECT_LE(max_diff(logits(p, x), skipped), 1e-6);
  // Names are contiguous from 0, and new layer 1 is old layer 3.
  std::set<int64_t> seen;
  static const std::regex re(R"(model\.layers\.([0-9]+)\..*)");
  auto old_params = m->named_parameters();
  for (const auto& q : p->named_parameters()) {
    std::smatch mt;
    if (!std::regex_match(q.key(), mt, re)) continue;
    int64_t j = std::stoll(mt[1]);
    seen.insert(j);
    std::string old = std::regex_replace(q.key(), std::regex(R"(layers\.[0-9]+\.)"),
                                         "layers." + std::to_string(plan.layers[j]) + ".");
    EXPECT_TRUE(at::equal(q.value(), old_params[old])) << q.key();
  }
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1}));

  // An identity layer (zero o_proj and down_proj) dropped: the full forward is unchanged.
  {
    at::NoGradGuard g;
    m->model->layer_list[1]->self_attn->o_proj->weight.zero_();
    m->model->layer_list[1]->mlp->down_proj->weight.zero_();
  }
  t.drop_layers = {1};
  LlamaForCausalLM q = apply_minitron(m, plan_minitron(c, st, t));
  EXPECT_EQ(q->config().num_hidden_layers, 3);
  EXPECT_LE(max_diff(logits(q, x), logits(m, x)), 1e-6);
}

TEST(Minitron, DepthByBlockInfluenceDropsTheLowestTiesKeepLowerIndex) {
  LlamaConfig c = tiny(4);
  CalibrationStats st = random_stats(c);
  st.block_influence = {0.5, 0.1, 0.3, 0.2};
  MinitronTarget t;
  t.num_hidden_layers = 2;
  EXPECT_EQ(plan_minitron(c, st, t).layers, (std::vector<int64_t>{0, 2}));
  st.block_influence = {0.2, 0.2, 0.2, 0.2};
  EXPECT_EQ(plan_minitron(c, st, t).layers, (std::vector<int64_t>{0, 1}));
}

// SmolLM3's NoPE layers: every kept layer keeps its own RoPE flag, whichever rule chose it (the
// plan's config is set after block influence picks the layers), and the pruned model is the
// original with the dropped layers skipped; dropping the NoPE layers leaves a plain Llama.
TEST(Minitron, DepthPruningKeepsEachLayersRopeFlag) {
  torch::manual_seed(5);
  LlamaConfig c = tiny(4);
  c.no_rope_layers = {1, 0, 1, 0};
  c.finalize();
  LlamaForCausalLM m(c);
  CalibrationStats st = random_stats(c);
  st.block_influence = {0.1, 0.5, 0.3, 0.2};  // keeps 1 and 2: the first layers' flags would be {1, 0}
  MinitronTarget t;
  t.num_hidden_layers = 2;
  MinitronPlan plan = plan_minitron(c, st, t);
  EXPECT_EQ(plan.layers, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(plan.config.no_rope_layers, (std::vector<int64_t>{0, 1}));
  LlamaForCausalLM p = apply_minitron(m, plan);
  at::Tensor x = ids(), skipped;
  {
    at::NoGradGuard g;
    m->eval();
    skipped = m->logits(m->model->norm(m->forward_layers(m->embed(x), 1, 3)));
  }
  EXPECT_LE(max_diff(logits(p, x), skipped), 1e-6);
  t = MinitronTarget();
  t.drop_layers = {1, 3};
  EXPECT_TRUE(plan_minitron(c, st, t).config.no_rope_layers.empty());
  // Sliding windows likewise, and the window itself stays (it was once lost when the first
  // layers, kept provisionally before calibration chose, had none windowed). The first two
  // layers alone (RoPE in both, a window on one) would have no Hugging Face form; the chosen
  // ones, 1 and 2, are a SmolLM3 windowing both.
  LlamaConfig w = tiny(4);
  w.no_rope_layers = {1, 1, 0, 1};
  w.sliding_window = 8;
  w.sliding_window_layers = {0, 1, 1, 0};
  w.finalize();
  t = MinitronTarget();
  t.num_hidden_layers = 2;
  EXPECT_NO_THROW(check_minitron_target(w, t));
  plan = plan_minitron(w, st, t);
  EXPECT_EQ(plan.layers, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(plan.config.sliding_window, 8);
  EXPECT_EQ(plan.config.window(0), 8);
  EXPECT_EQ(plan.config.window(1), 8);
  EXPECT_EQ(plan.config.no_rope_layers, (std::vector<int64_t>{1, 0}));
  // Layers 0 and 1 (both RoPE, one windowed) have none: refused after calibration, naming them.
  st.block_influence = {0.5, 0.4, 0.1, 0.2};
  try {
    plan_minitron(w, st, t);
    ADD_FAILURE() << "layers 0 and 1 kept";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keeps (0,1)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("drop_layers"), std::string::npos) << e.what();
  }
}

// With Qwen2's q/k/v biases (random, so that a wrong slice shows): q's follow the kept heads.
// Qwen3's q/k norms (one [head_dim] weight each) stay whole: checked in the heads test.
TEST(Minitron, HiddenPruningKeepsExactlyTheSlicedValues) {
  torch::manual_seed(4);
  LlamaConfig c = tiny();
  c.qkv_bias = true;
  LlamaForCausalLM m(c);
  {
    at::NoGradGuard g;
    for (auto& p : m->named_parameters())
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0.0, 0.5);
  }
  CalibrationStats st = random_stats(c);
  MinitronTarget t;
  t.hidden_size = 24;
  t.intermediate_size = 40;
  t.num_attention_heads = 2;
  t.drop_layers = {1};
  MinitronPlan plan = plan_minitron(c, st, t);
  // Channel importance computed here: sum over kept layers of sqrt(q input) + sqrt(gate input).
  at::Tensor score = at::zeros({32}, at::kDouble);
  for (int64_t i : {0, 2})
    score += st.input_sq_norms[w(i, "self_attn.q_proj")].sqrt() + st.input_sq_norms[w(i, "mlp.gate_proj")].sqrt();
  at::Tensor top = std::get<0>(at::sort(std::get<1>(at::topk(score, 24))));
  ASSERT_EQ(plan.channels, std::vector<int64_t>(top.data_ptr<int64_t>(), top.data_ptr<int64_t>() + 24));
  EXPECT_EQ(plan.config.hidden_size, 24);
  EXPECT_EQ(plan.config.head_dim, 8);  // explicit: 2 heads x 8 != 24
  EXPECT_EQ(to_hf_json(plan.config)["head_dim"], 8);

  std::map<std::string, at::Tensor> before;
  for (const auto& q : m->named_parameters()) before[q.key()] = q.value().clone();
  LlamaForCausalLM p = apply_minitron(m, plan);
  at::Tensor ch = at::tensor(plan.channels, at::kLong);
  auto qrows = [&](int64_t j) {
    std::vector<int64_t> r;
    for (int64_t h : plan.heads[j])
      for (int64_t d = 0; d < 8; ++d) r.push_back(h * 8 + d);
    return at::tensor(r, at::kLong);
  };
  size_t checked = 0;
  for (const auto& q : p->named_parameters()) {
    const std::string& name = q.key();
    std::smatch mt;
    at::Tensor want;
    if (std::regex_match(name, mt, std::regex(R"(model\.layers\.([0-9]+)\.(.*))"))) {
      int64_t j = std::stoll(mt[1]);
      std::string part = mt[2];
      const bool bias = part.size() > 5 && part.substr(part.size() - 5) == ".bias";
      at::Tensor o = bias ? before.at("model.layers." + std::to_string(plan.layers[j]) + "." + part)
                          : before.at(w(plan.layers[j], part.substr(0, part.size() - 7)));
      at::Tensor nr = at::tensor(plan.neurons[j], at::kLong);
      if (part == "self_attn.q_proj.bias") want = o.index_select(0, qrows(j));
      else if (bias) want = o;  // k, v: every KV head stays
      else if (part.find("layernorm") != std::string::npos) want = o.index_select(0, ch);
      else if (part == "self_attn.q_proj.weight") want = o.index_select(0, qrows(j)).index_select(1, ch);
      else if (part == "self_attn.o_proj.weight") want = o.index_select(0, ch).index_select(1, qrows(j));
      else if (part == "self_attn.k_proj.weight" || part == "self_attn.v_proj.weight") want = o.index_select(1, ch);
      else if (part == "mlp.down_proj.weight") want = o.index_select(0, ch).index_select(1, nr);
      else want = o.index_select(0, nr).index_select(1, ch);  // gate, up
    } else if (name == "model.norm.weight") {
      want = before.at(name).index_select(0, ch);
    } else {  // embed_tokens, lm_head: [vocab, hidden]
      want = before.at(name).index_select(1, ch);
    }
    EXPECT_TRUE(at::equal(q.value(), want)) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 3u + 2u * 12u);
  for (const auto& q : m->named_parameters()) EXPECT_TRUE(at::equal(q.value(), before.at(q.key()))) << q.key();
  EXPECT_EQ(logits(p, ids()).sizes(), (std::vector<int64_t>{2, 12, 61}));
  EXPECT_NE(plan.describe().find("hidden_size 32 -> 24"), std::string::npos) << plan.describe();
  EXPECT_NE(plan.describe().find("dropped 1"), std::string::npos) << plan.describe();

  // Equal importances everywhere: the lower channels stay.
  for (auto& kv : st.input_sq_norms) kv.second.fill_(1.0);
  EXPECT_EQ(plan_minitron(c, st, t).channels, range(24));
}

TEST(Minitron, GqaKeepsTheTopHeadsOfEveryGroup) {
  torch::manual_seed(5);
  LlamaConfig c = tiny(1, 8, 2);  // 8 heads of 4, groups {0..3}, {4..7}
  LlamaForCausalLM m(c);
  CalibrationStats st = random_stats(c);
  // Group 0 outranks group 1 entirely, so a global ranking would keep heads 0-3.
  const double head_sq[8] = {100, 81, 64, 49, 1, 9, 9, 9};
  at::Tensor o = st.input_sq_norms[w(0, "self_attn.o_proj")];
  for (int64_t h = 0; h < 8; ++h) o.narrow(0, h * 4, 4).fill_(head_sq[h] / 4);
  MinitronTarget t;
  t.num_attention_heads = 4;
  MinitronPlan plan = plan_minitron(c, st, t);
  EXPECT_EQ(plan.heads[0], (std::vector<int64_t>{0, 1, 5, 6}));  // 5, 6, 7 tie: lower kept
  LlamaForCausalLM p = apply_minitron(m, plan);
  // New head j must still read KV head j / 2: equal to the original with the removed heads'
  // o_proj columns zeroed.
  {
    at::NoGradGuard g;
    for (int64_t h : {2, 3, 4, 7}) m->model->layer_list[0]->self_attn->o_proj->weight.narrow(1, h * 4, 4).zero_();
  }
  EXPECT_LE(max_diff(logits(p, ids()), logits(m, ids())), 1e-6);
}

TEST(Minitron, TargetErrorsNameKeyValueAndRange) {
  LlamaConfig c = tiny();
  CalibrationStats st = random_stats(c);
  // Both the up-front check (before calibration) and the planner refuse the target.
  auto with = [&](const std::function<void(MinitronTarget&)>& set,
                  std::initializer_list<const char*> needles) {
    MinitronTarget t;
    set(t);
    expect_error([&] { check_minitron_target(c, t); }, needles);
    expect_error([&] { plan_minitron(c, st, t); }, needles);
  };
  with([](auto& t) { t.hidden_size = 33; }, {"hidden_size=33", "1..32"});
  with([](auto& t) { t.hidden_size = -1; }, {"hidden_size=-1", "1..32"});
  with([](auto& t) { t.intermediate_size = 49; }, {"intermediate_size=49", "1..48"});
  with([](auto& t) { t.num_attention_heads = 5; }, {"num_attention_heads=5", "1..4"});
  with([](auto& t) { t.num_attention_heads = 3; }, {"num_attention_heads=3", "num_key_value_heads=2"});
  with([](auto& t) { t.num_attention_heads = 1; }, {"num_attention_heads=1", "num_key_value_heads=2"});
  with([](auto& t) { t.num_hidden_layers = 4; }, {"num_hidden_layers=4", "1..3"});
  with([](auto& t) { t.num_hidden_layers = -2; }, {"num_hidden_layers=-2", "1..3"});
  with([](auto& t) { t.drop_layers = {3}; }, {"drop_layers=3", "layer 3", "0..2"});
  with([](auto& t) { t.drop_layers = {0, -1}; }, {"drop_layers=0,-1", "layer -1", "0..2"});
  with([](auto& t) { t.drop_layers = {1, 1}; }, {"drop_layers=1,1", "twice"});
  with([](auto& t) { t.drop_layers = {2, 0, 1}; }, {"drop_layers=2,0,1", "all 3 layers"});
  with([](auto& t) { t.num_hidden_layers = 2, t.drop_layers = {0}; },
       {"num_hidden_layers=2", "drop_layers=0", "exclude"});
  const double total = static_cast<double>(c.num_parameters());
  with([&](auto& t) { t.num_parameters = total + 1; }, {"num_parameters=", "valid 1.."});
  with([](auto& t) { t.num_parameters = 0.5; }, {"num_parameters=0.5"});
  with([](auto& t) { t.num_parameters = 100; }, {"num_parameters=100", "not reachable"});
  with([&](auto& t) { t.num_parameters = total / 2, t.hidden_size = 16, t.intermediate_size = 16; },
       {"num_parameters=", "hidden_size or intermediate_size"});
  with([&](auto& t) { t.num_parameters = total * 0.9, t.num_hidden_layers = 1; },
       {"not reachable", "valid"});

  // Missing statistics name the projection; dropped layers need none.
  CalibrationStats part = st;
  part.input_sq_norms.erase(w(1, "mlp.down_proj"));
  part.input_sq_norms.erase(w(2, "self_attn.o_proj"));
  part.input_sq_norms.erase(w(0, "mlp.gate_proj"));
  auto plan_with = [&](const std::function<void(MinitronTarget&)>& set) {
    return [&c, &part, set] {
      MinitronTarget t;
      set(t);
      plan_minitron(c, part, t);
    };
  };
  expect_error(plan_with([](auto& t) { t.intermediate_size = 40; }), {"model.layers.1.mlp.down_proj.weight"});
  expect_error(plan_with([](auto& t) { t.num_attention_heads = 2; }), {"model.layers.2.self_attn.o_proj.weight"});
  expect_error(plan_with([](auto& t) { t.hidden_size = 16; }), {"model.layers.0.mlp.gate_proj.weight"});
  part.block_influence.clear();
  expect_error(plan_with([](auto& t) { t.num_hidden_layers = 2; }), {"num_hidden_layers=2", "block_influence"});
  MinitronTarget needs_stats;
  needs_stats.hidden_size = 16;
  needs_stats.num_hidden_layers = 2;
  EXPECT_NO_THROW(check_minitron_target(c, needs_stats));
  MinitronTarget ok;
  ok.intermediate_size = 40;
  ok.drop_layers = {1};
  EXPECT_EQ(plan_minitron(c, part, ok).layers, (std::vector<int64_t>{0, 2}));
  part.input_sq_norms[w(0, "mlp.down_proj")] = at::ones({47}, at::kDouble);
  expect_error([&] { plan_minitron(c, part, ok); }, {"model.layers.0.mlp.down_proj.weight", "47", "48"});

  // A plan for another model is refused.
  torch::manual_seed(6);
  LlamaForCausalLM other(tiny(2));
  expect_error([&] { apply_minitron(other, plan_minitron(c, st, ok)); }, {"another model"});
}

TEST(Minitron, ParameterCountsAndNumParametersTarget) {
  torch::manual_seed(8);
  for (bool tied : {false, true}) {
    LlamaConfig c = tiny(3, 4, 2, tied);
    c.intermediate_size = 96;
    LlamaForCausalLM m(c);
    CalibrationStats st = random_stats(c);
    MinitronTarget t;
    t.hidden_size = 20;
    t.intermediate_size = 30;
    t.num_attention_heads = 2;
    t.num_hidden_layers = 2;
    MinitronPlan plan = plan_minitron(c, st, t);
    LlamaForCausalLM p = apply_minitron(m, plan);
    EXPECT_EQ(plan.config.num_parameters(), count_parameters(p)) << "tied " << tied;
    EXPECT_EQ(c.num_parameters(), count_parameters(m));

    MinitronTarget n;
    n.num_parameters = 0.6 * static_cast<double>(c.num_parameters());
    MinitronPlan np = plan_minitron(c, st, n);
    LlamaForCausalLM q = apply_minitron(m, np);
    const double got = static_cast<double>(count_parameters(q));
    EXPECT_NEAR(got / n.num_parameters, 1.0, 0.01) << np.describe();
    // Width first: hidden and intermediate shrink by one factor, heads and layers stay.
    EXPECT_LT(np.config.hidden_size, 32);
    EXPECT_LT(np.config.intermediate_size, 96);
    EXPECT_NEAR(np.config.intermediate_size / 96.0, np.config.hidden_size / 32.0, 0.04);
    EXPECT_EQ(np.config.num_attention_heads, 4);
    EXPECT_EQ(np.config.num_hidden_layers, 3);
    // With the hidden size given, only the intermediate size moves.
    n.hidden_size = 28;
    n.num_parameters = 0.7 * static_cast<double>(c.num_parameters());
    MinitronPlan hp = plan_minitron(c, st, n);
    EXPECT_EQ(hp.config.hidden_size, 28);
    EXPECT_NEAR(static_cast<double>(hp.config.num_parameters()) / n.num_parameters, 1.0, 0.01) << hp.describe();
  }
}

TEST(Minitron, PlanFromARealCalibrationPass) {
  torch::manual_seed(9);
  LlamaConfig c = tiny();
  LlamaForCausalLM m(c);
  std::vector<at::Tensor> windows = {at::randint(0, 61, {2, 16}, at::kLong), at::randint(0, 61, {2, 16}, at::kLong)};
  CalibrationStats st = calibrate(m, windows);
  MinitronTarget t;
  t.hidden_size = 24;
  t.intermediate_size = 32;
  t.num_attention_heads = 2;
  t.num_hidden_layers = 2;
  MinitronPlan plan = plan_minitron(c, st, t);
  int64_t lowest = std::min_element(st.block_influence.begin(), st.block_influence.end()) - st.block_influence.begin();
  EXPECT_EQ(std::count(plan.layers.begin(), plan.layers.end(), lowest), 0);
  LlamaForCausalLM p = apply_minitron(m, plan);
  at::Tensor out = logits(p, ids());
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 12, 61}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  EXPECT_EQ(count_parameters(p), plan.config.num_parameters());
}

}  // namespace condense
