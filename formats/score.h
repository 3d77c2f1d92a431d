// `condense score`: per-position next-token log-probabilities of a text under a model, from a
// condense checkpoint (file or run directory), an exported Hugging Face directory or a GGUF
// file, so an export can be diffed against its source with one command. The text is
// tokenized with the model's tokenizer as <s> + encode(text); position i holds token ids[i]
// and the distribution over ids[i+1]. Output JSON:
//   {"source", "tokens", "predicted", "nll" (sum over predicted positions, nats),
//    "mean_nll", "perplexity", "positions": [{"pos", "id", "next_id", "logprob",
//    "top": [[id, logprob], ...]} (top_k best, descending) or "logprobs": [V floats] (full)],
//    with a KV cache also "kv_cache" and "kv_bytes_per_token"}
// With a compressed context (--context / --context-vectors, launch/context_commands.h) the model
// reads the compressed context and then encode(text) without <s>: position 0 is the context's
// last position (id -1: ARC's <Cont>, CompLLM's last concept embedding) predicting the text's
// first token, and the JSON adds "context_tokens" and "context_positions".
#pragma once
#include <cstdint>
#include <string>

#include "model/llama.h"
#include "text/tokenizer.h"

namespace condense {

struct ScoreOptions {
  std::string text_file;
  std::string json_out;   // empty: the full JSON goes to stdout
  std::string tokenizer;  // .model overriding the source's (required for GGUF sources)
  int64_t top_k = 5;
  bool full = false;      // every position's full log-probability vector
  // Empty: one forward without a cache. "fp" / "int8": the text runs through a KV cache of that
  // kind (model/kv_cache.h), in the cache's chunks, or one token at a time with token_by_token.
  std::string kv_cache;
  bool token_by_token = false;
  int64_t kv_rank = 0;    // > 0: rank of the checkpoint's KV projections
  double kv_budget = 0;   // > 0: ranks of the projections within this share
  std::string kv_granularity = "layer";  // kv_budget: "layer" | "head"
  std::string data;       // kv_budget: calibration token store (empty: the recipe's)
  int64_t kv_window = 0;  // > 0: CSKV's exact window of recent positions
  std::string context_file, context_vectors;  // compressed context before the text
};

// A model plus its tokenizer from any source score and the benchmarks read.
struct ModelSource {
  LlamaForCausalLM model{nullptr};
  std::string tokenizer_bytes;
  std::string kind;  // "checkpoint" | "hf" | "gguf"
};
ModelSource load_model_source(const std::string& source, const std::string& tokenizer_override);

int run_score(const std::string& source, const ScoreOptions& opt);

}  // namespace condense
