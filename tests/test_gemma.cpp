// Gemma's decoders (LlamaConfig::gemma): Gemma 3's config.json read, refused and written back, and
// the model's forward against a hand reference written from transformers' Gemma3 modules (embeddings
// x sqrt(hidden), q/k norms, attention scale query_pre_attn_scalar^-1/2, the windowed layers' own
// RoPE base, a norm after each branch, GeGLU); Gemma 2's config (soft caps, its window layout) and
// its soft-capped attention against the written-out definition. Agreement with transformers itself:
// tests/python/test_gemma3.py, tests/python/test_gemma2.py.
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/llama_config.h"
#include "model/rope.h"
#include "tests/test_support.h"

namespace condense {
namespace {

// A Gemma3TextConfig's keys for a small model: 7 layers, the default pattern (layer 5 full).
nlohmann::json gemma_json() {
  return {{"architectures", {"Gemma3ForCausalLM"}}, {"model_type", "gemma3_text"}, {"vocab_size", 97},
          {"hidden_size", 32}, {"intermediate_size", 48}, {"num_hidden_layers", 7}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 8}, {"query_pre_attn_scalar", 12}, {"sliding_window", 4},
          {"rope_local_base_freq", 100.0}, {"rope_theta", 10000.0}, {"max_position_embeddings", 64},
          {"hidden_activation", "gelu_pytorch_tanh"}, {"final_logit_softcapping", nullptr},
          {"attn_logit_softcapping", nullptr}};
}

TEST(Gemma3, ConfigReadsTheDecoderAndWritesItBack) {
  LlamaConfig c = from_hf_json(gemma_json(), "config.json");
  EXPECT_TRUE(c.gemma == 3 && c.qk_norm && c.tie_word_embeddings);  // tied: Gemma3TextConfig's default
  EXPECT_EQ(c.head_size(), 8);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(12.0));
  EXPECT_DOUBLE_EQ(c.embedding_scale(), std::sqrt(32.0));
  for (int64_t l = 0; l < 7; ++l) {  // every 6th layer full attention, on the global base
    EXPECT_EQ(c.window(l), l == 5 ? 0 : 4) << l;
    EXPECT_EQ(c.local_rope(l), l != 5) << l;
  }
  LlamaForCausalLM m(c);
  int64_t n = 0;
  for (const auto& p : m->named_parameters()) n += p.value().numel();
  EXPECT_EQ(n, c.num_parameters());
  EXPECT_TRUE(m->named_parameters().contains("model.layers.0.post_feedforward_layernorm.weight"));

  const nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["architectures"], nlohmann::json({"Gemma3ForCausalLM"}));
  EXPECT_EQ(back["model_type"], "gemma3_text");
  EXPECT_EQ(back["hidden_activation"], "gelu_pytorch_tanh");
  EXPECT_FALSE(back.contains("hidden_act"));
  EXPECT_EQ(back["layer_types"][5], "full_attention");
  EXPECT_EQ(back["layer_types"][4], "sliding_attention");
  EXPECT_EQ(back["query_pre_attn_scalar"], 12.0);
  EXPECT_EQ(back["rope_local_base_freq"], 100.0);
  const LlamaConfig again = from_hf_json(back, "config.json");
  EXPECT_EQ(to_hf_json(again), back);

  // A window as long as the context still marks the layers that take the local RoPE base.
  nlohmann::json wide = gemma_json();
  wide["sliding_window"] = 512;
  EXPECT_EQ(from_hf_json(wide, "config.json").sliding_window, 512);
  EXPECT_TRUE(from_hf_json(wide, "config.json").local_rope(0));
  nlohmann::json typed = gemma_json();
  typed["layer_types"] = nlohmann::json::array();
  for (int l = 0; l < 7; ++l) typed["layer_types"].push_back(l == 0 ? "sliding_attention" : "full_attention");
  EXPECT_EQ(from_hf_json(typed, "config.json").window(1), 0);
  EXPECT_EQ(from_hf_json(typed, "config.json").window(0), 4);
  // Without layer_types, transformers reads sliding_window_pattern (not the _sliding_window_pattern
  // it saves beside layer_types).
  nlohmann::json period = gemma_json();
  period["_sliding_window_pattern"] = 2;
  EXPECT_EQ(from_hf_json(period, "config.json").window(1), 4);
  period["sliding_window_pattern"] = 2;
  EXPECT_EQ(from_hf_json(period, "config.json").window(1), 0);
  EXPECT_EQ(from_hf_json(period, "config.json").window(2), 4);
  // A Gemma 3 built in code gets Gemma's defaults for the two numbers.
  LlamaConfig built = test::tiny_config();
  built.gemma = 3;
  built.qk_norm = true;
  built.finalize();
  EXPECT_EQ(built.query_pre_attn_scalar, static_cast<double>(built.head_size()));
  EXPECT_EQ(built.rope_local_theta, built.rope_theta);

  // What condense does not compute is refused naming the key.
  auto refused = [](nlohmann::json j, const char* key, const std::string& words) {
    try {
      from_hf_json(j, "config.json");
      ADD_FAILURE() << key << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  nlohmann::json j = gemma_json();
  // transformers' Gemma 3 caps its logits where its config says so (Gemma 2's cap): read and written
  // back; its attention stores attn_logit_softcapping but never applies it: refused.
  j["final_logit_softcapping"] = 30.0;
  EXPECT_EQ(from_hf_json(j, "config.json").final_logit_softcapping, 30.0);
  EXPECT_EQ(to_hf_json(from_hf_json(j, "config.json"))["final_logit_softcapping"], 30.0);
  EXPECT_TRUE(to_hf_json(c)["attn_logit_softcapping"].is_null());
  j["final_logit_softcapping"] = -1.0;
  refused(j, "final_logit_softcapping", "final_logit_softcapping");
  j["final_logit_softcapping"] = 0.0;  // transformers divides by it
  refused(j, "final_logit_softcapping", "final_logit_softcapping");
  j = gemma_json();
  j["attn_logit_softcapping"] = 50.0;
  refused(j, "attn_logit_softcapping", "does not apply");
  j = gemma_json();
  j["hidden_activation"] = "gelu";
  refused(j, "hidden_activation", "hidden_activation");
  j = gemma_json();
  j["use_bidirectional_attention"] = true;
  refused(j, "use_bidirectional_attention", "use_bidirectional_attention");
  j = gemma_json();
  j["model_type"] = "gemma3";
  refused(j, "model_type", "gemma3_text");
  j = gemma_json();
  j["rope_parameters"] = {{"full_attention", {{"rope_theta", 1e6}}}};  // transformers 5's layout
  refused(j, "rope_parameters", "rope_parameters");
  LlamaConfig plain = test::tiny_config();
  plain.query_pre_attn_scalar = 12;  // a Gemma key on a Llama
  EXPECT_THROW(plain.finalize(), Error);
}

// transformers' Gemma3RMSNorm with condense's stored scale (1 + w).
at::Tensor rms(const at::Tensor& x, const at::Tensor& scale, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * scale;
}

TEST(Gemma3, ForwardIsTheGemmaDecoder) {
  nlohmann::json j = gemma_json();
  j["num_hidden_layers"] = 2;
  j["layer_types"] = {"sliding_attention", "full_attention"};
  j["sliding_window"] = 3;
  LlamaConfig c = from_hf_json(j, "config.json");
  torch::manual_seed(5);
  LlamaForCausalLM m(c);
  at::NoGradGuard g;
  for (auto& p : m->named_parameters()) p.value().normal_(p.value().dim() == 1 ? 1.0 : 0.0, 0.3);
  const int64_t t = 7, heads = 4, kv = 2, d = 8;
  at::Tensor ids = at::randint(0, c.vocab_size, {1, t}, at::kLong);
  at::Tensor got = m->forward(ids);

  const double eps = c.rms_norm_eps;
  at::Tensor x = m->model->embed_tokens->weight.index_select(0, ids[0]).unsqueeze(0) *
                 static_cast<float>(std::sqrt(32.0));
  at::Tensor pos = at::arange(t, at::kLong);
  for (int64_t l = 0; l < 2; ++l) {
    auto& L = m->model->layer_list[l];
    auto& a = L->self_attn;
    // Layer 0: windowed, RoPE base 100 unscaled; layer 1: full attention on rope_theta.
    auto [cos, sin] = Rope(d, l == 0 ? 100.0 : 10000.0).cos_sin(0, t, at::kCPU);
    auto rope = [&](const at::Tensor& v) {
      at::Tensor rot = at::cat({-v.narrow(-1, d / 2, d / 2), v.narrow(-1, 0, d / 2)}, -1);
      return v * cos + rot * sin;
    };
    at::Tensor xn = rms(x, L->input_layernorm->weight, eps);
    at::Tensor q = rope(rms(a->q_proj(xn).view({1, t, heads, d}), a->q_norm->weight, eps).transpose(1, 2));
    at::Tensor k = rope(rms(a->k_proj(xn).view({1, t, kv, d}), a->k_norm->weight, eps).transpose(1, 2));
    at::Tensor v = a->v_proj(xn).view({1, t, kv, d}).transpose(1, 2);
    k = k.repeat_interleave(heads / kv, 1);
    v = v.repeat_interleave(heads / kv, 1);
    at::Tensor s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(12.0);
    at::Tensor hidden = pos.unsqueeze(0) > pos.unsqueeze(1);  // key after query
    if (l == 0) hidden = hidden | (pos.unsqueeze(0) <= pos.unsqueeze(1) - 3);  // older than the window
    s = s.masked_fill(hidden, -INFINITY);
    at::Tensor attn = a->o_proj(at::matmul(at::softmax(s, -1), v).transpose(1, 2).reshape({1, t, heads * d}));
    x = x + rms(attn, L->post_attention_layernorm->weight, eps);
    at::Tensor y = rms(x, L->pre_feedforward_layernorm->weight, eps);
    at::Tensor mlp = L->mlp->down_proj(at::gelu(L->mlp->gate_proj(y), "tanh") * L->mlp->up_proj(y));
    x = x + rms(mlp, L->post_feedforward_layernorm->weight, eps);
  }
  at::Tensor want = at::linear(rms(x, m->model->norm->weight, eps), m->model->embed_tokens->weight);
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-4);
  EXPECT_GT(want.std().item<double>(), 1.0);  // logits far from uniform: the comparison has teeth
}

// A block hook (memory policies run each branch through one) computes the same values and
// gradients, the branches including Gemma's output norms.
class PassThrough : public BlockHook {
 public:
  at::Tensor run(int64_t, Part, const std::function<at::Tensor(const at::Tensor&)>& fn,
                 const at::Tensor& x) override {
    ++calls;
    return fn(x);
  }
  int calls = 0;
};

TEST(Gemma3, BlockHookBranchesAreTheLayers) {
  LlamaConfig c = from_hf_json(gemma_json(), "config.json");
  torch::manual_seed(6);
  LlamaForCausalLM m(c);
  at::Tensor ids = at::randint(0, c.vocab_size, {2, 9}, at::kLong);
  at::Tensor plain = m->forward(ids);
  plain.pow(2).mean().backward();
  at::Tensor grad = m->model->layer_list[3]->post_feedforward_layernorm->weight.grad().clone();
  m->zero_grad();
  auto hook = std::make_shared<PassThrough>();
  m->set_block_hook(hook);
  at::Tensor hooked = m->forward(ids);
  hooked.pow(2).mean().backward();
  EXPECT_GT(hook->calls, 0);
  EXPECT_TRUE(at::allclose(hooked, plain, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(m->model->layer_list[3]->post_feedforward_layernorm->weight.grad(), grad, 1e-6, 1e-7));
}

// A Gemma2Config's keys for a small model (absent keys take Gemma2Config's defaults).
nlohmann::json gemma2_json() {
  return {{"architectures", {"Gemma2ForCausalLM"}}, {"model_type", "gemma2"}, {"vocab_size", 97},
          {"hidden_size", 32}, {"intermediate_size", 48}, {"num_hidden_layers", 4}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 8}, {"max_position_embeddings", 64}, {"sliding_window", 4}};
}

TEST(Gemma2, ConfigReadsTheDecoderAndWritesItBack) {
  LlamaConfig c = from_hf_json(gemma2_json(), "config.json");
  EXPECT_EQ(c.gemma, 2);
  EXPECT_FALSE(c.qk_norm);
  // Gemma2Config's defaults: caps 50 / 30, the even layers windowed, one RoPE base 10000, scale 1/16.
  EXPECT_EQ(c.attn_logit_softcapping, 50.0);
  EXPECT_EQ(c.final_logit_softcapping, 30.0);
  EXPECT_EQ(c.sliding_window, 4);
  EXPECT_EQ(c.sliding_window_layers, (std::vector<int64_t>{1, 0, 1, 0}));
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(c.rope_local_theta, 0.0);
  EXPECT_FALSE(c.local_rope(0));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(attention_extras(c), "Gemma 2's decoder");
  nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["architectures"], nlohmann::json::array({"Gemma2ForCausalLM"}));
  EXPECT_EQ(back["model_type"], "gemma2");
  EXPECT_EQ(back["attn_logit_softcapping"], 50.0);
  EXPECT_EQ(back["final_logit_softcapping"], 30.0);
  EXPECT_FALSE(back.contains("rope_local_base_freq"));
  EXPECT_EQ(back["layer_types"], nlohmann::json({"sliding_attention", "full_attention", "sliding_attention",
                                                 "full_attention"}));
  LlamaConfig again = from_hf_json(back, "back.json");
  EXPECT_EQ(to_hf_json(again), back);
  // null caps: none.
  nlohmann::json j = gemma2_json();
  j["attn_logit_softcapping"] = nullptr;
  j["final_logit_softcapping"] = 12.5;
  c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.attn_logit_softcapping, 0.0);
  EXPECT_EQ(c.final_logit_softcapping, 12.5);
  EXPECT_TRUE(to_hf_json(c)["attn_logit_softcapping"].is_null());
  // What Gemma 2 does not have is refused, naming it.
  LlamaConfig with_norms = from_hf_json(gemma2_json(), "config.json");
  with_norms.qk_norm = true;
  EXPECT_THROW(with_norms.finalize(), Error);
  LlamaConfig local = from_hf_json(gemma2_json(), "config.json");
  local.rope_local_theta = 100;  // Gemma 3's
  EXPECT_THROW(local.finalize(), Error);
  LlamaConfig plain = test::tiny_config();
  plain.final_logit_softcapping = 30;  // a Gemma key on a Llama
  EXPECT_THROW(plain.finalize(), Error);
  for (const char* key : {"sliding_window", "final_logit_softcapping"}) {
    j = gemma2_json();
    j[key] = std::string(key) == "sliding_window" ? nlohmann::json(nullptr) : nlohmann::json(0.0);
    try {  // a null window with windowed layers, a cap of 0: transformers cannot run either
      from_hf_json(j, "config.json");
      ADD_FAILURE() << key << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
  j = gemma2_json();
  j["attn_logit_softcapping"] = -1.0;
  try {
    from_hf_json(j, "config.json");
    ADD_FAILURE() << "a negative cap was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attn_logit_softcapping"), std::string::npos) << e.what();
  }
}

// The layer's attention against the definition written out (transformers' eager Gemma 2
// attention: scores * scale, capped, masked causally and by the window, softmax, values), whole and
// in chunks through a KV cache, with gradients; the cap binds (scores of ~3 against 1.5).
TEST(Gemma2, SoftCappedAttentionIsTheDefinition) {
  nlohmann::json j = gemma2_json();
  j["num_hidden_layers"] = 1;
  j["layer_types"] = {"sliding_attention"};
  j["query_pre_attn_scalar"] = 12;
  j["attn_logit_softcapping"] = 1.5;
  LlamaConfig c = from_hf_json(j, "config.json");
  torch::manual_seed(9);
  LlamaAttention attn(c, 0);
  for (auto& p : attn->parameters()) p.data().normal_(0, 0.5);
  const int64_t t = 11, heads = 4, kv = 2, d = 8;
  at::Tensor x = at::randn({1, t, 32}).requires_grad_();
  auto [cos, sin] = Rope(c).cos_sin(0, t, at::kCPU);
  at::Tensor got = attn->forward(x, cos, sin, nullptr, nullptr);
  // The definition.
  at::Tensor q = apply_rope(attn->q_proj(x).view({1, t, heads, d}).transpose(1, 2), cos, sin);
  at::Tensor k = apply_rope(attn->k_proj(x).view({1, t, kv, d}).transpose(1, 2), cos, sin);
  at::Tensor v = attn->v_proj(x).view({1, t, kv, d}).transpose(1, 2);
  k = k.repeat_interleave(heads / kv, 1);
  v = v.repeat_interleave(heads / kv, 1);
  at::Tensor raw = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(12.0);
  at::Tensor s = at::tanh(raw / 1.5) * 1.5;
  at::Tensor i = at::arange(t).unsqueeze(1), jj = at::arange(t).unsqueeze(0);
  s = s.masked_fill((jj > i).logical_or(jj <= i - 4), -INFINITY);
  at::Tensor want = attn->o_proj(at::matmul(at::softmax(s, -1), v).transpose(1, 2).reshape({1, t, heads * d}));
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-5);
  EXPECT_GT(raw.abs().max().item<double>(), 3.0) << "the cap does not bind";
  auto g_got = torch::autograd::grad({got.square().sum()}, {x, attn->q_proj->weight});
  auto g_want = torch::autograd::grad({want.square().sum()}, {x, attn->q_proj->weight});
  for (int i = 0; i < 2; ++i)  // relative to the largest entry (O(100) here)
    EXPECT_LT((g_got[i] - g_want[i]).abs().max().item<double>(), 1e-5 * g_want[i].abs().max().item<double>());
  // Through a KV cache in chunks of 4, 1 and 6 (past > 0, keys from a ring of the window).
  torch::NoGradGuard no_grad;
  KVCache cache(c, 1, t, at::TensorOptions().dtype(at::kFloat));
  std::vector<at::Tensor> parts;
  for (auto [from, n] : {std::pair<int64_t, int64_t>{0, 4}, {4, 1}, {5, 6}}) {
    parts.push_back(attn->forward(x.narrow(1, from, n), cos.narrow(0, from, n), sin.narrow(0, from, n), &cache, nullptr));
    cache.commit(n);
  }
  EXPECT_LT((at::cat(parts, 1) - want).abs().max().item<double>(), 1e-5);
}

}  // namespace
}  // namespace condense
