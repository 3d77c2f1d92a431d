// BpeVocabulary's byte format: the magic "condense-bpe-v1\n", then every field in declaration
// order; integers are little-endian u32/i64, strings u32 length + bytes, optional ids an i64
// with -1 for none. No JSON: tokens need not be valid UTF-8.
#include "text/bpe_vocabulary.h"

#include <string_view>

#include "core/error.h"

namespace condense {
namespace {

constexpr std::string_view kMagic = kBpeMagic;

class Writer {
 public:
  void u64(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
  void u32(uint32_t v) { u64(v, 4); }
  void raw(std::string_view s) { out_.append(s); }
  void str(const std::string& s) {
    CONDENSE_CHECK(s.size() <= UINT32_MAX, "BPE vocabulary string too long ({} bytes)", s.size());
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void id(const std::optional<int32_t>& v) { u64(static_cast<uint64_t>(v ? int64_t{*v} : -1), 8); }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(const std::string& bytes, const std::string& source) : b_(bytes), source_(source) {}
  uint64_t u64(int bytes) {
    need(bytes);
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<uint8_t>(b_[pos_ + i])} << (8 * i);
    pos_ += bytes;
    return v;
  }
  uint32_t u32() { return static_cast<uint32_t>(u64(4)); }
  std::string str() {
    const uint32_t n = u32();
    need(n);
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::optional<int32_t> id(const char* what) {
    const auto v = static_cast<int64_t>(u64(8));
    if (v == -1) return std::nullopt;
    CONDENSE_CHECK(v >= 0 && v <= INT32_MAX, "{}: BPE vocabulary {} id {} out of range", source_,
                   what, v);
    return static_cast<int32_t>(v);
  }
  void skip(size_t n) {
    need(n);
    pos_ += n;
  }
  bool at_end() const { return pos_ == b_.size(); }
  void need(uint64_t n) const {
    CONDENSE_CHECK(n <= b_.size() - pos_,
                   "{}: truncated BPE vocabulary (need {} bytes at offset {}, "
                   "{} left)",
                   source_, n, pos_, b_.size() - pos_);
  }

 private:
  const std::string& b_;
  const std::string& source_;
  size_t pos_ = 0;
};

}  // namespace

std::string serialize_bpe_vocabulary(const BpeVocabulary& v) {
  Writer w;
  w.raw(kMagic);
  w.u32(static_cast<uint32_t>(v.tokens.size()));
  for (const auto& t : v.tokens) w.str(t);
  w.u32(static_cast<uint32_t>(v.token_types.size()));
  for (int32_t t : v.token_types) w.u32(static_cast<uint32_t>(t));
  w.u32(static_cast<uint32_t>(v.merges.size()));
  for (const auto& m : v.merges) w.str(m);
  w.str(v.pre_tokenizer);
  w.id(v.bos_id);
  w.id(v.eos_id);
  w.id(v.pad_id);
  w.id(v.unk_id);
  w.u32(v.ignore_merges);
  w.u32(v.add_bos);
  w.u32(v.add_eos);
  w.str(v.chat_template);
  // Written only when not the default, so the bytes (and SHA-256) of every vocabulary made
  // before the fields existed, which all behaved as kBlockAndDrop without a normalizer, stay as
  // they were; a normalizer comes after the missing-byte rule, which it then always writes.
  if (v.missing_byte != MissingByte::kBlockAndDrop || !v.normalizer.empty())
    w.u32(static_cast<uint32_t>(v.missing_byte));
  if (!v.normalizer.empty()) w.str(v.normalizer);
  return w.take();
}

BpeVocabulary deserialize_bpe_vocabulary(const std::string& bytes, const std::string& source) {
  CONDENSE_CHECK(bytes.compare(0, kMagic.size(), kMagic) == 0,
                 "{}: not a condense BPE vocabulary (expected the magic 'condense-bpe-v1')",
                 source);
  Reader r(bytes, source);
  r.skip(kMagic.size());
  BpeVocabulary v;
  // Counts are checked against the bytes left before reserving, so a corrupt count cannot
  // ask for gigabytes.
  const uint32_t n_tokens = r.u32();
  r.need(uint64_t{n_tokens} * 4);
  v.tokens.reserve(n_tokens);
  for (uint32_t i = 0; i < n_tokens; ++i) v.tokens.push_back(r.str());
  const uint32_t n_types = r.u32();
  r.need(uint64_t{n_types} * 4);
  v.token_types.reserve(n_types);
  for (uint32_t i = 0; i < n_types; ++i) v.token_types.push_back(static_cast<int32_t>(r.u32()));
  const uint32_t n_merges = r.u32();
  r.need(uint64_t{n_merges} * 4);
  v.merges.reserve(n_merges);
  for (uint32_t i = 0; i < n_merges; ++i) v.merges.push_back(r.str());
  v.pre_tokenizer = r.str();
  v.bos_id = r.id("bos");
  v.eos_id = r.id("eos");
  v.pad_id = r.id("pad");
  v.unk_id = r.id("unk");
  v.ignore_merges = r.u32() != 0;
  v.add_bos = r.u32() != 0;
  v.add_eos = r.u32() != 0;
  v.chat_template = r.str();
  if (!r.at_end()) {
    const uint32_t rule = r.u32();
    CONDENSE_CHECK(rule <= 2, "{}: missing-byte rule {} (valid: 0, 1, 2)", source, rule);
    v.missing_byte = static_cast<MissingByte>(rule);
    if (!r.at_end()) {
      v.normalizer = r.str();
      CONDENSE_CHECK(v.normalizer == "nfc", "{}: normalizer '{}' (valid: nfc)", source, v.normalizer);
    } else {
      CONDENSE_CHECK(rule != 0, "{}: missing-byte rule 0 written without a normalizer", source);
    }
  }
  CONDENSE_CHECK(r.at_end(), "{}: trailing bytes after the BPE vocabulary", source);
  return v;
}

}  // namespace condense
