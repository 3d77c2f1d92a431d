// BpeTokenizer: GPT-2 style byte-level BPE (Sennrich et al. 2016; Radford et al. 2019), the
// tokenizer of Llama 3, SmolLM, Qwen and most current models, exact to llama.cpp and the
// `tokenizers` package. encode(): (1) added tokens are cut out of the raw text first, leftmost
// then longest, and never split; (2) the rest is cut into pre-tokens by the pre-tokenizer's
// regexes; (3) each pre-token's bytes start as one symbol per byte (GPT-2's byte-to-unicode
// spelling) and adjacent pairs merge in rank order, lowest rank first and leftmost among
// equals, until no ranked pair is left. decode(encode(x)) == x for every UTF-8 x, and for
// arbitrary bytes: bytes that are not UTF-8 become pre-tokens of their own; with an NFC
// normalizer (Qwen2's tokenizer.json) the text between added tokens is normalized before (2), so
// there decode(encode(x)) == nfc(x). A byte the
// vocabulary has no symbol for (SmolLM2 lacks 21 of the 256: six control characters, the lead
// bytes of code points U+40000..U+BFFFF, and bytes never in UTF-8) is handled as the reference the vocabulary came from
// does (BpeVocabulary::missing_byte): llama.cpp drops it where it stands (GGUF), tokenizers
// makes it the model's unk_token (a tokenizer.json that names one); can_encode() tells whether a
// text has one. Copies share one immutable state; all const methods are thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe_vocabulary.h"
#include "text/pretokenizer.h"

namespace condense {

class BpeTokenizer {
 public:
  // Validates `vocab` (types, ids in range, every merge's parts and result in the vocabulary,
  // a known pre-tokenizer) and builds the tokenizer; `source` names the origin in errors.
  BpeTokenizer(BpeVocabulary vocab, const std::string& source);

  // From GGUF's tokenizer.ggml.* fields (tokenizer.ggml.model = "gpt2") with llama.cpp's
  // conventions: pre-tokenizer aliases ("gpt-2", "llama3", "llama-v3") and ignore_merges for
  // Llama 3.
  static BpeTokenizer from_gguf_fields(BpeVocabulary fields, const std::string& source);
  // From a Hugging Face tokenizer.json (model.type "BPE", a byte-level pre-tokenizer condense
  // knows); bos/eos/pad/chat_template come from tokenizer_config.json beside it when present.
  static BpeTokenizer from_tokenizer_json(const std::string& path);
  // Hugging Face's tokenizer.json for this vocabulary (the inverse of from_tokenizer_json:
  // model BPE with vocab and merges, control/user-defined tokens as added_tokens, the
  // pre-tokenizer in the structure Hugging Face uses for its name, ByteLevel decoder), and the
  // tokenizer_config.json beside it (bos/eos/pad/unk, add_bos/add_eos, chat template).
  std::string to_tokenizer_json() const;
  std::string to_tokenizer_config_json(int64_t model_max_length) const;
  // From serialized() bytes (a checkpoint or token store).
  static BpeTokenizer from_serialized(const std::string& bytes, const std::string& source);

  // Ids of `text`, without bos/eos. With parse_special, control tokens written in the text
  // (e.g. "<|im_start|>") are recognized too; user-defined tokens always are.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  // Bytes of `ids`. Control tokens render as their text unless !render_special. Throws on an
  // id out of range.
  std::string decode(const std::vector<int32_t>& ids, bool render_special = true) const;
  // Whether every byte of `text` outside added tokens has a symbol (nothing would be dropped).
  bool can_encode(std::string_view text) const;

  int64_t vocab_size() const;
  std::optional<int32_t> bos_id() const { return vocab().bos_id; }
  std::optional<int32_t> eos_id() const { return vocab().eos_id; }
  std::optional<int32_t> pad_id() const { return vocab().pad_id; }
  std::optional<int32_t> unk_id() const { return vocab().unk_id; }
  const std::string& token(int32_t id) const;  // as stored: "Ġthe", "<|im_start|>"
  BpeTokenType token_type(int32_t id) const;
  std::optional<int32_t> token_id(const std::string& token) const;
  const BpeVocabulary& vocab() const;
  const Pretokenizer& pretokenizer() const;

  const std::string& serialized() const;  // serialize_bpe_vocabulary(vocab())
  std::string sha256() const;             // hex digest of serialized()
  const std::string& source() const;

 private:
  struct State;
  explicit BpeTokenizer(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  void encode_word(std::string_view bytes, std::vector<int32_t>& out) const;
  void check_id(int32_t id) const;

  std::shared_ptr<const State> state_;
};

}  // namespace condense
