// What GGUF import (formats/gguf_import.cpp) and export (formats/gguf_llama.cpp) share about
// llama.cpp's architectures: the per-architecture metadata keys, which ones permute q/k rows,
// smollm3's fixed NoPE pattern, gemma2's / gemma3's attention scale and window patterns, and the keys condense
// adds for Llama 3 RoPE parameters.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/llama_config.h"

namespace condense::gguf_arch {

// Llama 3 RoPE parameters llama.cpp does not keep, written by condense's exports (the factor
// too: rope_freqs alone gives it only when some frequency is fully divided).
inline constexpr const char* kGgufFactorKey = "condense.rope.scaling.factor";
inline constexpr const char* kGgufLowFreqFactorKey = "condense.rope.scaling.low_freq_factor";
inline constexpr const char* kGgufHighFreqFactorKey = "condense.rope.scaling.high_freq_factor";

// The architecture's metadata keys: "llama.block_count", "qwen2.block_count", ...
struct ArchKeys {
  std::string arch;
  std::string operator()(const char* key) const { return arch + "." + key; }
  // llama.cpp's llama and smollm3 graphs rotate adjacent pairs: their q/k rows are permuted
  // (qwen2/qwen3: NEOX).
  bool permutes_qk() const { return arch == "llama" || arch == "smollm3"; }
};

// The NoPE pattern llama.cpp's smollm3 graph fixes (hparams.n_no_rope_layer_step = 4, not a
// GGUF key): layer i applies RoPE unless (i + 1) % 4 == 0, as SmolLM3Config's default
// no_rope_layer_interval. Empty (RoPE everywhere) below 4 layers, as LlamaConfig stores it.
inline std::vector<int64_t> smollm3_gguf_rope_layers(int64_t layers) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < layers; ++i) out.push_back((i + 1) % 4 != 0 ? 1 : 0);
  if (layers < 4) out.clear();
  return out;
}

// The query_pre_attn_scalar llama.cpp's gemma2 and gemma3 graphs imply (llama_model::load_hparams
// sets f_attention_scale; no key carries it): queries scaled by 1/sqrt(head_dim), in their "27B"
// (gemma2: 46 layers, gemma3: 62) by 1/sqrt(hidden / heads).
inline double gemma_gguf_query_scalar(const LlamaConfig& c) {
  const int64_t big = c.gemma == 2 ? 46 : 62;
  return static_cast<double>(c.num_hidden_layers == big ? c.hidden_size / c.num_attention_heads : c.head_size());
}

// gemma2's sliding layers, which llama.cpp fixes (set_swa_pattern(2), no key): the even ones, as
// Gemma2Config's default layer_types (1 windowed / 0 full as LlamaConfig::sliding_window_layers).
inline std::vector<int64_t> gemma2_gguf_window_layers(int64_t layers) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < layers; ++i) out.push_back(i % 2 == 0 ? 1 : 0);
  return out;
}

// gemma3's sliding layers where attention.sliding_window_pattern is a period n, llama.cpp's
// default 6 among them (llama_hparams::set_swa_pattern): layer i windowed unless i % n == n - 1
// (n = 0: every layer), 1 windowed / 0 full as LlamaConfig::sliding_window_layers.
inline std::vector<int64_t> gemma3_gguf_window_layers(int64_t layers, int64_t period) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < layers; ++i) out.push_back(period == 0 || i % period < period - 1 ? 1 : 0);
  return out;
}

// Whether a Hugging Face tensor name is a q or k projection (the rows GGUF permutes).
inline bool is_q(const std::string& n) { return n.find("self_attn.q_proj.weight") != std::string::npos; }
inline bool is_k(const std::string& n) { return n.find("self_attn.k_proj.weight") != std::string::npos; }

}  // namespace condense::gguf_arch
