#include "model/llama_config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace condense {

void LlamaConfig::finalize() {
  CONDENSE_CHECK(vocab_size > 0, "model.vocab_size must be positive (got {})", vocab_size);
  CONDENSE_CHECK(hidden_size > 0 && intermediate_size > 0 && num_hidden_layers > 0 &&
                     num_attention_heads > 0,
                 "model sizes must be positive (hidden_size {}, intermediate_size {}, "
                 "num_hidden_layers {}, num_attention_heads {})",
                 hidden_size, intermediate_size, num_hidden_layers, num_attention_heads);
  if (num_key_value_heads <= 0) num_key_value_heads = num_attention_heads;
  CONDENSE_CHECK(num_attention_heads % num_key_value_heads == 0,
                 "model.num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                 num_attention_heads, num_key_value_heads);
  if (head_dim <= 0) {
    CONDENSE_CHECK(hidden_size % num_attention_heads == 0,
                   "model.hidden_size ({}) must be divisible by num_attention_heads ({}) "
                   "unless head_dim is set",
                   hidden_size, num_attention_heads);
    head_dim = hidden_size / num_attention_heads;
  }
  CONDENSE_CHECK(head_dim % 2 == 0, "model.head_dim must be even for RoPE (got {})", head_dim);
  if (is_gemma() && query_pre_attn_scalar == 0) query_pre_attn_scalar = static_cast<double>(head_dim);
  if (gemma == 3 && rope_local_theta == 0) rope_local_theta = rope_theta;
  CONDENSE_CHECK(partial_rotary_factor > 0 && partial_rotary_factor <= 1 && rotary_dim() >= 2 &&
                     rotary_dim() % 2 == 0,
                 "model.partial_rotary_factor {} rotates {} of head_dim {} channels; expected a "
                 "fraction in (0, 1] that rotates an even count of at least 2", partial_rotary_factor,
                 rotary_dim(), head_dim);
  CONDENSE_CHECK(rms_norm_eps > 0 && rope_theta > 0, "model.rms_norm_eps and rope_theta must be > 0");
  CONDENSE_CHECK(max_position_embeddings > 0, "model.max_position_embeddings must be positive");
  const RopeScaling& rs = rope_scaling;
  CONDENSE_CHECK(rs.type.empty() || rs.type == "linear" || rs.type == "llama3" || rs.type == "longrope",
                 "rope_scaling type '{}' is not supported (linear, llama3, longrope)", rs.type);
  CONDENSE_CHECK(rs.type.empty() || rs.factor > 0, "rope_scaling factor must be > 0 (got {})", rs.factor);
  CONDENSE_CHECK(rs.type != "llama3" || (rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor &&
                                         rs.original_max_position_embeddings > 0),
                 "rope_scaling (llama3) needs 0 < low_freq_factor < high_freq_factor and "
                 "original_max_position_embeddings > 0 (got {}, {}, {})", rs.low_freq_factor,
                 rs.high_freq_factor, rs.original_max_position_embeddings);
  if (rs.type == "longrope") {
    for (const auto* factors : {&rs.short_factor, &rs.long_factor}) {
      CONDENSE_CHECK(static_cast<int64_t>(factors->size()) == rotary_dim() / 2, "rope_scaling "
                     "(longrope) needs {} factors each (one per frequency of the {} rotated channels), "
                     "got {}", rotary_dim() / 2, rotary_dim(), factors->size());
      for (double f : *factors)
        CONDENSE_CHECK(std::isfinite(f) && f > 0, "rope_scaling (longrope) factor {} is not positive", f);
    }
    CONDENSE_CHECK(std::isfinite(rs.attention_factor) && rs.attention_factor > 0,
                   "rope_scaling (longrope) attention_factor {} is not positive", rs.attention_factor);
    // Within the original length the short factors are exact; past it transformers switches
    // the whole sequence to the long ones, which condense does not compute.
    CONDENSE_CHECK(max_position_embeddings <= rs.original_max_position_embeddings,
                   "model.max_position_embeddings {} exceeds LongRoPE's original_max_position_embeddings "
                   "{}, past which the model uses its long factors (condense computes the short ones)",
                   max_position_embeddings, rs.original_max_position_embeddings);
  }
  CONDENSE_CHECK(!(qkv_bias && qk_norm), "a model with both q/k/v biases (Qwen2) and q/k norms "
                 "(Qwen3) has no Hugging Face architecture; condense builds one or the other");
  if (!no_rope_layers.empty()) {
    CONDENSE_CHECK(static_cast<int64_t>(no_rope_layers.size()) == num_hidden_layers,
                   "no_rope_layers has {} entries for {} layers (one each: 1 RoPE, 0 none)",
                   no_rope_layers.size(), num_hidden_layers);
    for (int64_t v : no_rope_layers)
      CONDENSE_CHECK(v == 0 || v == 1, "no_rope_layers holds {}, expected 1 (RoPE) or 0 (none)", v);
    // Every layer with RoPE is the plain Llama: stored as one (to_hf_json writes a Llama).
    if (std::count(no_rope_layers.begin(), no_rope_layers.end(), 1) == num_hidden_layers)
      no_rope_layers.clear();
  }
  CONDENSE_CHECK(no_rope_layers.empty() || !(qkv_bias || qk_norm), "a model with layers without "
                 "RoPE (SmolLM3) and {} has no Hugging Face architecture", qkv_bias ? "q/k/v biases" : "q/k norms");
  CONDENSE_CHECK(sliding_window >= 0, "sliding_window is {}, expected a positive count or 0 (none)",
                 sliding_window);
  if (sliding_window == 0) sliding_window_layers.clear();
  if (!sliding_window_layers.empty()) {
    CONDENSE_CHECK(static_cast<int64_t>(sliding_window_layers.size()) == num_hidden_layers,
                   "sliding_window_layers has {} entries for {} layers (one each: 1 windowed, 0 full)",
                   sliding_window_layers.size(), num_hidden_layers);
    for (int64_t v : sliding_window_layers)
      CONDENSE_CHECK(v == 0 || v == 1, "sliding_window_layers holds {}, expected 1 (windowed) or 0 (full)", v);
    const auto windowed = std::count(sliding_window_layers.begin(), sliding_window_layers.end(), 1);
    if (windowed == num_hidden_layers) sliding_window_layers.clear();  // every layer: stored empty
    if (windowed == 0) {
      sliding_window = 0;
      sliding_window_layers.clear();
    }
  }
  // Windows on some layers only are written as layer_types, which Qwen2/Qwen3/SmolLM3/Gemma configs have.
  CONDENSE_CHECK(sliding_window_layers.empty() || is_gemma() || qkv_bias || qk_norm || !no_rope_layers.empty(),
                 "a model with a sliding window on some layers only and neither q/k/v biases, q/k "
                 "norms nor layers without RoPE has no Hugging Face architecture (Mistral and Phi-3 "
                 "window every layer)");
  // Phi3ForCausalLM and llama.cpp's phi3 take LongRoPE with partial RoPE, no other scaling.
  CONDENSE_CHECK(rotary_dim() == head_dim || rope_scaling.type.empty() || rope_scaling.type == "longrope",
                 "partial_rotary_factor {} with rope_scaling '{}': only LongRoPE (or none) has a Phi-3 "
                 "form", partial_rotary_factor, rope_scaling.type);
  CONDENSE_CHECK(rotary_dim() == head_dim || (!qkv_bias && !qk_norm && no_rope_layers.empty()),
                 "a model with partial_rotary_factor {} (Phi3ForCausalLM) and {} has no Hugging Face "
                 "architecture", partial_rotary_factor, attention_extras(*this));
  CONDENSE_CHECK(query_pre_attn_scalar >= 0 && rope_local_theta >= 0, "query_pre_attn_scalar {} and "
                 "rope_local_theta {} must be >= 0 (0: the default)", query_pre_attn_scalar, rope_local_theta);
  CONDENSE_CHECK(gemma == 0 || gemma == 2 || gemma == 3, "gemma {} names no Gemma decoder (2 or 3; 0: none)", gemma);
  CONDENSE_CHECK(is_gemma() || query_pre_attn_scalar == 0, "query_pre_attn_scalar belongs to Gemma's "
                 "decoder, which this model is not");
  CONDENSE_CHECK(gemma == 3 || rope_local_theta == 0, "rope_local_theta belongs to Gemma 3's decoder, "
                 "which this model is not");
  CONDENSE_CHECK(attn_logit_softcapping >= 0 && final_logit_softcapping >= 0, "attn_logit_softcapping {} and "
                 "final_logit_softcapping {} must be >= 0 (0: none)", attn_logit_softcapping, final_logit_softcapping);
  CONDENSE_CHECK(gemma != 3 || attn_logit_softcapping == 0, "attn_logit_softcapping {}: transformers' "
                 "Gemma 3 does not apply it (Gemma 2's decoder does)", attn_logit_softcapping);
  CONDENSE_CHECK(is_gemma() || (attn_logit_softcapping == 0 && final_logit_softcapping == 0), "soft-capping "
                 "(attn_logit_softcapping, final_logit_softcapping) belongs to Gemma's decoder, which this model is not");
  CONDENSE_CHECK(!is_gemma() || (qk_norm == (gemma == 3) && !qkv_bias && no_rope_layers.empty() && rotary_dim() == head_dim),
                 "Gemma {}'s decoder has {}q/k norms, no q/k/v biases, RoPE on every layer and whole heads "
                 "(this one: qk_norm {}, qkv_bias {}, {} NoPE entries, partial_rotary_factor {})", gemma,
                 gemma == 3 ? "" : "no ", qk_norm, qkv_bias, no_rope_layers.size(), partial_rotary_factor);
  CONDENSE_CHECK(!is_gemma() || rope_scaling.type.empty() || rope_scaling.type == "linear", "Gemma {} with "
                 "rope_scaling '{}': its Hugging Face and llama.cpp forms take linear scaling (or none)",
                 gemma, rope_scaling.type);
  for (int64_t id : more_eos_token_ids)
    CONDENSE_CHECK(id >= 0 && id < vocab_size, "eos_token_id: {} is not a token id of a vocabulary of {}",
                   id, vocab_size);
}

int64_t LlamaConfig::num_parameters() const {
  int64_t hd = head_size(), kv = kv_heads();
  int64_t attn = hidden_size * num_attention_heads * hd * 2 + hidden_size * kv * hd * 2;
  int64_t mlp = 3 * hidden_size * intermediate_size;
  int64_t per_layer = attn + mlp + (is_gemma() ? 4 : 2) * hidden_size + (qkv_bias ? (num_attention_heads + 2 * kv) * hd : 0) +
                      (qk_norm ? 2 * hd : 0);
  int64_t embed = vocab_size * hidden_size;
  return embed * (tie_word_embeddings ? 1 : 2) + per_layer * num_hidden_layers + hidden_size;
}

double LlamaConfig::attention_scale() const {
  return 1.0 / std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_size()));
}

double LlamaConfig::embedding_scale() const {
  return is_gemma() ? std::sqrt(static_cast<double>(hidden_size)) : 1.0;
}

std::string attention_extras(const LlamaConfig& c) {
  return c.gemma == 2               ? "Gemma 2's decoder"
         : c.gemma == 3             ? "Gemma 3's decoder"
         : c.qkv_bias               ? "q/k/v biases (Qwen2)"
         : c.qk_norm                ? "q/k norms (Qwen3)"
         : !c.no_rope_layers.empty() ? "layers without RoPE (SmolLM3)"
                                     : "";
}

double partial_rotary_factor_for(int64_t rotary, int64_t head_dim) {
  double f = static_cast<double>(rotary) / static_cast<double>(head_dim);
  while (static_cast<int64_t>(static_cast<double>(head_dim) * f) < rotary) f = std::nextafter(f, 2.0);
  return f;
}

double longrope_attention_factor(double factor, int64_t original) {
  return factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(static_cast<double>(original)));
}

}  // namespace condense
