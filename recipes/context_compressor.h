// The `context_compressor` recipe kind: trains a context compressor (context.method: arc,
// compressors/context_arc.h; compllm, compressors/context_compllm.h) against the frozen decoder
// named by `init`. Every decoder parameter is frozen (no gradient, no optimizer state, bitwise
// unchanged); only the compressor's tensors train and are saved (encoder.* and projector.*, or
// compllm.*). The loss is the method's (ContextCompressor::loss); validation reports the
// continuation NLL with compressed context for every method (the continuation tokens after the
// first, as `condense context-eval` scores them).
#pragma once
#include "recipes/recipe.h"

namespace condense {

int run_context_compressor(const RunConfig& cfg, const RunOptions& options);

}  // namespace condense
