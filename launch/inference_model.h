// The model a checkpoint stands for, as inference and export see it: its weights with any
// adapters a recovery run trained merged in (compressors/lora.h; masks keep their zeros), and
// its KV-cache compression attached: KV projections at full rank (compressors/kv_project.h;
// exact there) or CSKV's low-rank factors (compressors/cskv.h; fixed ranks). Used
// by eval, generate, score, export and info, so that no command sees the bare base weights of
// a LoRA/PERP checkpoint.
#pragma once
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "trainer/checkpoint.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt);

// The plain Llama of a model with a compressed KV cache, for export: CSKV factors multiplied
// into k_proj / v_proj (compressors/cskv.h), KV projections dropped (the model they project is
// the unchanged one). Removes the hook and returns what it stored, so an export can write it
// beside the weights: method "kv_project" | "cskv" (empty: the model had none) and tensors.
struct KVCompressionParts {
  std::string method;
  std::map<std::string, at::Tensor> tensors;
  nlohmann::json config;  // method, ranks, layout: what a reader needs to apply the tensors
};
KVCompressionParts detach_kv_compression(LlamaForCausalLM& model);

// Sets the rank of the model's KV projections (keys and values, 1..head_dim); 0 leaves them at
// full rank. Throws naming `source` when rank > 0 and the model has no projections.
void set_kv_rank(LlamaForCausalLM& model, int64_t rank, const std::string& source);

}  // namespace condense
