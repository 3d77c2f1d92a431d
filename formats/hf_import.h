// Hugging Face Llama directories -> condense. A directory holds config.json (LlamaForCausalLM),
// model.safetensors or shards with model.safetensors.index.json (io/safetensors_shards.h), and
// usually tokenizer.model (sentencepiece). load_hf_dir validates everything against the config
// (missing, unexpected, mis-shaped or non-float tensors are errors naming the file and tensor)
// and builds the model in float32; import_hf writes it as a condense checkpoint
// (trainer/checkpoint.h) at step 0 with a recipe that parse_recipe accepts, so `condense
// train` (init: OUT.h5), eval, generate, info and export read it like any checkpoint.
#pragma once
#include <cstdint>
#include <string>

#include "model/llama.h"

namespace condense {

struct HfModel {
  LlamaForCausalLM model{nullptr};
  std::string tokenizer_bytes;  // empty when the directory has no tokenizer.model
  std::string tokenizer_path;   // where the tokenizer came from ("" when none, or when it is
                                // tokenizer.model with added tokens: the checkpoint holds it)
  uint64_t weight_bytes = 0;    // bytes of tensor data read
};

// `tokenizer_override`: a sentencepiece .model to use instead of DIR/tokenizer.model.
HfModel load_hf_dir(const std::string& dir, const std::string& tokenizer_override = "");

struct ImportStats {
  uint64_t weight_bytes = 0;
  double seconds = 0;
  bool has_tokenizer = false;
};

// Writes OUT (an .h5 file path) atomically; refuses to overwrite an existing file.
ImportStats import_hf(const std::string& dir, const std::string& out_path,
                      const std::string& tokenizer_override = "");

}  // namespace condense
