// Tokenizer: a sentencepiece BPE model with Llama's conventions (<unk>=0, <s>=1, </s>=2, no
// pad, byte fallback, split digits, identity normalization so text round-trips exactly).
// Trains from documents in memory, loads/saves .model files, and identifies itself by the
// SHA-256 of its serialized proto, which token stores and checkpoints record so that a model
// is never fed ids from a different vocabulary. Copies share one immutable processor; all
// const methods are safe to call from several threads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace condense {

struct TokenizerTrainOptions {
  int64_t vocab_size = 4096;
  int64_t max_sentences = 300000;  // lines used for training (a deterministic sample past this)
  int64_t seed = 1234;             // picks the sample when there are more lines than that
};

class Tokenizer {
 public:
  // Trains a BPE model on the non-empty lines of `documents`. Deterministic: the same documents
  // and options give the same serialized bytes. Throws if sentencepiece rejects the input
  // (e.g. a vocab_size larger than the text supports).
  static Tokenizer train(const std::vector<std::string>& documents,
                         const TokenizerTrainOptions& options);
  // Loads a serialized ModelProto; `source` names where the bytes came from in errors.
  static Tokenizer from_serialized(const std::string& proto_bytes, const std::string& source);
  // Loads a sentencepiece .model file; a missing or corrupt file is an error naming the path.
  static Tokenizer load(const std::string& model_path);
  // Writes the .model file atomically (readable by any sentencepiece, Python included).
  void save(const std::string& path) const;

  // Ids of `text` without bos/eos. decode(encode(x)) == x for any valid UTF-8 x.
  std::vector<int32_t> encode(const std::string& text) const;
  // Text of `ids`; control ids (bos/eos) decode to nothing. Throws on an id out of range.
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;
  std::string piece(int id) const;  // e.g. "▁the", "<0x0A>", "<s>"
  float score(int id) const;
  bool is_byte(int id) const;     // a <0xNN> byte-fallback piece
  bool is_control(int id) const;  // <s>, </s>
  bool is_unknown(int id) const;  // <unk>

  const std::string& serialized() const { return serialized_; }
  std::string sha256() const;  // hex digest of serialized()
  const std::string& source() const { return source_; }

 private:
  Tokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp,
            std::string serialized, std::string source);
  void check_id(int id) const;

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::string serialized_;
  std::string source_;
};

}  // namespace condense
