// Tokenizer: sentencepiece training in memory (a SentenceIterator in, a serialized ModelProto
// out, no temporary files) and thin, checked wrappers over SentencePieceProcessor.
#include "text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "core/hash.h"
#include "core/random.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "text/bpe_tokenizer.h"
#include "text/sentencepiece_proto.h"

namespace condense {
namespace {

// Feeds a fixed list of lines to the trainer, in order.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string_view>& lines) : lines_(lines) { load(); }
  bool done() const override { return index_ >= lines_.size(); }
  void Next() override {
    ++index_;
    load();
  }
  const std::string& value() const override { return current_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void load() {
    if (!done()) current_.assign(lines_[index_].data(), lines_[index_].size());
  }
  const std::vector<std::string_view>& lines_;
  size_t index_ = 0;
  std::string current_;
};

// The non-empty lines of all documents, in order; past `max_lines`, a seeded uniform sample
// kept in document order. Sampling here (not in sentencepiece) keeps training deterministic.
std::vector<std::string_view> training_lines(const std::vector<std::string>& documents,
                                             int64_t max_lines, int64_t seed) {
  std::vector<std::string_view> lines;
  for (const std::string& doc : documents) {
    size_t start = 0;
    while (start <= doc.size()) {
      size_t end = doc.find('\n', start);
      if (end == std::string::npos) end = doc.size();
      std::string_view line(doc.data() + start, end - start);
      if (line.find_first_not_of(" \t\r") != std::string_view::npos) lines.push_back(line);
      start = end + 1;
    }
  }
  if (max_lines <= 0 || static_cast<int64_t>(lines.size()) <= max_lines) return lines;
  // Partial Fisher-Yates over indices: the first max_lines slots are a uniform sample.
  std::vector<uint32_t> index(lines.size());
  for (size_t i = 0; i < index.size(); ++i) index[i] = static_cast<uint32_t>(i);
  uint64_t state = static_cast<uint64_t>(seed) ^ 0x746F6B656E697A65ull;
  for (int64_t i = 0; i < max_lines; ++i) {
    uint64_t remaining = index.size() - i;
    uint64_t j = i + uniform_below(state, remaining);
    std::swap(index[i], index[j]);
  }
  index.resize(max_lines);
  std::sort(index.begin(), index.end());
  std::vector<std::string_view> sample;
  sample.reserve(index.size());
  for (uint32_t i : index) sample.push_back(lines[i]);
  return sample;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp,
                     std::string serialized, std::string source)
    : sp_(std::move(sp)), serialized_(std::move(serialized)), source_(std::move(source)) {}

Tokenizer Tokenizer::train(const std::vector<std::string>& documents,
                           const TokenizerTrainOptions& options) {
  CONDENSE_CHECK(options.vocab_size >= kMinTrainedVocabSize,
                 "tokenizer: vocab_size {} is too small (byte fallback needs 256 byte pieces "
                 "+ <unk> <s> </s>; use at least {})",
                 options.vocab_size, kMinTrainedVocabSize);
  auto start = std::chrono::steady_clock::now();
  std::vector<std::string_view> lines =
      training_lines(documents, options.max_sentences, options.seed);
  CONDENSE_CHECK(!lines.empty(), "tokenizer: no non-empty lines to train on");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"character_coverage", "0.9995"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"train_extremely_large_corpus", "false"},
      {"num_threads", std::to_string(options.threads)},
      {"minloglevel", "2"},
  };
  LineIterator it(lines);
  std::string proto;
  sentencepiece::util::Status status =
      sentencepiece::SentencePieceTrainer::Train(args, &it, &proto);
  CONDENSE_CHECK(status.ok(), "tokenizer: sentencepiece training failed ({} lines, vocab_size "
                 "{}): {}", lines.size(), options.vocab_size, status.ToString());
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("tokenizer: trained BPE vocab {} on {} lines in {:.1f} s", options.vocab_size,
               lines.size(), seconds);
  return from_serialized(proto, "trained tokenizer");
}

Tokenizer Tokenizer::from_bpe(const BpeTokenizer& bpe) {
  Tokenizer t(nullptr, bpe.serialized(), bpe.source());
  t.bpe_ = std::make_shared<const BpeTokenizer>(bpe);
  return t;
}

const std::string& Tokenizer::kind() const {
  static const std::string sp = "sentencepiece", bpe = "bpe";
  return bpe_ ? bpe : sp;
}

Tokenizer Tokenizer::from_serialized(const std::string& proto_bytes, const std::string& source) {
  CONDENSE_CHECK(!proto_bytes.empty(), "{}: no tokenizer stored (a checkpoint imported without "
                 "one); import it again with --tokenizer T.model", source);
  if (proto_bytes.rfind(kBpeMagic, 0) == 0)
    return from_bpe(BpeTokenizer::from_serialized(proto_bytes, source));
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  sentencepiece::util::Status status = sp->LoadFromSerializedProto(proto_bytes);
  CONDENSE_CHECK(status.ok(), "{}: not a valid sentencepiece model ({})", source,
                 status.ToString());
  CONDENSE_CHECK(sp->GetPieceSize() > 0, "{}: sentencepiece model has no pieces", source);
  Tokenizer t(std::move(sp), proto_bytes, source);
  SentencepieceTables tables = read_sentencepiece_tables(proto_bytes, source);
  t.sp_types_ = std::make_shared<const std::vector<int32_t>>(std::move(tables.types));
  t.sp_space_prefix_ = tables.add_dummy_prefix;
  return t;
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  CONDENSE_CHECK(std::filesystem::is_regular_file(model_path),
                 "{}: no such tokenizer model file", model_path);
  if (std::filesystem::path(model_path).extension() == ".json")
    return from_bpe(BpeTokenizer::from_tokenizer_json(model_path));
  return from_serialized(read_text_file(model_path), model_path);
}

void Tokenizer::save(const std::string& path) const {
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out.write(serialized_.data(), static_cast<std::streamsize>(serialized_.size()));
    out.close();
    CONDENSE_CHECK(out.good(), "{}: cannot write tokenizer model", tmp);
  });
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  if (bpe_) return bpe_->encode(text, /*parse_special=*/true);
  std::vector<int> ids;
  sentencepiece::util::Status status = sp_->Encode(text, &ids);
  CONDENSE_CHECK(status.ok(), "{}: encode failed: {}", source_, status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::vector<int32_t> Tokenizer::encode_special(const std::string& text) const {
  if (bpe_) return encode(text);
  std::vector<std::pair<std::string, int32_t>> controls;
  for (int id = 0; id < vocab_size(); ++id)
    if ((*sp_types_)[id] == 3) controls.emplace_back(sp_->IdToPiece(id), id);
  std::vector<int32_t> out;
  size_t pos = 0;
  while (pos < text.size()) {
    // The earliest control piece in the rest of the text, the longest at that position.
    size_t at = std::string::npos, len = 0;
    int32_t id = -1;
    for (const auto& [piece, pid] : controls) {
      const size_t f = text.find(piece, pos);
      if (f != std::string::npos && (f < at || (f == at && piece.size() > len))) {
        at = f;
        len = piece.size();
        id = pid;
      }
    }
    const size_t end = at == std::string::npos ? text.size() : at;
    if (end > pos)
      for (int32_t t : encode(text.substr(pos, end - pos))) out.push_back(t);
    if (at == std::string::npos) break;
    out.push_back(id);
    pos = at + len;
  }
  return out;
}

std::vector<int32_t> Tokenizer::prompt_ids(const std::string& text) const {
  std::vector<int32_t> ids;
  if (adds_bos() && bos_id() >= 0) ids.push_back(bos_id());
  for (int32_t id : encode(text)) ids.push_back(id);
  return ids;
}

bool Tokenizer::adds_bos() const { return bpe_ ? bpe_->vocab().add_bos : true; }

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  if (bpe_) return bpe_->decode(ids, /*render_special=*/false);
  for (int32_t id : ids) check_id(id);
  std::string text;
  sentencepiece::util::Status status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()),
                                                   &text);
  CONDENSE_CHECK(status.ok(), "{}: decode failed: {}", source_, status.ToString());
  return text;
}

void Tokenizer::check_id(int id) const {
  CONDENSE_CHECK(id >= 0 && id < vocab_size(), "{}: token id {} out of range [0, {})", source_,
                 id, vocab_size());
}

int64_t Tokenizer::vocab_size() const { return bpe_ ? bpe_->vocab_size() : sp_->GetPieceSize(); }
int Tokenizer::bos_id() const { return bpe_ ? bpe_->bos_id().value_or(-1) : sp_->bos_id(); }
int Tokenizer::eos_id() const { return bpe_ ? bpe_->eos_id().value_or(-1) : sp_->eos_id(); }
int Tokenizer::unk_id() const { return bpe_ ? bpe_->unk_id().value_or(-1) : sp_->unk_id(); }
std::string Tokenizer::piece(int id) const {
  check_id(id);
  return bpe_ ? bpe_->token(id) : sp_->IdToPiece(id);
}
float Tokenizer::score(int id) const {
  check_id(id);
  return bpe_ ? 0.0f : sp_->GetScore(id);
}
bool Tokenizer::is_byte(int id) const {
  check_id(id);
  return bpe_ ? bpe_->token_type(id) == BpeTokenType::kByte : sp_->IsByte(id);
}
bool Tokenizer::is_control(int id) const {
  check_id(id);
  return bpe_ ? bpe_->token_type(id) == BpeTokenType::kControl : sp_->IsControl(id);
}
bool Tokenizer::is_unknown(int id) const {
  check_id(id);
  return bpe_ ? bpe_->token_type(id) == BpeTokenType::kUnknown : sp_->IsUnknown(id);
}
int32_t Tokenizer::token_type(int id) const {
  check_id(id);
  return bpe_ ? static_cast<int32_t>(bpe_->token_type(id)) : sp_types_->at(id);
}
std::string Tokenizer::sha256() const { return sha256_hex(serialized_); }

}  // namespace condense
