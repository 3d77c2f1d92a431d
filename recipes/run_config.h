// RunConfig: everything a recipe says, as plain structs with defaults. The YAML recipe is
// parsed into it in one place (recipes/recipe_parser.h); the resolved config is printed at
// start, stored in checkpoints, and hashed to check that all ranks run the same recipe.
#pragma once
#include <string>

#include "comm/comm_config.h"
#include "compressors/compressor_config.h"
#include "data/data_config.h"
#include "memory/memory_config.h"
#include "model/llama_config.h"
#include "trainer/train_config.h"

namespace condense {

struct RunConfig {
  std::string kind = "pretrain";  // recipe kind, see recipes/recipe.h
  std::string name = "run";
  std::string out_dir;            // empty: runs/<name>
  std::string init;               // optional checkpoint whose model weights start the run
  LlamaConfig model;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  CommConfig comm;
  MemoryConfig memory;
  RecoveryConfig recovery;  // finetune / distill
  DistillConfig distill;    // finetune / distill
  ContextConfig context;    // context_compressor
  KVConfig kv;              // kv_heads / kv_project
};

}  // namespace condense
