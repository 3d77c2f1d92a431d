// Commands over a trained context compressor (a run of kind context_compressor,
// recipes/context_compressor.h):
//   context-eval  held-out measures of the compressor against the frozen decoder, as JSON:
//                 continuation NLL with no context, full context, compressed context, the
//                 context truncated to as many positions as the compressed one, mean-pooled
//                 token embeddings (the untrained compressor a user would try first), the
//                 compressor as initialized before training, and the compressed context of
//                 another window (the control for a learned prompt that helps whatever the
//                 content; with the plain chunk of another window as its full-context
//                 counterpart); "gap closed" for each, and the content gap closed =
//                 (compressed of another window - compressed) / (full of another window -
//                 full); teacher-forced
//                 reconstruction accuracy of the compressed span (and of the span given
//                 uncompressed: how well the frozen decoder copies at all); prefill tokens/s and KV bytes
//                 with full versus compressed context, measured in the same run.
//                 With --documents FILE (compressors/context_documents.h), also the task with an
//                 answer (compressors/context_task.h); an xRAG run is measured on that task only.
//   compress      a text file -> CTX.h5: what the decoder reads in its place (context/embeds
//                 [k, hidden]: ARC's vectors and <Cont>, CompLLM's concept embeddings) and
//                 attributes naming the method, pooling factor, token count and the decoder
//                 (SHA-256 of its token embedding), which generate / score --context-vectors
//                 check against the model they run. xRAG reads a document's embedding instead:
//                 --embeddings FILE.h5 --document I. With --compressor DIR (an export,
//                 formats/context_export.h) the checkpoint is the decoder it belongs to.
// A long context is split as the method does (ARC: chunks of context.chunk_len; CompLLM:
// segments of context.segment_len), each compressed independently.
#pragma once
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>
#include <ATen/core/Tensor.h>

#include "model/llama.h"
#include "text/tokenizer.h"

namespace condense {

struct ContextArgs {
  CLI::App* eval = nullptr;
  CLI::App* compress = nullptr;
  std::string checkpoint, data, text, out;
  std::string documents;        // context-eval: the task's documents
  std::string embeddings;       // compress: xRAG's documents file
  std::string compressor;       // compress: an exported compressor's directory
  int64_t documents_count = 0;  // 0: the recipe's context.held_out
  int64_t document = 0;         // compress --embeddings: which document
  int64_t batches = 16;
  int64_t chunk_len = 0, seq_len = 0;  // 0: the recipe's
  int64_t prefix_len = -1;             // -1: the recipe's
  int64_t threads = 0;
};

void add_context_commands(CLI::App& app, ContextArgs& args);
// Runs the parsed command and returns its exit status; -1 when none was parsed.
int run_context_command(ContextArgs& args);

}  // namespace condense
