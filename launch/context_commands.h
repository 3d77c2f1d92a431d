// Commands over a trained context compressor (a run of kind context_compressor,
// recipes/context_compressor.h):
//   context-eval  held-out measures of the compressor against the frozen decoder, as JSON:
//                 continuation NLL with no context, full context, compressed context, the
//                 context truncated to as many positions as the compressed one, mean-pooled
//                 token embeddings (the untrained compressor a user would try first) and the
//                 encoder as initialized before training; "gap closed" for each; teacher-forced
//                 reconstruction accuracy of the compressed span; prefill tokens/s and KV bytes
//                 with full versus compressed context, measured in the same run.
#pragma once
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

namespace condense {

struct ContextArgs {
  CLI::App* eval = nullptr;
  std::string checkpoint, data;
  int64_t batches = 16;
  int64_t chunk_len = 0, seq_len = 0;  // 0: the recipe's
  int64_t prefix_len = -1;             // -1: the recipe's
  int64_t threads = 0;
};

void add_context_commands(CLI::App& app, ContextArgs& args);
// Runs the parsed command and returns its exit status; -1 when none was parsed.
int run_context_command(ContextArgs& args);

}  // namespace condense
