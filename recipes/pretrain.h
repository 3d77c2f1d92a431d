// The `pretrain` recipe kind: next-token training of a Llama model from scratch (or from
// `init` weights) on a tokenized corpus, preparing the token store on first use.
#pragma once
#include "recipes/recipe.h"
#include "data/token_store.h"

namespace condense {

int run_pretrain(const RunConfig& cfg, const RunOptions& options);

// Shared by recipe kinds: the token store the config names, prepared if it does not exist yet.
std::string resolve_dataset(const DataConfig& data, int64_t seed);
// The run's output directory (runs/<name> unless out_dir is set).
std::string resolve_out_dir(const RunConfig& cfg);

}  // namespace condense
