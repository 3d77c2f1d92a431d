#include "launch/inference_model.h"

#include <spdlog/spdlog.h>

#include "compressors/lora.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt) {
  LlamaForCausalLM model(ckpt.config());
  ckpt.load_model(model);
  if (merge_stored_adapters(model, ckpt.file()))
    spdlog::info("{}: merged its recovery adapters into the weights", ckpt.file().path());
  return model;
}

}  // namespace condense
