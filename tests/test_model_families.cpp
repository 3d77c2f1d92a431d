// Tests for the model families LlamaConfig reads and writes (model/llama_config.h): Hugging Face
// config.json keys of Llama, Mistral, Qwen2 / Qwen3, SmolLM3 and Phi-3 (RoPE scaling, LongRoPE,
// q/k/v biases, q/k norms, NoPE layers, partial RoPE, sliding windows, eos lists) read, refused
// and written back, and the attention each family adds against a hand reference. (Agreement with
// transformers itself: tests/python/test_qwen.py, test_smollm3.py, test_phi3.py,
// test_sliding_window.py.)
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/llama_config.h"
#include "model/rope.h"
#include "tests/test_support.h"
#include "trainer/device.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t kv_heads = 2, bool tied = false) { return test::tiny_config(kv_heads, tied); }

TEST(LlamaConfig, RopeScalingRoundTripsAndOthersAreRefused) {
  nlohmann::json j = to_hf_json(tiny());
  EXPECT_FALSE(j.contains("rope_scaling"));
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  LlamaConfig c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.rope_scaling, (RopeScaling{"llama3", 32.0, 1.0, 4.0, 8192}));
  EXPECT_EQ(to_hf_json(c)["rope_scaling"], j["rope_scaling"]);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};  // the older key
  c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.rope_scaling, (RopeScaling{"linear", 2.0}));
  EXPECT_EQ(to_hf_json(c)["rope_scaling"], (nlohmann::json{{"rope_type", "linear"}, {"factor", 2.0}}));
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_TRUE(from_hf_json(j, "config.json").rope_scaling.type.empty());
  for (const auto& [bad, needle] : std::vector<std::pair<nlohmann::json, std::string>>{
           {{{"rope_type", "yarn"}, {"factor", 4.0}}, "'yarn' is not supported"},
           {{{"rope_type", "linear"}, {"factor", 2.0}, {"finetuned", true}}, "rope_scaling.finetuned"},
           {{{"rope_type", "llama3"}, {"factor", 8.0}}, "missing field 'low_freq_factor'"},
           {{{"rope_type", "linear"}, {"type", "llama3"}, {"factor", 2.0}}, "two types"},
           {{{"rope_type", "linear"}, {"factor", -1.0}}, "factor must be > 0"},
           {{{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 1.0},
             {"original_max_position_embeddings", 8192}}, "low_freq_factor < high_freq_factor"},
           {nlohmann::json(3), "expected an object"}}) {
    j["rope_scaling"] = bad;
    try {
      LlamaConfig got = from_hf_json(j, "config.json");
      got.finalize();
      ADD_FAILURE() << bad.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// Phi-3's LongRoPE: short factors and an attention factor derived from max / original (the
// context capped at the original length), written back as a Llama config with the attention
// factor explicit; cos and sin are the formula's; Phi-3's other limits are refused.
TEST(LlamaConfig, Phi3LongRopeUsesTheShortFactorsUpToTheOriginalLength) {
  nlohmann::json j = to_hf_json(tiny());  // head_dim 8: 4 frequencies
  j["model_type"] = "phi3";
  j["architectures"] = {"Phi3ForCausalLM"};
  j["max_position_embeddings"] = 256;
  j["original_max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"type", "su"}, {"short_factor", {1.0, 1.5, 2.0, 3.0}}, {"long_factor", {2.0, 4.0, 8.0, 16.0}}};
  LlamaConfig c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.rope_scaling.type, "longrope");
  EXPECT_EQ(c.max_position_embeddings, 64);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, std::sqrt(1 + std::log(4.0) / std::log(64.0)));
  const nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["model_type"], "llama");
  EXPECT_EQ(back["original_max_position_embeddings"], 64);
  EXPECT_EQ(from_hf_json(back, "config.json").rope_scaling, c.rope_scaling);
  const at::Tensor inv = Rope(c).inv_freq();
  auto [cos, sin] = Rope(c).cos_sin(0, 5, at::kCPU);
  for (int i = 0; i < 4; ++i) {
    const double want = 1.0 / (c.rope_scaling.short_factor[i] * std::pow(c.rope_theta, 2.0 * i / 8));
    EXPECT_NEAR(inv[i].item<double>(), want, 1e-6 * want) << i;
    EXPECT_NEAR(cos[3][i].item<double>(), std::cos(3 * want) * c.rope_scaling.attention_factor, 1e-5) << i;
    EXPECT_NEAR(sin[3][i + 4].item<double>(), std::sin(3 * want) * c.rope_scaling.attention_factor, 1e-5) << i;
  }
  LlamaConfig longer = c;
  longer.max_position_embeddings = 65;  // past the original length: the long factors' domain
  EXPECT_THROW(longer.finalize(), Error);
  j["rope_scaling"]["short_factor"] = {1.0, 2.0};
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);
  j["rope_scaling"]["short_factor"] = {1.0, 1.5, 2.0, 3.0};
  // Phi-4-mini's partial rotary embeddings: the factors count the rotated channels' frequencies.
  j["partial_rotary_factor"] = 0.5;
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);  // 4 factors for 2 frequencies
  for (const char* key : {"short_factor", "long_factor"}) j["rope_scaling"][key] = {1.0, 2.0};
  LlamaConfig partial = from_hf_json(j, "config.json");
  EXPECT_EQ(partial.rotary_dim(), 4);
  EXPECT_EQ(Rope(partial).inv_freq().numel(), 2);
  const nlohmann::json written = to_hf_json(partial);  // a Phi-3 (transformers' Llama rotates whole heads)
  EXPECT_EQ(written["model_type"], "phi3");
  EXPECT_EQ(written["partial_rotary_factor"], 0.5);
  const LlamaConfig again = from_hf_json(written, "config.json");
  EXPECT_EQ(to_hf_json(again), written);
  EXPECT_EQ(again.rotary_dim(), 4);
  EXPECT_EQ(again.rope_scaling, partial.rope_scaling);
  EXPECT_TRUE(written["pad_token_id"].is_null());  // Phi3Config's 32000 would not fit small vocabularies
  // Other families' transformers code fails with the key (it rotates whole heads with the
  // narrower frequencies): refused, naming it.
  nlohmann::json llama_key = written;
  llama_key["model_type"] = "llama";
  llama_key.erase("rope_scaling");
  try {
    from_hf_json(llama_key, "config.json");
    ADD_FAILURE() << "partial_rotary_factor accepted in a llama config";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("partial_rotary_factor"), std::string::npos) << e.what();
  }
  // With another scaling than LongRoPE it has no Phi-3 form: refused.
  LlamaConfig linear = again;
  linear.rope_scaling = {"linear", 2.0};
  EXPECT_THROW(linear.finalize(), Error);
  j.erase("partial_rotary_factor");
  for (const char* key : {"short_factor", "long_factor"}) j["rope_scaling"][key] = {1.0, 1.5, 2.0, 3.0};
  j["sliding_window"] = 32;  // Phi-3-mini-4k's window (2047) below the context: every layer windowed
  const LlamaConfig windowed = from_hf_json(j, "config.json");
  EXPECT_EQ(windowed.max_position_embeddings, 64);
  EXPECT_EQ(windowed.sliding_window, 32);
  EXPECT_EQ(windowed.window(0), 32);
  EXPECT_EQ(windowed.window(1), 32);
  EXPECT_EQ(to_hf_json(windowed)["model_type"], "mistral");  // a Llama windowing every layer
  EXPECT_EQ(to_hf_json(from_hf_json(to_hf_json(windowed), "config.json")), to_hf_json(windowed));
  // Without the top-level original length a Phi3Config has its default, 4096.
  nlohmann::json bare = j;
  bare.erase("original_max_position_embeddings");
  bare.erase("sliding_window");
  bare["max_position_embeddings"] = 8192;
  c = from_hf_json(bare, "config.json");
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, std::sqrt(1 + std::log(2.0) / std::log(4096.0)));
  // A Llama config without it: the original length is max_position_embeddings (nothing capped)
  // and the factor rope_scaling's; rope_scaling's own original length is ignored, as transformers
  // ignores it.
  bare["model_type"] = "llama";
  bare["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0, 1.5, 2.0, 3.0}},
                          {"long_factor", {2.0, 4.0, 8.0, 16.0}}, {"factor", 4.0},
                          {"original_max_position_embeddings", 64}};
  c = from_hf_json(bare, "config.json");
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, std::sqrt(1 + std::log(4.0) / std::log(8192.0)));
  j["model_type"] = "llama";  // Llama's "yarn" is YaRN, not Phi-3's old name for LongRoPE
  j["rope_scaling"]["type"] = "yarn";
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);
}

// Qwen2: Llama with q/k/v biases (its config has no key for them: model_type says it), read as
// qkv_bias, written back as a Qwen2 config; a window only with use_sliding_window true.
TEST(LlamaConfig, Qwen2ReadsAsQkvBiasAndWritesBackAsQwen2) {
  nlohmann::json j = to_hf_json(tiny());
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["attention_bias"], false);
  j["model_type"] = "qwen2";
  j["architectures"] = {"Qwen2ForCausalLM"};
  j.erase("attention_bias");
  j.erase("mlp_bias");
  j["sliding_window"] = 8;  // ignored: use_sliding_window absent (false)
  LlamaConfig c = from_hf_json(j, "config.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.max_position_embeddings, tiny().max_position_embeddings);
  const nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["model_type"], "qwen2");
  EXPECT_EQ(back["architectures"], nlohmann::json({"Qwen2ForCausalLM"}));
  EXPECT_EQ(back["use_sliding_window"], false);
  EXPECT_FALSE(back.contains("attention_bias"));
  EXPECT_EQ(from_hf_json(back, "config.json").qkv_bias, true);
  // q/k/v biases counted: (heads + 2 kv) x head_dim per layer.
  LlamaConfig plain = c;
  plain.qkv_bias = false;
  EXPECT_EQ(c.num_parameters() - plain.num_parameters(),
            c.num_hidden_layers * (c.num_attention_heads + 2 * c.kv_heads()) * c.head_size());
  LlamaForCausalLM m(c);
  int64_t n = 0, biases = 0;
  for (const auto& p : m->named_parameters()) {
    n += p.value().numel();
    if (p.key().find(".bias") != std::string::npos) {
      ++biases;
      EXPECT_TRUE(at::equal(p.value(), at::zeros_like(p.value()))) << p.key();  // as transformers
    }
  }
  EXPECT_EQ(n, c.num_parameters());
  EXPECT_EQ(biases, 3 * c.num_hidden_layers);
  // The windows per layer, read from j (0: full attention); the context is never capped.
  auto windows = [&]() {
    const LlamaConfig w = from_hf_json(j, "config.json");
    EXPECT_EQ(w.max_position_embeddings, tiny().max_position_embeddings);
    EXPECT_EQ(from_hf_json(to_hf_json(w), "config.json").sliding_window_layers, w.sliding_window_layers);
    return std::vector<int64_t>{w.window(0), w.window(1)};
  };
  j["use_sliding_window"] = true;  // no layer from max_window_layers (28) on: no window
  EXPECT_EQ(windows(), (std::vector<int64_t>{0, 0}));
  j["max_window_layers"] = 1;  // layer 1 on is windowed
  EXPECT_EQ(windows(), (std::vector<int64_t>{0, 8}));
  EXPECT_EQ(to_hf_json(from_hf_json(j, "config.json"))["max_window_layers"], 1);  // for readers without layer_types
  j["layer_types"] = nlohmann::json::array();  // explicit layer types win over max_window_layers
  for (int64_t i = 0; i < tiny().num_hidden_layers; ++i) j["layer_types"].push_back("full_attention");
  EXPECT_EQ(windows(), (std::vector<int64_t>{0, 0}));
  j["layer_types"][0] = "sliding_attention";
  EXPECT_EQ(windows(), (std::vector<int64_t>{8, 0}));
  EXPECT_EQ(to_hf_json(from_hf_json(j, "config.json"))["max_window_layers"], 2);  // not a tail: none by that rule
  EXPECT_EQ(to_hf_json(from_hf_json(j, "config.json"))["layer_types"], j["layer_types"]);
  j["layer_types"][0] = "local";  // neither kind
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);
  j["layer_types"][0] = "sliding_attention";
  j["sliding_window"] = nullptr;  // no window at all
  EXPECT_EQ(windows(), (std::vector<int64_t>{0, 0}));
  j.erase("layer_types");
  j.erase("max_window_layers");
  j["sliding_window"] = 8;
  j["attention_bias"] = true;  // Llama's own biases (o_proj too) stay refused
  j["model_type"] = "llama";
  try {
    from_hf_json(j, "config.json");
    ADD_FAILURE() << "attention_bias=true accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_bias=true is not supported"), std::string::npos) << e.what();
  }
}

// Qwen3: q_norm / k_norm built in (model_type says it), head_dim defaults to 128 as in
// Qwen3Config; written back as Qwen3. A q/k-normed model equals its attention computed by hand.
TEST(LlamaConfig, Qwen3ReadsAsQkNormAndItsAttentionNormalizesEachHead) {
  nlohmann::json j = to_hf_json(tiny());
  j["model_type"] = "qwen3";
  j["architectures"] = {"Qwen3ForCausalLM"};
  j.erase("head_dim");
  j["hidden_size"] = 512;  // head_dim 128 (the default), not 512 / 4
  LlamaConfig c = from_hf_json(j, "config.json");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.head_size(), 128);
  const nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["model_type"], "qwen3");
  EXPECT_EQ(back["architectures"], nlohmann::json({"Qwen3ForCausalLM"}));
  EXPECT_EQ(back["attention_bias"], false);
  EXPECT_EQ(back["head_dim"], 128);
  EXPECT_TRUE(from_hf_json(back, "config.json").qk_norm);
  LlamaConfig both = c;
  both.qkv_bias = true;
  EXPECT_THROW(both.finalize(), Error);

  LlamaConfig small = tiny();
  small.qk_norm = true;
  small.head_dim = 6;
  small.finalize();
  torch::manual_seed(3);
  LlamaForCausalLM m(small);
  int64_t n = 0;
  for (const auto& p : m->named_parameters()) n += p.value().numel();
  EXPECT_EQ(n, small.num_parameters());
  at::NoGradGuard g;
  auto& attn = m->model->layer_list[0]->self_attn;
  attn->q_norm->weight.normal_(1.0, 0.5);
  attn->k_norm->weight.normal_(1.0, 0.5);
  const int64_t t = 5, heads = small.num_attention_heads, kv = small.kv_heads(), d = 6;
  at::Tensor x = at::randn({1, t, small.hidden_size});
  auto [cos, sin] = Rope(small).cos_sin(0, t, at::kCPU);
  at::Tensor got = attn->forward(x, cos, sin, nullptr, nullptr);
  auto rms = [&](const at::Tensor& v, const at::Tensor& w) { return w * (v * at::rsqrt(v.pow(2).mean(-1, true) + small.rms_norm_eps)); };
  auto rope = [&](const at::Tensor& v) {  // [1, h, t, d], HF's rotate_half
    at::Tensor rot = at::cat({-v.narrow(-1, d / 2, d / 2), v.narrow(-1, 0, d / 2)}, -1);
    return v * cos + rot * sin;
  };
  at::Tensor q = rope(rms(attn->q_proj(x).view({1, t, heads, d}), attn->q_norm->weight).transpose(1, 2));
  at::Tensor k = rope(rms(attn->k_proj(x).view({1, t, kv, d}), attn->k_norm->weight).transpose(1, 2));
  at::Tensor v = attn->v_proj(x).view({1, t, kv, d}).transpose(1, 2);
  k = k.repeat_interleave(heads / kv, 1);
  v = v.repeat_interleave(heads / kv, 1);
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  s = s.masked_fill(at::ones({t, t}, at::kBool).triu(1), -INFINITY);
  at::Tensor want = attn->o_proj(at::matmul(at::softmax(s, -1), v).transpose(1, 2).reshape({1, t, heads * d}));
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
  attn->k_norm->weight.fill_(1.0);  // the norms act: unit weights give other outputs
  EXPECT_GT((attn->forward(x, cos, sin, nullptr, nullptr) - got).abs().max().item<double>(), 1e-3);
}

// SmolLM3: no_rope_layers (1 RoPE, 0 none) from the list or, where absent, every
// no_rope_layer_interval-th layer; written back as SmolLM3; a list of ones is a plain Llama; a NoPE
// layer's attention is the reference attention without rotation.
TEST(LlamaConfig, SmolLM3ReadsNoRopeLayersAndItsNoPeLayersAttendWithoutRotation) {
  nlohmann::json j = to_hf_json(tiny());
  j["model_type"] = "smollm3";
  j["architectures"] = {"SmolLM3ForCausalLM"};
  j["num_hidden_layers"] = 8;
  LlamaConfig c = from_hf_json(j, "config.json");  // absent list: every 4th layer (interval 4)
  EXPECT_EQ(c.no_rope_layers, (std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 0}));
  EXPECT_FALSE(c.uses_rope(3));
  EXPECT_TRUE(c.uses_rope(4));
  EXPECT_EQ(attention_extras(c), "layers without RoPE (SmolLM3)");
  j["no_rope_layer_interval"] = 3;
  EXPECT_EQ(from_hf_json(j, "config.json").no_rope_layers, (std::vector<int64_t>{1, 1, 0, 1, 1, 0, 1, 1}));
  j["no_rope_layers"] = {0, 1, 1, 1, 1, 1, 1, 0};  // the list wins over the interval
  c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.no_rope_layers, (std::vector<int64_t>{0, 1, 1, 1, 1, 1, 1, 0}));
  const nlohmann::json back = to_hf_json(c);
  EXPECT_EQ(back["model_type"], "smollm3");
  EXPECT_EQ(back["architectures"], nlohmann::json({"SmolLM3ForCausalLM"}));
  EXPECT_EQ(back["no_rope_layers"], j["no_rope_layers"]);
  EXPECT_EQ(from_hf_json(back, "config.json").no_rope_layers, c.no_rope_layers);
  // A longer list: transformers reads entry i for layer i, so the first 8 count; a shorter one
  // leaves layers without an entry (transformers fails on them): refused.
  nlohmann::json longer = j;
  longer["no_rope_layers"] = {0, 1, 1, 1, 1, 1, 1, 0, 0, 0};
  EXPECT_EQ(from_hf_json(longer, "config.json").no_rope_layers, c.no_rope_layers);
  longer["no_rope_layers"] = {0, 1, 1};
  EXPECT_THROW(from_hf_json(longer, "config.json"), Error);
  // Absent keys take SmolLM3Config's defaults (tied embeddings, 4 KV heads, theta 2e6).
  nlohmann::json bare = back;
  for (const char* key : {"tie_word_embeddings", "num_key_value_heads", "rope_theta", "max_position_embeddings"})
    bare.erase(key);
  LlamaConfig defaults = from_hf_json(bare, "config.json");
  EXPECT_TRUE(defaults.tie_word_embeddings);
  EXPECT_EQ(defaults.num_key_value_heads, 4);  // not the 4 attention heads' MHA default (0)
  bare["num_key_value_heads"] = nullptr;  // null: one per attention head
  bare["num_attention_heads"] = 8;
  EXPECT_EQ(from_hf_json(bare, "config.json").kv_heads(), 8);
  bare["no_rope_layers"] = nullptr;  // null: the interval's pattern
  EXPECT_EQ(from_hf_json(bare, "config.json").no_rope_layers, (std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 0}));
  EXPECT_EQ(defaults.rope_theta, 2000000.0);
  EXPECT_EQ(defaults.max_position_embeddings, 32768);
  // A window only on NoPE layers, only with use_sliding_window and a window.
  j["sliding_window"] = 16;
  EXPECT_EQ(from_hf_json(j, "config.json").sliding_window, 0);
  j["use_sliding_window"] = true;
  c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.sliding_window_layers, (std::vector<int64_t>{1, 0, 0, 0, 0, 0, 0, 1}));  // j's NoPE layers
  nlohmann::json typed = j;  // layer_types marks the windowed layers, use_sliding_window or not
  typed["use_sliding_window"] = false;
  typed["layer_types"] = nlohmann::json::array();
  for (int i = 0; i < 8; ++i) typed["layer_types"].push_back(i == 2 ? "sliding_attention" : "full_attention");
  c = from_hf_json(typed, "config.json");
  EXPECT_EQ(c.window(2), 16);
  EXPECT_EQ(c.window(3), 0);
  EXPECT_EQ(from_hf_json(to_hf_json(c), "config.json").sliding_window_layers, c.sliding_window_layers);
  j["no_rope_layers"] = {1, 1, 1, 1, 1, 1, 1, 1};  // RoPE everywhere: no NoPE layer to window
  c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.max_position_embeddings, tiny().max_position_embeddings);
  EXPECT_TRUE(c.no_rope_layers.empty());  // the plain Llama it is
  EXPECT_EQ(to_hf_json(c)["model_type"], "llama");
  j["no_rope_layers"] = {1, 1, 2, 1, 1, 1, 1, 1};
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);
  j["no_rope_layers"] = {1, 0};  // not one per layer
  EXPECT_THROW(from_hf_json(j, "config.json"), Error);
  LlamaConfig both = tiny();
  both.no_rope_layers = {1, 0};
  both.qk_norm = true;
  EXPECT_THROW(both.finalize(), Error);

  LlamaConfig small = tiny();
  small.no_rope_layers = {1, 0};
  small.finalize();
  torch::manual_seed(4);
  LlamaForCausalLM m(small);
  at::NoGradGuard g;
  const int64_t t = 5, heads = small.num_attention_heads, kv = small.kv_heads(), d = small.head_size();
  at::Tensor x = at::randn({1, t, small.hidden_size});
  auto [cos, sin] = Rope(small).cos_sin(0, t, at::kCPU);
  auto& nope = m->model->layer_list[1]->self_attn;
  nope->q_proj->weight.normal_(0.0, 0.5);  // scores far from uniform: positions matter
  nope->k_proj->weight.normal_(0.0, 0.5);
  at::Tensor got = nope->forward(x, cos, sin, nullptr, nullptr);
  at::Tensor q = nope->q_proj(x).view({1, t, heads, d}).transpose(1, 2);
  at::Tensor k = nope->k_proj(x).view({1, t, kv, d}).transpose(1, 2).repeat_interleave(heads / kv, 1);
  at::Tensor v = nope->v_proj(x).view({1, t, kv, d}).transpose(1, 2).repeat_interleave(heads / kv, 1);
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  s = s.masked_fill(at::ones({t, t}, at::kBool).triu(1), -INFINITY);
  at::Tensor want = nope->o_proj(at::matmul(at::softmax(s, -1), v).transpose(1, 2).reshape({1, t, heads * d}));
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
  // Layer 0 rotates: the same weights there give another output.
  auto& roped = m->model->layer_list[0]->self_attn;
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"})
    roped->named_parameters()[name].copy_(nope->named_parameters()[name]);
  EXPECT_GT((roped->forward(x, cos, sin, nullptr, nullptr) - got).abs().max().item<double>(), 1e-3);
}

// train.precision bf16: the q/k norms (fp32 weights on bf16 projections) under CPU autocast give
// the fp32 logits to bf16's rounding, and gradients reach them.
TEST(LlamaConfig, Qwen3UnderBf16AutocastTracksFp32) {
  LlamaConfig c = tiny();
  c.qk_norm = true;
  c.finalize();
  torch::manual_seed(4);
  LlamaForCausalLM m(c);
  {
    at::NoGradGuard g;
    for (auto& p : m->named_parameters())
      if (p.key().find("_norm.weight") != std::string::npos) p.value().normal_(1.0, 0.5);
  }
  at::Tensor ids = at::randint(0, c.vocab_size, {2, 7}, at::kLong);
  at::Tensor fp32 = m->forward(ids).detach();
  at::Tensor bf16;
  {
    PrecisionScope scope("bf16", at::kCPU);
    bf16 = m->forward(ids);
    bf16.to(at::kFloat).pow(2).mean().backward();
  }
  EXPECT_LE((bf16.to(at::kFloat) - fp32).abs().max().item<double>(), 0.05 * fp32.abs().max().item<double>());
  at::Tensor grad = m->model->layer_list[0]->self_attn->q_norm->weight.grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

TEST(LlamaConfig, EosTokenIdListRoundTripsAndStopsGeneration) {
  // Llama 3 Instruct's config.json names three ids that end generation.
  nlohmann::json j = to_hf_json(tiny());
  j["vocab_size"] = 200;
  j["eos_token_id"] = {128, 7, 128, 9};
  LlamaConfig c = from_hf_json(j, "config.json");
  EXPECT_EQ(c.eos_token_id, 128);
  EXPECT_EQ(c.more_eos_token_ids, (std::vector<int64_t>{7, 9}));  // the first's repeat dropped
  EXPECT_EQ(to_hf_json(c)["eos_token_id"], nlohmann::json({128, 7, 9}));
  EXPECT_TRUE(to_hf_json(tiny())["eos_token_id"].is_number_integer());  // one id stays one
  // generate stops at every id of the list, whatever the tokenizer's eos (here 9, not the head).
  SamplingOptions opt;
  opt.eos_id = 9;
  opt.more_stop_ids = config_stop_ids(c);
  EXPECT_TRUE(is_stop_token(opt, 9) && is_stop_token(opt, 7) && is_stop_token(opt, 128));
  EXPECT_FALSE(is_stop_token(opt, 8));
  // Bad lists are refused naming the file and what was expected.
  for (const nlohmann::json& bad : {nlohmann::json::array(), nlohmann::json({2, "x"}), nlohmann::json({2, -1}),
                                    nlohmann::json({2, 200})}) {
    j["eos_token_id"] = bad;
    try {
      from_hf_json(j, "config.json");
      ADD_FAILURE() << bad.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("eos_token_id"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace condense
