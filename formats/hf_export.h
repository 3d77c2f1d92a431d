// condense checkpoint -> Hugging Face directory that transformers' from_pretrained loads:
// config.json (LlamaForCausalLM, torch_dtype), generation_config.json, model.safetensors or
// shards past `max_shard_bytes` with model.safetensors.index.json, and, when the checkpoint
// has a tokenizer, tokenizer.model + tokenizer_config.json + special_tokens_map.json
// (LlamaTokenizer with bos added, eos not). The tied LM head is not written (transformers
// ties it from config.json). The directory is assembled beside OUT_DIR and renamed into
// place, so a failure leaves nothing behind; an existing non-empty OUT_DIR is refused.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

// "f32" | "f16" | "bf16" -> dtype; anything else is an error listing the choices.
at::ScalarType parse_export_dtype(const std::string& name);

// The model's tensors under their HF names, in module order (no lm_head when tied).
std::vector<std::pair<std::string, at::Tensor>> hf_state_dict(LlamaForCausalLM& model);

struct ExportStats {
  uint64_t bytes_written = 0;  // tensor data
  double seconds = 0;
  std::vector<std::string> files;
};

ExportStats export_hf(const std::string& checkpoint_path, const std::string& out_dir,
                      const std::string& dtype, uint64_t max_shard_bytes);

}  // namespace condense
