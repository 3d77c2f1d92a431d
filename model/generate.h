// Text generation with a KV cache: one prefill pass over the prompt, then one position per
// step. Greedy when temperature is 0; otherwise temperature, top-k and top-p (nucleus)
// sampling from a seeded generator, so a seed reproduces a sample.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/kv_cache.h"
#include "model/llama.h"

namespace condense {

struct SamplingOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no top-k filter
  double top_p = 1.0;        // 1: no nucleus filter
  uint64_t seed = 0;
  int64_t eos_id = -1;       // stop when sampled; -1: never
  int64_t stop_id = -1;      // a second stop token (a chat format's end of turn); -1: none
  std::vector<int64_t> more_stop_ids;  // the model's other eos ids (LlamaConfig::more_eos_token_ids)
  // > 0: only ids below it are drawn. A model's vocabulary padded past its tokenizer's (rows
  // kept to a multiple of 64, say) has ids no tokenizer can decode.
  int64_t vocab_limit = 0;
  // Decode with the ATen forward even where model/fast_decoder.h applies (comparisons).
  bool aten_decode = false;
};

struct GenerationResult {
  std::vector<int64_t> tokens;  // the new tokens only
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double kv_bytes_per_token = 0;  // what the cache held per position
  double kv_bytes_held = 0;       // what it held at the end (windowed layers: their window)
  // "fast" (model/fast_decoder.h) or "aten (<why the fast decoder does not apply>)".
  std::string decode_path;
  double decode_tokens_per_s() const;
};

// Picks the next token from logits [vocab] (fp32, CPU) under the options.
int64_t sample_token(const at::Tensor& logits, const SamplingOptions& opt, at::Generator& gen);

// Whether `tok` ends generation: eos_id, stop_id or one of more_stop_ids.
bool is_stop_token(const SamplingOptions& opt, int64_t tok);

// The ids a model's config says end generation: eos_token_id and more_eos_token_ids (an
// imported list's head need not be its tokenizer's eos: Llama 3 Instruct's is <|end_of_text|>,
// its tokenizer's <|eot_id|>). For SamplingOptions::more_stop_ids.
std::vector<int64_t> config_stop_ids(const LlamaConfig& c);

// Generates up to max_new_tokens after `prompt` in eval mode without gradients, with a cache of
// the given kind. `prefix_embeds` [P, hidden] (compressed context), when defined, runs through
// the cache first at positions 0 .. P - 1; the prompt may then be empty.
GenerationResult generate(LlamaForCausalLM& model, const std::vector<int64_t>& prompt,
                          const SamplingOptions& opt, const KVCacheOptions& kv = {},
                          const at::Tensor& prefix_embeds = {});

// Runs ids [B, T] through the model with `cache` (appending T positions after its current
// length), in the chunks the cache accepts (KVCache::max_append); returns the final hidden
// states [B, T, hidden]. With an fp cache that is one pass.
at::Tensor prefill(LlamaForCausalLM& model, const at::Tensor& ids, KVCache& cache);
// The same for input embeddings [B, T, hidden].
at::Tensor prefill_embeds(LlamaForCausalLM& model, const at::Tensor& embeds, KVCache& cache);

}  // namespace condense
