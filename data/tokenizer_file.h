// The tokenizer a file holds, whatever kind of file it is: what every --tokenizer option and
// data.tokenizer take, so that a model's own file can name its tokenizer.
//   *.json          a Hugging Face tokenizer.json (byte-level BPE)
//   *.gguf          a GGUF model's vocabulary: a byte-level BPE ("gpt2": Llama 3, SmolLM, Qwen),
//                   the sentencepiece model condense's GGUF export embeds, or llama.cpp's
//                   sentencepiece tables ("llama": Llama 2, Mistral) rebuilt into a model
//   *.h5            a condense checkpoint or token store (its `tokenizer` dataset)
//   anything else   a sentencepiece .model, or condense's serialized tokenizer bytes
#pragma once
#include <optional>
#include <string>

#include "text/tokenizer.h"

namespace condense {

class GgufReader;

// Metadata key holding condense's sentencepiece model (base64) in its GGUF exports.
inline constexpr const char* kGgufSentencepieceKey = "condense.tokenizer.sentencepiece_base64";
// A byte-level BPE's normalizer ("nfc"), which GGUF has no key for and llama.cpp does not apply:
// condense's exports write it so that their own import gives back the same vocabulary (hash).
inline constexpr const char* kGgufBpeNormalizerKey = "condense.tokenizer.normalizer";

// Errors name the file and what it lacks (a GGUF of another tokenizer model, an HDF5 file
// without a tokenizer).
Tokenizer load_tokenizer_file(const std::string& path);

// The tokenizer of a parsed GGUF file as Tokenizer::serialized() bytes: condense's embedded
// sentencepiece model (exact), else by tokenizer.ggml.model: "gpt2", the byte-level BPE (tokens,
// token types, merges, pre, special ids, add_bos/add_eos, chat template), or "llama", a
// sentencepiece model rebuilt from tokens, scores, token types, special ids and add_space_prefix
// (text/sentencepiece_proto.h); nullopt for other models or none. Errors name file and key.
std::optional<std::string> gguf_tokenizer_bytes(const GgufReader& r, const std::string& path);

}  // namespace condense
