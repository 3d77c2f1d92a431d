// The explicit table of recipe kinds: each kind is a function that runs a resolved RunConfig.
// `condense train` looks the recipe's `kind` up here; recipe_kind_names() (used by the parser
// to validate `kind`) lists the same names.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "recipes/run_config.h"

namespace condense {

struct RunOptions {
  bool resume = false;  // continue from the latest checkpoint in the run's checkpoint dir
  // When set, the weights start from this file instead of `init` (a kind that builds its own
  // starting point: kv_heads / kv_project's compressed_init.h5), while the recipe, and so
  // recipe.yaml, keeps `init` as the user gave it: reused, it compresses again.
  std::string init_weights;
};

struct RecipeKind {
  const char* name;
  const char* summary;
  std::function<int(const RunConfig&, const RunOptions&)> run;
};

const std::vector<RecipeKind>& recipe_kinds();
// Runs cfg.kind; throws listing the valid kinds if unknown.
int run_recipe(const RunConfig& cfg, const RunOptions& options);

}  // namespace condense
