// A trained context compressor outside its run: `condense export RUN OUT --format hf` of a
// context_compressor run writes, beside the frozen decoder's Hugging Face files,
//   context_compressor.safetensors  the trained tensors under their checkpoint names
//                                   (encoder.*, projector.*, compllm.*, xrag.*), float32
//   context_compressor.json         {"format": "condense-context-compressor/1", "method",
//                                    "recipe" (the run's resolved YAML: the context section
//                                    rebuilds the compressor), "decoder": {"embedding_sha256",
//                                    "hidden_size", "vocab_size", "num_hidden_layers",
//                                    "checkpoint"}}
// and `condense compress DECODER --compressor DIR` loads them against a decoder, refusing one
// whose token embedding is not the decoder the compressor was trained for.
#pragma once
#include <memory>
#include <string>

#include "compressors/context_compressor.h"
#include "model/llama.h"
#include "recipes/run_config.h"

namespace condense {

// The decoder a compressor or a compressed context belongs to: SHA-256 of its token embedding
// (float32 bytes).
std::string decoder_fingerprint(LlamaForCausalLM& decoder);

// Writes the two files into `out_dir` (which must exist) for the context_compressor run whose
// checkpoint is `checkpoint_path`. Returns the number of tensors written.
int64_t export_context_compressor(const std::string& checkpoint_path, const std::string& out_dir);

struct LoadedCompressor {
  RunConfig cfg;  // the run's recipe
  std::shared_ptr<ContextCompressor> compressor;
};
// Loads DIR's compressor for `decoder`; throws naming DIR and both decoders when `decoder` is not
// the one it was trained for (or the files are missing or malformed).
LoadedCompressor load_exported_compressor(const std::string& dir, LlamaForCausalLM& decoder,
                                            const std::string& decoder_source);

}  // namespace condense
