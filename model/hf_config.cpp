// LlamaConfig <-> Hugging Face config.json (model/llama_config.h: to_hf_json, from_hf_json): each
// family's keys, defaults and refusals (Llama, Mistral, Qwen2 / Qwen3, SmolLM3, Phi-3, Gemma 2 / 3),
// RoPE scaling and sliding windows as transformers reads them. Checkpoints store their config in
// this form too (trainer/checkpoint.cpp).
#include "model/llama_config.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace condense {

nlohmann::json to_hf_json(const LlamaConfig& c) {
  nlohmann::json eos = c.eos_token_id;
  if (!c.more_eos_token_ids.empty()) {
    eos = nlohmann::json::array({c.eos_token_id});
    for (int64_t id : c.more_eos_token_ids) eos.push_back(id);
  }
  nlohmann::json j{
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.kv_heads()},
      {"head_dim", c.head_size()},
      {"hidden_act", "silu"},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"initializer_range", c.initializer_range},
      {"attention_dropout", c.attention_dropout},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", eos},
      {"torch_dtype", "float32"},
  };
  // The windowed layers as Hugging Face's layer_types.
  nlohmann::json layer_types = nlohmann::json::array();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layer_types.push_back(c.window(i) > 0 ? "sliding_attention" : "full_attention");
  if (c.is_gemma()) {
    // Gemma2Config / Gemma3TextConfig: GeGLU under its own key; the windowed layers (Gemma 3: with
    // their RoPE base) as layer_types, which both read before any pattern; without a window every
    // layer is full attention (sliding_window then unused). Soft caps as numbers or null (none),
    // causal.
    j["architectures"] = {c.gemma == 2 ? "Gemma2ForCausalLM" : "Gemma3ForCausalLM"};
    j["model_type"] = c.gemma == 2 ? "gemma2" : "gemma3_text";
    j.erase("hidden_act");
    j["hidden_activation"] = "gelu_pytorch_tanh";
    j["query_pre_attn_scalar"] = c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar
                                                             : static_cast<double>(c.head_size());
    if (c.gemma == 3) {
      j["rope_local_base_freq"] = c.rope_local_theta > 0 ? c.rope_local_theta : c.rope_theta;
      j["use_bidirectional_attention"] = false;
    }
    j["sliding_window"] = c.sliding_window > 0 ? c.sliding_window : c.max_position_embeddings;
    j["layer_types"] = layer_types;
    auto cap = [](double v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr); };
    j["final_logit_softcapping"] = cap(c.final_logit_softcapping);
    j["attn_logit_softcapping"] = cap(c.attn_logit_softcapping);
    j["attention_bias"] = false;
    // Gemma's default pad_token_id 0 is carried by no condense model.
    j["pad_token_id"] = nullptr;
  } else if (c.qkv_bias || c.qk_norm) {
    // Qwen2's config: its attention has the q/k/v biases built in (no key for them), and
    // head_dim is read with getattr, so it may stay. Qwen3's: q_norm / k_norm are built in;
    // attention_bias would put biases on all four projections, so it is false. Both window the
    // layers layer_types names, with use_sliding_window.
    j["architectures"] = {c.qkv_bias ? "Qwen2ForCausalLM" : "Qwen3ForCausalLM"};
    j["model_type"] = c.qkv_bias ? "qwen2" : "qwen3";
    j["use_sliding_window"] = c.sliding_window > 0;
    if (c.qk_norm) j["attention_bias"] = false;
    if (c.sliding_window > 0) {
      j["sliding_window"] = c.sliding_window;
      j["layer_types"] = layer_types;
      // For readers without layer_types: the first windowed layer where every later one is too
      // (Qwen's own pattern), else past the last layer.
      int64_t first = c.num_hidden_layers;
      while (first > 0 && c.window(first - 1) > 0) --first;
      bool only_tail = true;
      for (int64_t i = 0; i < first; ++i) only_tail = only_tail && c.window(i) == 0;
      j["max_window_layers"] = only_tail ? first : c.num_hidden_layers;
    }
  } else if (!c.no_rope_layers.empty()) {
    // SmolLM3's config: the per-layer list (its interval is only the default when the list is
    // absent).
    j["architectures"] = {"SmolLM3ForCausalLM"};
    j["model_type"] = "smollm3";
    j["no_rope_layers"] = c.no_rope_layers;
    // SmolLM3Config's default pad_token_id is 128004, an embedding row transformers refuses in
    // a smaller vocabulary; condense does not carry it (it changes no probability).
    j["pad_token_id"] = nullptr;
    j["use_sliding_window"] = c.sliding_window > 0;
    if (c.sliding_window > 0) {  // SmolLM3 masks by layer_types
      j["sliding_window"] = c.sliding_window;
      j["layer_types"] = layer_types;
    }
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  } else if (c.rotary_dim() != c.head_size()) {
    // Phi-3's config: its attention rotates the first partial_rotary_factor of each head (the
    // weights go fused, as formats/hf_export.cpp writes them); its window on every layer or none;
    // no dropout.
    j["architectures"] = {"Phi3ForCausalLM"};
    j["model_type"] = "phi3";
    j["partial_rotary_factor"] = c.partial_rotary_factor;
    // Phi3Config's default pad_token_id is 32000, an embedding row transformers refuses in a
    // smaller vocabulary; condense does not carry it (it changes no probability).
    j["pad_token_id"] = nullptr;
    j["sliding_window"] = c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nlohmann::json();
    j["original_max_position_embeddings"] = c.max_position_embeddings;
    j["resid_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["attention_bias"] = false;
  } else if (c.sliding_window > 0) {
    // Mistral's config: Llama's with a window on every layer.
    j["architectures"] = {"MistralForCausalLM"};
    j["model_type"] = "mistral";
    j["sliding_window"] = c.sliding_window;
  } else {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rs.factor}};
  if (rs.type == "llama3")
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", rs.factor},
                         {"low_freq_factor", rs.low_freq_factor}, {"high_freq_factor", rs.high_freq_factor},
                         {"original_max_position_embeddings", rs.original_max_position_embeddings}};
  if (rs.type == "longrope") {
    // The attention factor explicit: transformers would derive it from max_position_embeddings /
    // original_max_position_embeddings, which condense's cap made 1. The original length at the
    // top level, where transformers' dynamic update reads it.
    j["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", rs.short_factor},
                         {"long_factor", rs.long_factor}, {"attention_factor", rs.attention_factor},
                         {"factor", 1.0}};  // (transformers' validation asks for one)
    j["original_max_position_embeddings"] = rs.original_max_position_embeddings;
  }
  return j;
}

namespace {

template <typename T>
void read_field(const nlohmann::json& j, const char* key, T& out, bool required,
                const std::string& source);

// config.json's rope_scaling: {"rope_type" (or the older "type"): "linear" | "llama3" |
// "longrope" | "default", "factor", and for llama3 "low_freq_factor", "high_freq_factor",
// "original_max_position_embeddings"}, every key required as transformers requires it; longrope
// needs "short_factor" and "long_factor" ("factor" and "attention_factor" optional; a Phi-3
// config may name it "su" or "yarn", as Phi3Config renames them). Other kinds and unknown keys
// are refused naming them: they would change the model's probabilities.
RopeScaling read_rope_scaling(const nlohmann::json& rs, bool phi3, const std::string& source) {
  CONDENSE_CHECK(rs.is_object(), "{}: rope_scaling is {}, expected an object", source, rs.dump());
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (!rs.contains(key)) continue;
    CONDENSE_CHECK(rs[key].is_string(), "{}: rope_scaling.{} is {}, expected a string", source, key,
                   rs[key].dump());
    CONDENSE_CHECK(type.empty() || type == rs[key].get<std::string>(), "{}: rope_scaling names two "
                   "types ({})", source, rs.dump());
    type = rs[key].get<std::string>();
  }
  CONDENSE_CHECK(!type.empty(), "{}: rope_scaling {} has no rope_type", source, rs.dump());
  RopeScaling out;
  if (type == "default") return out;
  if (phi3 && (type == "su" || type == "yarn")) type = "longrope";  // Phi3Config's older names
  CONDENSE_CHECK(type == "linear" || type == "llama3" || type == "longrope", "{}: rope_scaling type "
                 "'{}' is not supported (linear, llama3 and longrope are; dynamic and yarn change with "
                 "the sequence)", source, type);
  out.type = type;
  std::vector<std::string> keys = {"rope_type", "type", "factor"};
  if (type == "llama3")
    keys.insert(keys.end(), {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  if (type == "longrope")
    keys.insert(keys.end(), {"short_factor", "long_factor", "attention_factor", "original_max_position_embeddings"});
  for (const auto& [key, value] : rs.items())
    CONDENSE_CHECK(std::find(keys.begin(), keys.end(), key) != keys.end(), "{}: rope_scaling.{} ({}) "
                   "is not supported for rope_type {}", source, key, value.dump(), type);
  const std::string where = source + ": rope_scaling";
  if (type == "longrope") {  // the factors and the lengths are completed by from_hf_json
    read_field(rs, "short_factor", out.short_factor, true, where);
    read_field(rs, "long_factor", out.long_factor, true, where);
    out.factor = 0;  // absent
    read_field(rs, "factor", out.factor, false, where);
    out.attention_factor = 0;  // absent: derived
    read_field(rs, "attention_factor", out.attention_factor, false, where);
    // transformers reads the original length from the config's top level only (a TODO there);
    // this key changes nothing in it, so it changes nothing here.
    if (rs.contains("original_max_position_embeddings"))
      spdlog::warn("{}.original_max_position_embeddings is ignored, as transformers ignores it (it "
                   "reads the top-level key)", where);
    return out;
  }
  read_field(rs, "factor", out.factor, true, where);
  if (type == "llama3") {
    read_field(rs, "low_freq_factor", out.low_freq_factor, true, where);
    read_field(rs, "high_freq_factor", out.high_freq_factor, true, where);
    read_field(rs, "original_max_position_embeddings", out.original_max_position_embeddings, true, where);
  }
  return out;
}

template <typename T>
void read_field(const nlohmann::json& j, const char* key, T& out, bool required,
                const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) {
    CONDENSE_CHECK(!required, "{}: missing field '{}'", source, key);
    return;
  }
  try {
    out = j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", source, key, j[key].dump());
  }
}

// LongRoPE's lengths and attention factor as transformers derives them
// (_compute_longrope_parameters, _longrope_frequency_update): the original length from the
// top-level original_max_position_embeddings (always set in a Phi3Config: 4096 by default), and
// then the factor is max / original; without it the original length is max_position_embeddings
// and the factor rope_scaling's (1 if absent). An absent attention_factor is
// sqrt(1 + ln(factor) / ln(original)) (1 for factor <= 1). Then the context is capped at the
// original length (RopeScaling's comment says why).
void complete_longrope(const nlohmann::json& j, LlamaConfig& c, bool phi3, const std::string& source) {
  RopeScaling& rs = c.rope_scaling;
  int64_t original = phi3 ? 4096 : 0;
  read_field(j, "original_max_position_embeddings", original, false, source);
  double factor = rs.factor > 0 ? rs.factor : 1.0;
  if (original > 0) {
    factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(original);
  } else {
    original = c.max_position_embeddings;
  }
  CONDENSE_CHECK(original > 0, "{}: original_max_position_embeddings is {}, expected a positive count",
                 source, original);
  rs.original_max_position_embeddings = original;
  if (rs.attention_factor == 0) rs.attention_factor = longrope_attention_factor(factor, original);
  rs.factor = 1.0;  // its only effect is the attention factor, which is kept
  if (c.max_position_embeddings > original) {
    spdlog::warn("{}: LongRoPE: condense computes the short factors, which transformers uses up to "
                 "original_max_position_embeddings {}, so max_position_embeddings {} becomes {}",
                 source, original, c.max_position_embeddings, original);
    c.max_position_embeddings = original;
  }
}

}  // namespace

LlamaConfig from_hf_json(const nlohmann::json& j, const std::string& source) {
  CONDENSE_CHECK(j.is_object(), "{}: expected a JSON object", source);
  // transformers 5 moves rope_theta / rope_scaling (Gemma 3: per attention type) under
  // rope_parameters, which condense does not read: refused rather than read as the defaults.
  CONDENSE_CHECK(!j.contains("rope_parameters") || j["rope_parameters"].is_null(), "{}: rope_parameters "
                 "(transformers 5's layout of rope_theta and rope_scaling) is not read; save the config "
                 "with transformers 4 (rope_theta, rope_scaling at the top level)", source);
  std::string model_type;
  read_field(j, "model_type", model_type, true, source);
  CONDENSE_CHECK(model_type != "gemma3", "{}: model_type 'gemma3' is the multimodal Gemma 3 "
                 "(Gemma3ForConditionalGeneration); condense reads its text model, a 'gemma3_text' "
                 "config with Gemma3ForCausalLM weights", source);
  CONDENSE_CHECK(model_type == "llama" || model_type == "mistral" || model_type == "qwen2" ||
                     model_type == "qwen3" || model_type == "smollm3" || model_type == "phi3" ||
                     model_type == "gemma2" || model_type == "gemma3_text",
                 "{}: model_type is '{}', expected 'llama' (or 'mistral', 'qwen2', 'qwen3', "
                 "'smollm3', 'phi3', 'gemma2', 'gemma3_text')", source, model_type);
  const bool gemma2 = model_type == "gemma2", gemma3 = model_type == "gemma3_text", gemma = gemma2 || gemma3;
  const bool qwen = model_type == "qwen2" || model_type == "qwen3";
  const bool smollm3 = model_type == "smollm3";
  // Phi-3 is Llama with fused q/k/v and gate/up tensors (split by formats/hf_import.cpp),
  // Phi3Config's defaults, and LongRoPE in its long-context versions; exported back as a Llama
  // (a Mistral with its window; a Phi-3 with partial RoPE).
  const bool phi3 = model_type == "phi3";
  if (phi3) {
    for (const char* key : {"resid_pdrop", "embd_pdrop"})
      if (j.contains(key) && j[key].is_number() && j[key].get<double>() != 0.0)
        spdlog::warn("{}: {} is {}; condense trains without that dropout", source, key, j[key].dump());
  }
  // Gemma names its activation hidden_activation (GELU, tanh approximation, by default).
  const std::string act_key = gemma ? "hidden_activation" : "hidden_act",
                    act = gemma ? "gelu_pytorch_tanh" : "silu";
  if (j.contains(act_key) && !j[act_key].is_null() && j[act_key] != act)
    fail("{}: {} {} is not supported (expected \"{}\")", source, act_key, j[act_key].dump(), act);
  if (gemma3) {
    CONDENSE_CHECK(!j.contains("use_bidirectional_attention") || j["use_bidirectional_attention"] != true,
                   "{}: use_bidirectional_attention is true (an encoder); condense's models are causal", source);
  }
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (j.contains(bias) && j[bias].is_boolean() && j[bias].get<bool>())
      fail("{}: {}=true is not supported", source, bias);
  LlamaConfig c;
  c.qkv_bias = model_type == "qwen2";  // Qwen2's attention always has them
  c.qk_norm = model_type == "qwen3" || gemma3;  // Qwen3's and Gemma 3's always have these
  if (model_type == "qwen3") c.head_dim = 128;  // Qwen3Config's default (not hidden / heads)
  if (gemma) {  // Gemma2Config's / Gemma3TextConfig's defaults for absent keys
    c.gemma = gemma2 ? 2 : 3;
    c.head_dim = 256;
    c.num_key_value_heads = 4;
    c.rope_theta = gemma2 ? 10000.0 : 1000000.0;
    c.tie_word_embeddings = true;
    c.bos_token_id = 2;
    c.eos_token_id = 1;
    c.query_pre_attn_scalar = 256;
    read_field(j, "query_pre_attn_scalar", c.query_pre_attn_scalar, false, source);
    CONDENSE_CHECK(c.query_pre_attn_scalar > 0, "{}: query_pre_attn_scalar {} must be positive", source,
                   c.query_pre_attn_scalar);
    // Soft caps: a positive number, or null for none (Gemma2Config's defaults 50 and 30 where
    // absent; Gemma 3's none; transformers divides by a 0).
    for (auto [key, value, fallback] : {std::tuple{"attn_logit_softcapping", &c.attn_logit_softcapping, 50.0},
                                        std::tuple{"final_logit_softcapping", &c.final_logit_softcapping, 30.0}}) {
      *value = gemma2 ? fallback : 0.0;
      if (!j.contains(key) || j[key].is_null()) {
        if (j.contains(key)) *value = 0;
        continue;
      }
      read_field(j, key, *value, true, source);
      CONDENSE_CHECK(*value > 0, "{}: {} is {}, expected a positive cap or null", source, key, j[key].dump());
    }
    CONDENSE_CHECK(!gemma3 || c.attn_logit_softcapping == 0, "{}: attn_logit_softcapping is {}, which "
                   "transformers' Gemma 3 attention stores but does not apply; expected null", source,
                   c.attn_logit_softcapping);
  }
  if (gemma3) {
    c.rope_local_theta = 10000.0;
    read_field(j, "rope_local_base_freq", c.rope_local_theta, false, source);
    CONDENSE_CHECK(c.rope_local_theta > 0, "{}: rope_local_base_freq {} must be positive", source,
                   c.rope_local_theta);
  }
  if (phi3) {  // Phi3Config's defaults for absent keys
    c.bos_token_id = 1;
    c.eos_token_id = 32000;
  }
  if (smollm3) {  // SmolLM3Config's defaults for absent keys (tied embeddings: PretrainedConfig's)
    c.num_key_value_heads = 4;
    c.rope_theta = 2000000.0;
    c.tie_word_embeddings = true;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
  }
  read_field(j, "vocab_size", c.vocab_size, true, source);
  read_field(j, "hidden_size", c.hidden_size, true, source);
  read_field(j, "intermediate_size", c.intermediate_size, true, source);
  read_field(j, "num_hidden_layers", c.num_hidden_layers, true, source);
  read_field(j, "num_attention_heads", c.num_attention_heads, true, source);
  read_field(j, "num_key_value_heads", c.num_key_value_heads, false, source);
  if (smollm3 && j.contains("num_key_value_heads") && j["num_key_value_heads"].is_null())
    c.num_key_value_heads = 0;  // SmolLM3Config: null means one per attention head
  read_field(j, "head_dim", c.head_dim, false, source);
  // Absent keys take transformers' LlamaConfig defaults, which is what the file means there
  // (rms_norm_eps: 1e-6 there, 1e-5 in condense's recipes).
  c.rms_norm_eps = phi3 ? 1e-5 : 1e-6;  // Phi3Config's default differs
  read_field(j, "rms_norm_eps", c.rms_norm_eps, false, source);
  read_field(j, "rope_theta", c.rope_theta, false, source);
  // Phi-3's attention rotates the first partial_rotary_factor of each head (Phi-4-mini: 0.75).
  // The other families' transformers code computes the narrower frequencies but rotates whole
  // heads with them, which fails: refused.
  read_field(j, "partial_rotary_factor", c.partial_rotary_factor, false, source);
  CONDENSE_CHECK(phi3 || c.partial_rotary_factor == 1.0, "{}: partial_rotary_factor {} in a '{}' "
                 "config: transformers' {} attention rotates whole heads (Phi-3's rotates part of "
                 "them); expected 1 or no key", source, c.partial_rotary_factor, model_type, model_type);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    c.rope_scaling = read_rope_scaling(j["rope_scaling"], phi3, source);
  if (qwen || smollm3) c.max_position_embeddings = 32768;  // their configs' default
  if (gemma3) c.max_position_embeddings = 131072;
  if (gemma2) c.max_position_embeddings = 8192;
  if (phi3) c.max_position_embeddings = 4096;
  read_field(j, "max_position_embeddings", c.max_position_embeddings, false, source);
  if (c.rope_scaling.type == "longrope") complete_longrope(j, c, phi3, source);
  // Sliding-window attention (LlamaConfig::sliding_window): which layers each family windows.
  // Mistral windows every layer; an absent sliding_window is transformers' MistralConfig
  // default, 4096, null none. Phi-3 windows every layer where its sliding_window is set
  // (Phi3Config's default: none). Qwen2 and Qwen3 use their window only with
  // use_sliding_window true and a window, and only on the layers layer_types marks
  // "sliding_attention" (by default those from max_window_layers on, 28 in their configs).
  int64_t layers = 0;
  read_field(j, "num_hidden_layers", layers, true, source);
  CONDENSE_CHECK(layers > 0, "{}: num_hidden_layers is {}, expected a positive count", source, layers);
  const bool null_window = j.contains("sliding_window") && j["sliding_window"].is_null();
  std::vector<int64_t> windowed(static_cast<size_t>(layers), 0);
  // layer_types' entries as 1 (sliding_attention) or 0 (full_attention), one per layer.
  auto from_layer_types = [&]() {
    const nlohmann::json& types = j["layer_types"];
    CONDENSE_CHECK(static_cast<int64_t>(types.size()) == layers, "{}: layer_types has {} entries for {} "
                   "layers", source, types.size(), layers);
    for (int64_t i = 0; i < layers; ++i) {
      const nlohmann::json& t = types[static_cast<size_t>(i)];
      CONDENSE_CHECK(t == "sliding_attention" || t == "full_attention", "{}: layer_types[{}] is {}, "
                     "expected \"sliding_attention\" or \"full_attention\"", source, i, t.dump());
      windowed[static_cast<size_t>(i)] = t == "sliding_attention" ? 1 : 0;
    }
  };
  const bool has_types = j.contains("layer_types") && j["layer_types"].is_array();
  if ((model_type == "mistral" && !null_window) || (phi3 && j.contains("sliding_window") && !null_window))
    std::fill(windowed.begin(), windowed.end(), 1);
  if (qwen) {
    bool use = false;
    read_field(j, "use_sliding_window", use, false, source);
    if (use && !null_window) {
      if (has_types) {
        from_layer_types();
      } else {
        int64_t max_window_layers = 28;
        read_field(j, "max_window_layers", max_window_layers, false, source);
        for (int64_t i = std::max<int64_t>(0, max_window_layers); i < layers; ++i) windowed[static_cast<size_t>(i)] = 1;
      }
    }
  }
  if (gemma2) {
    // Gemma 2 windows the layers layer_types marks "sliding_attention", by default the even ones
    // (0, 2, ...), as Gemma2Config builds it.
    if (has_types) from_layer_types();
    else for (int64_t i = 0; i < layers; i += 2) windowed[static_cast<size_t>(i)] = 1;
    CONDENSE_CHECK(!null_window || std::count(windowed.begin(), windowed.end(), 1) == 0, "{}: "
                   "sliding_window is null but layer_types has sliding layers (transformers' Gemma 2 "
                   "cannot run it)", source);
  }
  if (gemma3) {
    // Gemma 3 windows the layers layer_types marks "sliding_attention", which by default is every
    // layer but each sliding_window_pattern-th (6), as Gemma3TextConfig builds it. Its window
    // also picks the layer's RoPE base, so it is kept even where it never binds.
    if (has_types) {
      from_layer_types();
    } else {
      // (transformers reads sliding_window_pattern; the _sliding_window_pattern it saves is
      // never read back)
      int64_t pattern = 6;
      read_field(j, "sliding_window_pattern", pattern, false, source);
      CONDENSE_CHECK(pattern > 0, "{}: sliding_window_pattern is {}, expected a positive count", source, pattern);
      for (int64_t i = 0; i < layers; ++i) windowed[static_cast<size_t>(i)] = (i + 1) % pattern != 0;
    }
    CONDENSE_CHECK(!null_window || std::count(windowed.begin(), windowed.end(), 1) == 0, "{}: "
                   "sliding_window is null but layer_types has sliding layers", source);
  }
  if (smollm3) {
    // no_rope_layers (1: RoPE, 0: none), or where absent a NoPE layer every
    // no_rope_layer_interval layers (the 4th, 8th, ...), as SmolLM3Config builds it.
    int64_t interval = 4;
    read_field(j, "no_rope_layer_interval", interval, false, source);
    CONDENSE_CHECK(interval > 0, "{}: no_rope_layer_interval is {}, expected a positive count", source,
                   interval);
    if (j.contains("no_rope_layers") && !j["no_rope_layers"].is_null()) {
      read_field(j, "no_rope_layers", c.no_rope_layers, false, source);
      // transformers reads entry i for layer i: entries past the last layer are never read.
      if (static_cast<int64_t>(c.no_rope_layers.size()) > layers) {
        spdlog::warn("{}: no_rope_layers has {} entries for {} layers; the first {} are used, as "
                     "transformers reads them", source, c.no_rope_layers.size(), layers, layers);
        c.no_rope_layers.resize(static_cast<size_t>(layers));
      }
    } else {
      for (int64_t i = 0; i < layers; ++i) c.no_rope_layers.push_back((i + 1) % interval != 0 ? 1 : 0);
    }
    // SmolLM3 windows the layers layer_types marks "sliding_attention" whenever it has a window
    // (transformers masks by layer_types alone; unlike Qwen's, SmolLM3Config keeps the window
    // without use_sliding_window); without layer_types, its NoPE layers when use_sliding_window
    // is true, as SmolLM3Config builds layer_types.
    if (!null_window && j.contains("sliding_window")) {
      if (has_types) {
        from_layer_types();
      } else {
        bool use_window = false;
        read_field(j, "use_sliding_window", use_window, false, source);
        for (size_t i = 0; use_window && i < c.no_rope_layers.size(); ++i) windowed[i] = c.no_rope_layers[i] == 0;
      }
    }
  }
  // A window at least as long as the context never binds: the model attends to every earlier
  // position (stored without one).
  if (std::count(windowed.begin(), windowed.end(), 1) > 0) {
    int64_t window = 4096;
    read_field(j, "sliding_window", window, false, source);
    CONDENSE_CHECK(window > 0, "{}: sliding_window is {}, expected a positive count or null", source,
                   window);
    if (window < c.max_position_embeddings || gemma3) {
      c.sliding_window = window;
      c.sliding_window_layers = windowed;
    }
  }
  read_field(j, "tie_word_embeddings", c.tie_word_embeddings, false, source);
  read_field(j, "initializer_range", c.initializer_range, false, source);
  read_field(j, "attention_dropout", c.attention_dropout, false, source);
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
    c.bos_token_id = j["bos_token_id"].get<int64_t>();
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer())
    c.eos_token_id = j["eos_token_id"].get<int64_t>();
  // A list (several ids end generation): the first is eos_token_id, the others
  // more_eos_token_ids, written back as the same list; null keeps the default.
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array()) {
    const nlohmann::json& list = j["eos_token_id"];
    CONDENSE_CHECK(!list.empty(), "{}: eos_token_id is an empty list", source);
    for (const nlohmann::json& id : list)
      CONDENSE_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0,
                     "{}: eos_token_id {} holds {}, expected token ids (integers >= 0)", source,
                     list.dump(), id.dump());
    c.eos_token_id = list[0].get<int64_t>();
    for (const nlohmann::json& id : list)
      if (id.get<int64_t>() != c.eos_token_id &&
          std::find(c.more_eos_token_ids.begin(), c.more_eos_token_ids.end(), id.get<int64_t>()) ==
              c.more_eos_token_ids.end())
        c.more_eos_token_ids.push_back(id.get<int64_t>());
  }
  for (const char* key : {"bos_token_id", "eos_token_id"})
    if (j.contains(key) && j[key].is_null())
      spdlog::warn("{}: {} is null; condense keeps {} and an export writes it", source, key,
                   key[0] == 'b' ? c.bos_token_id : c.eos_token_id);
  try {
    c.finalize();
  } catch (const Error& e) {  // its messages use the recipe's names: model.<the config key>
    fail("{}: not a valid model: {}", source, e.what());
  }
  return c;
}

}  // namespace condense
