// A compressed context as commands hand it to the frozen decoder: compressed now from a text by
// the context compressor a checkpoint trained, or read back from a CTX.h5 that `condense
// compress` wrote (context/embeds [k, hidden] with attributes naming the method, the token
// count and the decoder it belongs to: the SHA-256 of its token embedding). generate and score
// put it before their text; context-eval and compress use the loading helpers.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "formats/context_export.h"
#include "model/llama.h"
#include "recipes/run_config.h"
#include "text/tokenizer.h"
#include "trainer/checkpoint.h"

namespace condense {

// What the decoder reads before the text, [k, hidden].
struct CompressedContext {
  at::Tensor embeds;    // undefined: no context
  int64_t tokens = 0;   // the context's length in tokens
};

// --context FILE (compressed now by the encoder in `checkpoint_path`) or --context-vectors
// CTX.h5 (written by `condense compress`; its decoder must be `decoder`, else an error naming
// both); both empty: no context. Throws when both are given, or when the checkpoint holds no
// context compressor.
CompressedContext context_for(const std::string& checkpoint_path, LlamaForCausalLM& decoder,
                              const Tokenizer& tok, const std::string& text_file,
                              const std::string& vectors_file);

// Throws naming the checkpoint when its recipe (`cfg`) is not of kind context_compressor.
void require_compressor(const Checkpoint& ckpt, const RunConfig& cfg);

// The compressor a context_compressor checkpoint trained, against its own frozen decoder.
LoadedCompressor open_compressor(const Checkpoint& ckpt, LlamaForCausalLM& decoder);

// What the decoder reads for the text in `text_file`, [k, hidden]; its token count in *tokens.
at::Tensor compress_text(LoadedCompressor& c, LlamaForCausalLM& decoder, const Tokenizer& tok,
                         const std::string& text_file, int64_t* tokens);

}  // namespace condense
