// Weights of a step's micro-batches for losses that average over a varying number of tokens
// (Trainable::tokens; xRAG's padded paraphrases and answers): each micro-batch's gradient counts
// by its tokens, so that accumulating or sharding a batch gives the loss of the whole batch, as
// transformers >= 4.46 does with num_items_in_batch. Fixed-window losses do not use this (their
// micro-batches weigh alike: 1 / grad_accum).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "comm/communicator.h"
#include "data/loader.h"

namespace condense {

struct TokenWeights {
  std::vector<double> backward;  // scale of each micro-batch's mean loss before backward
  std::vector<double> report;    // its share of this rank's reported loss (this rank's tokens)
  double tokens = 0;             // this rank's tokens: its weight in the metrics' mean over ranks
};

// `exchange`: the communicator when this step's gradients are averaged over its ranks (the
// exchange divides by them: each micro-batch then counts by its share of all ranks' tokens,
// times the ranks; one collective); null when they stay this rank's (one process, local-update
// inner steps, 1-bit Adam's momentum steps).
TokenWeights token_weights(const std::vector<Batch>& micro_batches,
                           const std::function<int64_t(const Batch&)>& tokens, Communicator* exchange);

}  // namespace condense
