// The model a checkpoint stands for, as inference and export see it: its weights with any
// adapters a recovery run trained merged in (compressors/lora.h; masks keep their zeros), and
// its KV-cache projections attached at full rank (compressors/kv_project.h; exact there). Used
// by eval, generate, score, export and info, so that no command sees the bare base weights of
// a LoRA/PERP checkpoint.
#pragma once
#include "model/llama.h"
#include "trainer/checkpoint.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt);

// Sets the rank of the model's KV projections (keys and values, 1..head_dim); 0 leaves them at
// full rank. Throws naming `source` when rank > 0 and the model has no projections.
void set_kv_rank(LlamaForCausalLM& model, int64_t rank, const std::string& source);

}  // namespace condense
