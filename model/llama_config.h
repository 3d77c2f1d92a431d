// LlamaConfig: the architecture of a Llama-style decoder, with Hugging Face's field names so
// that config.json round-trips and recipes read like HF configs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace condense {

// Hugging Face's rope_scaling, the kinds that rescale RoPE's frequencies once (model/rope.h):
// "linear" (every inverse frequency divided by factor: positions interpolated), "llama3"
// (Llama 3.1/3.2: wavelengths above original_max_position_embeddings / low_freq_factor divided
// by factor, below original / high_freq_factor kept, smoothly blended between) and "longrope"
// (Phi-3 / Phi-3.5: inverse frequency i divided by short_factor[i], cos and sin multiplied by
// attention_factor). An empty type is plain RoPE. LongRoPE switches to long_factor for a whole
// sequence longer than original_max_position_embeddings (transformers' dynamic update), which
// condense does not compute: a longrope model's context is capped at the original length, where
// the short factors are exact (long_factor is carried for exports). Kinds that depend on the
// sequence length throughout (dynamic, yarn) are refused where configs are read.
struct RopeScaling {
  std::string type;  // "", "linear", "llama3" or "longrope"
  double factor = 1.0;
  double low_freq_factor = 1.0;                      // llama3
  double high_freq_factor = 4.0;                     // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3, longrope
  std::vector<double> short_factor, long_factor;    // longrope: one per frequency (rotary_dim / 2)
  double attention_factor = 1.0;                    // longrope
  bool operator==(const RopeScaling& o) const {
    return type == o.type && factor == o.factor && low_freq_factor == o.low_freq_factor &&
           high_freq_factor == o.high_freq_factor &&
           original_max_position_embeddings == o.original_max_position_embeddings &&
           short_factor == o.short_factor && long_factor == o.long_factor &&
           attention_factor == o.attention_factor;
  }
};

struct LlamaConfig {
  int64_t vocab_size = 0;  // 0 in a recipe: taken from the tokenizer
  int64_t hidden_size = 256;
  int64_t intermediate_size = 688;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 0;  // 0: same as num_attention_heads (MHA)
  int64_t head_dim = 0;             // 0: hidden_size / num_attention_heads
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  // RoPE rotates the first rotary_dim() = int(head_dim * partial_rotary_factor) channels of each
  // query and key head (rotate-half pairs within them) and passes the rest through unrotated:
  // Hugging Face's name and rounding (Phi-4-mini: 0.75; llama.cpp's rope.dimension_count).
  // A model with it is written to config.json as Phi3ForCausalLM, the Llama-shaped family whose
  // transformers code applies it.
  double partial_rotary_factor = 1.0;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  double attention_dropout = 0.0;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  // More ids that end generation besides eos_token_id: the rest of a Hugging Face config's
  // eos_token_id list (Llama 3 Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>), carried by
  // checkpoints and written back as that list by exports. Empty for a single id (recipes never
  // set it: a model trained from scratch has its tokenizer's eos alone).
  std::vector<int64_t> more_eos_token_ids;
  // Carried like more_eos_token_ids: from a Hugging Face config or GGUF through checkpoints to
  // exports (recipes never set it).
  RopeScaling rope_scaling;
  // Biases on q_proj, k_proj and v_proj (not o_proj, not the MLP): Qwen2's attention, which is
  // otherwise Llama's. Read from a Qwen2 config.json (model_type "qwen2") or GGUF (architecture
  // "qwen2") and written back as one; carried like rope_scaling (recipes never set it).
  bool qkv_bias = false;
  // RMSNorm of every query and key head (weights [head_dim], shared by the heads) between
  // q_proj/k_proj and RoPE: Qwen3's attention, otherwise Llama's. Carried like qkv_bias, from and
  // to a Qwen3 config.json (model_type "qwen3") or GGUF (architecture "qwen3").
  bool qk_norm = false;
  // SmolLM3's NoPE layers, with Hugging Face's name and meaning: one entry per layer, 1 where
  // the layer applies RoPE to queries and keys, 0 where it attends without positions (SmolLM3:
  // every 4th layer). Empty: RoPE in every layer (a list of ones is stored empty, the plain
  // Llama it is). Carried like qkv_bias, from and to a SmolLM3 config.json (model_type
  // "smollm3") or GGUF (architecture "smollm3", whose pattern llama.cpp fixes at every 4th).
  std::vector<int64_t> no_rope_layers;
  // Sliding-window attention (Mistral v0.1, Phi-3-mini, Qwen2/3 and SmolLM3 where their configs
  // turn it on): in a windowed layer the query at position i attends to the keys at positions
  // i - sliding_window < j <= i (transformers' sliding-window mask), in the others to all j <= i.
  // 0: none (a window as long as the context never binds and is stored as none).
  // sliding_window_layers: one entry per layer, 1 windowed, 0 full attention (Hugging Face's
  // layer_types "sliding_attention" / "full_attention"); empty with a window: every layer. Carried
  // like no_rope_layers; a model windowing only some layers is written back as its Qwen2, Qwen3
  // or SmolLM3 class (their layer_types), one windowing all as Mistral (or Phi-3 with partial RoPE).
  int64_t sliding_window = 0;
  std::vector<int64_t> sliding_window_layers;
  // Gemma's decoder, gemma = 2 (Gemma2ForCausalLM, model_type "gemma2"; llama.cpp's gemma2) or 3
  // (Gemma3ForCausalLM, "gemma3_text"; llama.cpp's gemma3); 0: not Gemma. Both are Llama's with
  //  - a norm on each residual branch's output too: post_attention_layernorm on the attention's
  //    (Llama's post_attention_layernorm is the MLP's input norm: same name, other place),
  //    pre_feedforward_layernorm / post_feedforward_layernorm around the MLP;
  //  - GeGLU: GELU (tanh approximation) where Llama has SiLU;
  //  - token embeddings multiplied by sqrt(hidden_size) (rounded to the weights' dtype);
  //  - attention scaled by query_pre_attn_scalar^-1/2 (0: head_dim, Llama's scale, filled in by
  //    finalize()).
  // Gemma 3 adds q/k norms (qk_norm) and puts its windowed layers ("sliding_attention") on plain
  // RoPE with base rope_local_theta (0: rope_theta, filled in by finalize()), the others on
  // rope_theta with rope_scaling; Gemma 2 has one RoPE and soft-caps (below).
  // Gemma's RMSNorms scale by 1 + w: condense's norms hold 1 + w (formats/gemma_norms.h converts
  // on the way in and out). Carried like qk_norm (recipes never set it).
  int gemma = 0;
  double query_pre_attn_scalar = 0;
  double rope_local_theta = 0;
  // Gemma 2's soft-capping, cap * tanh(x / cap), 0 for none: of every attention score (after the
  // scale, before the mask and softmax) and of the logits (model/softcap.h). Gemma models only.
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;

  // Fills the derived defaults (kv heads, head_dim) and checks divisibility and ranges;
  // throws naming the offending field.
  void finalize();
  int64_t kv_heads() const { return num_key_value_heads > 0 ? num_key_value_heads : num_attention_heads; }
  int64_t head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // The attention window of `layer`: sliding_window where the layer is windowed, else 0 (all).
  int64_t window(int64_t layer) const {
    return sliding_window > 0 && (sliding_window_layers.empty() ||
                                  sliding_window_layers.at(static_cast<size_t>(layer)) != 0)
               ? sliding_window
               : 0;
  }
  int64_t rotary_dim() const {
    return static_cast<int64_t>(static_cast<double>(head_size()) * partial_rotary_factor);
  }
  // The attention's softmax scale: 1 / sqrt(query_pre_attn_scalar), else 1 / sqrt(head_dim).
  double attention_scale() const;
  // What the decoder multiplies token embeddings by: sqrt(hidden_size) in Gemma, else 1 (for
  // vectors meant to sit among the embeddings the decoder reads).
  double embedding_scale() const;
  bool is_gemma() const { return gemma != 0; }
  // Whether `layer` takes the windowed layers' RoPE (Gemma 3's local layers).
  bool local_rope(int64_t layer) const { return gemma == 3 && window(layer) > 0; }
  bool uses_rope(int64_t layer) const {
    return no_rope_layers.empty() || no_rope_layers.at(static_cast<size_t>(layer)) != 0;
  }
  int64_t num_parameters() const;
};

// Hugging Face config.json (LlamaForCausalLM; MistralForCausalLM, Qwen2ForCausalLM and
// Phi3ForCausalLM read as the Llamas they are, Qwen3ForCausalLM, SmolLM3ForCausalLM,
// Gemma2ForCausalLM and Gemma3ForCausalLM) <-> LlamaConfig; a Gemma 2 / 3 is written as
// Gemma2ForCausalLM / Gemma3ForCausalLM, a model with
// qkv_bias as Qwen2ForCausalLM, one with qk_norm as Qwen3ForCausalLM, one with NoPE layers as
// SmolLM3ForCausalLM, one with partial_rotary_factor < 1 as Phi3ForCausalLM (whose weights
// formats/hf_export.cpp writes fused).
// from_hf_json checks that the model is one of these and names the missing or mistyped field;
// `source` names the file in errors.
nlohmann::json to_hf_json(const LlamaConfig& c);
// What the attention has beyond Llama's, for messages: "Gemma 2's decoder", "Gemma 3's decoder", "q/k/v biases
// (Qwen2)", "q/k norms (Qwen3)", "layers without RoPE (SmolLM3)", or "" for a plain Llama.
std::string attention_extras(const LlamaConfig& c);
LlamaConfig from_hf_json(const nlohmann::json& j, const std::string& source);

// The partial_rotary_factor that rotates `rotary` of `head_dim` channels: rotary / head_dim,
// raised to the next double where int(head_dim * factor) would round below `rotary`.
double partial_rotary_factor_for(int64_t rotary, int64_t head_dim);

// LongRoPE's attention factor for a context `factor` times its original length `original`, as
// transformers and llama.cpp's converter derive it: sqrt(1 + ln(factor) / ln(original)), 1 for
// factor <= 1.
double longrope_attention_factor(double factor, int64_t original);

}  // namespace condense
