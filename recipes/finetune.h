// The `finetune` and `distill` recipe kinds: recovery training of a (pruned) checkpoint named
// by `init`. `recovery:` says what trains (full, lora, perp; train.trainable overrides which
// model parameters train), masks from the init checkpoint are kept exactly, and `distill`
// adds a frozen teacher (distill.teacher) whose logits (and optionally hidden states) the
// student learns, mixed with cross-entropy by distill.kd_ratio. Validation always reports
// plain cross-entropy, so runs of every kind compare.
#pragma once
#include "recipes/recipe.h"

namespace condense {

int run_finetune(const RunConfig& cfg, const RunOptions& options);
int run_distill(const RunConfig& cfg, const RunOptions& options);

}  // namespace condense
