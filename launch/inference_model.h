// The model a checkpoint stands for, as inference and export see it: its weights with any
// adapters a recovery run trained merged in (compressors/lora.h; masks keep their zeros). Used
// by eval, generate, score, export and info, so that no command sees the bare base weights of
// a LoRA/PERP checkpoint.
#pragma once
#include "model/llama.h"
#include "trainer/checkpoint.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt);

}  // namespace condense
