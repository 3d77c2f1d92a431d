// BpeVocabulary: everything that defines a byte-level BPE tokenizer, as plain data, in the
// shape GGUF stores it (tokenizer.ggml.tokens / token_type / merges / pre / *_token_id), so
// any reader (GGUF, tokenizer.json, a checkpoint) fills one struct and BpeTokenizer is built
// from it. Also its byte serialization, which checkpoints and token stores keep (with its
// SHA-256) to tie ids to the vocabulary that produced them.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace condense {

// llama.cpp's token types (llama_token_type in GGUF's tokenizer.ggml.token_type).
enum class BpeTokenType : int32_t {
  kNormal = 1,  // byte-level text, reached by merges
  kUnknown = 2,
  kControl = 3,  // <|endoftext|>, <|im_start|>: matched in text only when special tokens are parsed
  kUserDefined = 4,  // added tokens: always matched in text, never split
  kUnused = 5,
  kByte = 6,  // <0xNN>
};

// What encode() does with a byte the vocabulary has no symbol for (SmolLM2 lacks 21 of the 256:
// six control characters, 0xF1 and 0xF2 (lead bytes of code points U+40000..U+BFFFF), and 13
// bytes that never occur in UTF-8).
enum class MissingByte : uint32_t {
  // llama.cpp (GGUF; also a tokenizer.json without model.unk_token): the byte stays in its word,
  // no pair with it merges, and it yields no id. tokenizers, for a file without unk_token,
  // removes the byte before merging instead, so its neighbours may merge across it; condense
  // keeps llama.cpp's rule there, so that its tokenizer.json export of a GGUF vocabulary reads
  // back as the same vocabulary (same hash). Real tokenizer.json files either have a symbol for
  // every byte (GPT-2, Llama 3, Qwen2) or an unk_token (SmolLM2).
  kBlockAndDrop = 0,
  kUnk = 1,       // tokenizers, model.unk_token set: one unk_id per such byte (merged like any id)
  kUnkFused = 2,  // ... with model.fuse_unk: one unk_id per run of such bytes
};

struct BpeVocabulary {
  // Token strings indexed by id. Normal tokens are in GPT-2's byte-level spelling (' ' is 'Ġ');
  // control and user-defined tokens are their raw text.
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;  // one BpeTokenType per token; empty means all normal
  std::vector<std::string> merges;   // "left right", rank = position (first merges first)
  std::string pre_tokenizer;         // Pretokenizer::by_name
  std::optional<int32_t> bos_id, eos_id, pad_id, unk_id;
  // A whole pre-token that is in the vocabulary is taken as is, without merges (Llama 3;
  // tokenizer.json model.ignore_merges).
  bool ignore_merges = false;
  // Carried for export only; encode() never adds bos/eos.
  bool add_bos = false, add_eos = false;
  std::string chat_template;  // carried for export and chat formatting; "" when none
  MissingByte missing_byte = MissingByte::kBlockAndDrop;  // kUnk*: needs unk_id
  // "" or "nfc": tokenizer.json's normalizer (Qwen2's NFC), applied to the text between added
  // tokens before pre-tokenizing. GGUF has no place for it (llama.cpp does not normalize).
  std::string normalizer;
};

// The first bytes of every serialized vocabulary (tells it from a sentencepiece proto).
inline constexpr std::string_view kBpeMagic = "condense-bpe-v1\n";

// A versioned, length-prefixed byte string (any bytes in any token survive); the same
// vocabulary always gives the same bytes.
std::string serialize_bpe_vocabulary(const BpeVocabulary& vocab);
// Inverse of serialize_bpe_vocabulary; `source` names the bytes' origin in errors.
BpeVocabulary deserialize_bpe_vocabulary(const std::string& bytes, const std::string& source);

}  // namespace condense
