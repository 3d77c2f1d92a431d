// Tokenizer: the vocabulary of a model, one of two kinds behind one interface:
//  - "sentencepiece": a sentencepiece BPE model. The ones condense trains have Llama's
//    conventions (<unk>=0, <s>=1, </s>=2, no pad, byte fallback, split digits, identity
//    normalization so text round-trips exactly); .model files load as they are.
//  - "bpe": a GPT-2 style byte-level BPE (text/bpe_tokenizer.h), from a Hugging Face
//    tokenizer.json or GGUF's tokenizer.ggml.* fields (Llama 3, SmolLM, Qwen, ...).
// Each identifies itself by the SHA-256 of its serialized bytes (the sentencepiece proto, or
// the BPE vocabulary's "condense-bpe-v1" bytes), which token stores and checkpoints record so
// that a model is never fed ids from a different vocabulary; from_serialized() tells the kinds
// apart by the BPE magic. Copies share one immutable state; const methods are thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace condense {

class BpeTokenizer;

// The smallest vocabulary a trained tokenizer can have: byte fallback needs the 256 byte pieces,
// plus <unk> <s> </s>.
inline constexpr int64_t kMinTrainedVocabSize = 260;

struct TokenizerTrainOptions {
  int64_t vocab_size = 4096;
  int64_t max_sentences = 300000;  // lines used for training (a deterministic sample past this)
  int64_t seed = 1234;             // picks the sample when there are more lines than that
  // sentencepiece's worker threads. Its BPE trainer's result depends on this number (each count
  // is repeatable), so it is pinned, never taken from the machine's core count: every machine
  // trains the same vocabulary (tests/test_data.cpp, TrainingIsRepeatableAtEachThreadCount).
  int threads = 2;
};

class Tokenizer {
 public:
  // Trains a BPE model on the non-empty lines of `documents`. Deterministic: the same documents
  // and options give the same serialized bytes. Throws if sentencepiece rejects the input
  // (e.g. a vocab_size larger than the text supports).
  static Tokenizer train(const std::vector<std::string>& documents,
                         const TokenizerTrainOptions& options);
  // Loads serialized() bytes of either kind; `source` names where they came from in errors.
  static Tokenizer from_serialized(const std::string& bytes, const std::string& source);
  static Tokenizer from_bpe(const BpeTokenizer& bpe);
  // Loads a sentencepiece .model file, or a Hugging Face tokenizer.json (byte-level BPE; a
  // tokenizer_config.json beside it supplies bos/eos/chat template); a missing or corrupt
  // file is an error naming the path.
  static Tokenizer load(const std::string& path);
  // Writes the tokenizer atomically: a sentencepiece .model file (readable by any
  // sentencepiece), or for "bpe" condense's serialized vocabulary (load() reads tokenizer.json;
  // `condense export --format hf` writes one).
  void save(const std::string& path) const;

  // "sentencepiece" or "bpe"; bpe() is the byte-level tokenizer (null for sentencepiece).
  const std::string& kind() const;
  const BpeTokenizer* bpe() const { return bpe_.get(); }

  // Ids of `text` without bos/eos. decode(encode(x)) == x for any valid UTF-8 x. BPE
  // recognizes special tokens written in the text (as the tokenizers package does).
  std::vector<int32_t> encode(const std::string& text) const;
  // encode(), except that control pieces written in the text ([INST] in Mistral v0.3's
  // vocabulary) become their ids, as llama.cpp tokenizes with special tokens parsed: the text
  // between them is encoded piece by piece (each part with sentencepiece's space prefix, as
  // llama.cpp prefixes a space after a special token). BPE: encode(), which parses them already.
  std::vector<int32_t> encode_special(const std::string& text) const;
  // What a model is fed for a prompt or a scored text: <bos> first when the vocabulary adds
  // one (always for sentencepiece; for BPE when its add_bos flag is set, as GGUF's
  // tokenizer.ggml.add_bos_token, a tokenizer.json post_processor template, or else
  // tokenizer_config.json's add_bos_token say), then encode().
  std::vector<int32_t> prompt_ids(const std::string& text) const;
  // Text of `ids`; control ids (bos/eos, <|im_start|>) decode to nothing. Throws on an id out
  // of range.
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const;
  int bos_id() const;  // -1 when the vocabulary has none
  int eos_id() const;
  int unk_id() const;
  std::string piece(int id) const;  // e.g. "▁the", "<0x0A>", "<s>"; BPE: "Ġthe", "<|im_end|>"
  float score(int id) const;        // sentencepiece's score; BPE: 0 (merge ranks order BPE)
  bool is_byte(int id) const;     // a <0xNN> byte-fallback piece
  bool is_control(int id) const;  // <s>, </s>, <|endoftext|>
  bool is_unknown(int id) const;  // <unk>
  // The piece's type in the numbering sentencepiece, GGUF's tokenizer.ggml.token_type and
  // BpeTokenType share: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
  int32_t token_type(int id) const;
  // Whether encode() puts a space (U+2581) before the text: sentencepiece's add_dummy_prefix
  // (GGUF's tokenizer.ggml.add_space_prefix); false for BPE.
  bool adds_space_prefix() const { return sp_space_prefix_; }
  // Whether a text starts with <s> (sentencepiece: always; a byte-level BPE: its add_bos, Llama
  // 3's yes, SmolLM2's and Qwen2's no). prompt_ids and token stores follow it.
  bool adds_bos() const;

  const std::string& serialized() const { return serialized_; }
  std::string sha256() const;  // hex digest of serialized()
  const std::string& source() const { return source_; }

 private:
  Tokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp,
            std::string serialized, std::string source);
  void check_id(int id) const;

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;  // kind sentencepiece
  std::shared_ptr<const BpeTokenizer> bpe_;                          // kind bpe
  std::shared_ptr<const std::vector<int32_t>> sp_types_;             // token_type(), sentencepiece
  bool sp_space_prefix_ = false;
  std::string serialized_;
  std::string source_;
};

}  // namespace condense
