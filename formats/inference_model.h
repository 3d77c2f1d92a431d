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

#include "compressors/kv_budget.h"
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

// What a full-precision KV cache of `model` holds per position, in bytes, with its widths as
// set now (any KV projection's rank, CSKV's factors): one position through a one-position
// cache. Reported by eval and score so that a --kv-rank / --kv-budget loss comes with its size.
double kv_bytes_per_token(LlamaForCausalLM& model);

// --kv-window W (0: off): CSKV's window of recent positions read exactly (compressors/cskv.h).
// Throws naming `source` when W > 0 and the model has no CSKV factors.
void set_kv_window(LlamaForCausalLM& model, int64_t window, const std::string& source);

// --kv-budget F (0: off): ranks of the model's KV projections that cache at most F of the
// full-rank bytes, per layer or per KV head (`granularity`, --kv-granularity: "layer" |
// "head"), allocated from calibration sensitivity (compressors/kv_budget.h) on the last
// validation windows of `dataset` (empty: the checkpoint recipe's token store). Throws naming
// `source` when the model has no projections, --kv-budget when F is out of range and
// --kv-granularity when it names neither.
void set_kv_budget(LlamaForCausalLM& model, double budget, const std::string& granularity,
                   const Checkpoint& ckpt, const std::string& source, std::string dataset);
// The option checks set_kv_budget starts with, for callers that decide first whether to call
// it: --kv-granularity names layer or head, and a granularity other than layer comes with a
// budget. Returns the granularity.
KVBudgetGranularity check_kv_granularity(double budget, const std::string& granularity);

}  // namespace condense
