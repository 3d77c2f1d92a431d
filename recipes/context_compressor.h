// The `context_compressor` recipe kind: trains a context compressor (context.method; today
// `arc`, compressors/context_arc.h) against the frozen decoder named by `init`. Every decoder
// parameter is frozen (no gradient, no optimizer state, bitwise unchanged); only the encoder,
// its projector and the <Rec>/<Cont> markers train and are saved (encoder.*, projector.*).
//
// Each step is one task for the whole batch, drawn from the process's generator (saved in
// checkpoints, so a resumed run draws what the uninterrupted one would): reconstruction with
// probability context.reconstruction_share (the decoder reads [compressed chunk, <Rec>] and
// predicts the chunk), else continuation ([prefix, compressed chunk, <Cont>] then the rest of
// the window, predicted). Validation reports the continuation loss.
#pragma once
#include "recipes/recipe.h"

namespace condense {

int run_context_compressor(const RunConfig& cfg, const RunOptions& options);

}  // namespace condense
