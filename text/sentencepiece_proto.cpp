#include "text/sentencepiece_proto.h"

#include <cstring>
#include <string_view>
#include <unordered_set>

#include "core/error.h"

namespace condense {
namespace {

// Protobuf wire format: a key is (field << 3) | wire type; integers are base-128 varints (a
// negative int32 as its 64-bit two's complement), floats 4 little-endian bytes, strings and
// nested messages a varint length then the bytes.
enum WireType : uint32_t { kVarint = 0, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (field << 3) | type); }
void put_int(std::string& out, uint32_t field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_float(std::string& out, uint32_t field, float v) {
  static_assert(sizeof(float) == 4);
  put_key(out, field, kFixed32);
  char b[4];
  std::memcpy(b, &v, 4);  // x86-64 and aarch64 are little-endian, as the wire format is
  out.append(b, 4);
}

// sentencepiece_model.proto's field numbers.
namespace model_proto { constexpr uint32_t kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3; }
namespace piece { constexpr uint32_t kPiece = 1, kScore = 2, kType = 3; }
namespace trainer_spec {
constexpr uint32_t kModelType = 3, kVocabSize = 4, kByteFallback = 35, kUnkId = 40, kBosId = 41,
                   kEosId = 42, kPadId = 43, kUnkPiece = 45, kBosPiece = 46, kEosPiece = 47;
constexpr int64_t kBpe = 2;
}  // namespace trainer_spec
namespace normalizer_spec {
constexpr uint32_t kName = 1, kAddDummyPrefix = 3, kRemoveExtraWhitespaces = 4,
                   kEscapeWhitespaces = 5;
}

constexpr int32_t kUnknown = 2, kControl = 3, kByte = 6;

// Reads one protobuf message's fields in order; refuses truncated or malformed input.
class WireReader {
 public:
  WireReader(std::string_view bytes, const std::string& source) : b_(bytes), source_(source) {}
  bool done() const { return pos_ == b_.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      CONDENSE_CHECK(pos_ < b_.size(), "{}: truncated sentencepiece model (a varint at byte {})",
                     source_, pos_);
      const uint8_t byte = static_cast<uint8_t>(b_[pos_++]);
      v |= uint64_t(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return v;
    }
    fail("{}: malformed sentencepiece model (a varint longer than 10 bytes)", source_);
  }
  std::string_view bytes(size_t n) {
    CONDENSE_CHECK(n <= b_.size() - pos_, "{}: truncated sentencepiece model ({} bytes wanted at "
                   "byte {} of {})", source_, n, pos_, b_.size());
    std::string_view out = b_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::string_view length_delimited() { return bytes(varint()); }
  float fixed32_float() {
    float v;
    std::memcpy(&v, bytes(4).data(), 4);
    return v;
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case kVarint: varint(); return;
      case 1: bytes(8); return;
      case kLengthDelimited: length_delimited(); return;
      case kFixed32: bytes(4); return;
      default: fail("{}: malformed sentencepiece model (wire type {})", source_, wire_type);
    }
  }

 private:
  std::string_view b_;
  const std::string& source_;
  size_t pos_ = 0;
};

void check_tables(const SentencepieceTables& t, const std::string& source) {
  const size_t n = t.pieces.size();
  CONDENSE_CHECK(n > 0, "{}: the sentencepiece vocabulary has no pieces", source);
  CONDENSE_CHECK(t.scores.size() == n && t.types.size() == n, "{}: {} pieces but {} scores and {} "
                 "token types (one of each per piece expected)", source, n, t.scores.size(), t.types.size());
  for (auto [name, id] : {std::pair{"unk", t.unk_id}, {"bos", t.bos_id}, {"eos", t.eos_id}})
    CONDENSE_CHECK(id >= 0 && id < static_cast<int64_t>(n), "{}: the {} token id {} is not in [0, {})",
                   source, name, id, n);
  std::unordered_set<std::string> seen;
  int64_t unknown = -1;
  for (size_t i = 0; i < n; ++i) {
    CONDENSE_CHECK(t.types[i] >= 1 && t.types[i] <= 6, "{}: token {} ('{}') has type {}; expected 1..6 "
                   "(normal, unknown, control, user defined, unused, byte)", source, i, t.pieces[i], t.types[i]);
    CONDENSE_CHECK(!t.pieces[i].empty(), "{}: token {} is an empty string", source, i);
    CONDENSE_CHECK(seen.insert(t.pieces[i]).second, "{}: token '{}' appears twice (second at id {})",
                   source, t.pieces[i], i);
    if (t.types[i] == kUnknown) {
      CONDENSE_CHECK(unknown < 0, "{}: two unknown tokens ({} and {}); sentencepiece has one", source,
                     unknown, i);
      unknown = static_cast<int64_t>(i);
    }
  }
  CONDENSE_CHECK(unknown >= 0, "{}: no token of type 2 (unknown); sentencepiece needs one", source);
  CONDENSE_CHECK(t.unk_id == unknown, "{}: the unknown token id is {} but token {} is the one of type "
                 "unknown", source, t.unk_id, unknown);
  for (auto [name, id] : {std::pair{"bos", t.bos_id}, {"eos", t.eos_id}}) {
    CONDENSE_CHECK(t.types[id] == kControl, "{}: the {} token {} ('{}') has type {}, not control (3)",
                   source, name, id, t.pieces[id], t.types[id]);
  }
}

}  // namespace

std::string sentencepiece_model_proto(const SentencepieceTables& t, const std::string& source) {
  check_tables(t, source);
  std::string out;
  bool has_bytes = false;
  for (size_t i = 0; i < t.pieces.size(); ++i) {
    std::string p;
    put_bytes(p, piece::kPiece, t.pieces[i]);
    put_float(p, piece::kScore, t.scores[i]);
    put_int(p, piece::kType, t.types[i]);
    put_bytes(out, model_proto::kPieces, p);
    has_bytes |= t.types[i] == kByte;
  }
  std::string spec;
  put_int(spec, trainer_spec::kModelType, trainer_spec::kBpe);
  put_int(spec, trainer_spec::kVocabSize, static_cast<int64_t>(t.pieces.size()));
  put_int(spec, trainer_spec::kByteFallback, has_bytes);
  put_int(spec, trainer_spec::kUnkId, t.unk_id);
  put_int(spec, trainer_spec::kBosId, t.bos_id);
  put_int(spec, trainer_spec::kEosId, t.eos_id);
  put_int(spec, trainer_spec::kPadId, -1);
  put_bytes(spec, trainer_spec::kUnkPiece, t.pieces[t.unk_id]);
  put_bytes(spec, trainer_spec::kBosPiece, t.pieces[t.bos_id]);
  put_bytes(spec, trainer_spec::kEosPiece, t.pieces[t.eos_id]);
  put_bytes(out, model_proto::kTrainerSpec, spec);
  // llama.cpp's "llama" tokenizer normalizes nothing but spaces, and never collapses them.
  std::string norm;
  put_bytes(norm, normalizer_spec::kName, "identity");
  put_int(norm, normalizer_spec::kAddDummyPrefix, t.add_dummy_prefix);
  put_int(norm, normalizer_spec::kRemoveExtraWhitespaces, 0);
  put_int(norm, normalizer_spec::kEscapeWhitespaces, 1);
  put_bytes(out, model_proto::kNormalizerSpec, norm);
  return out;
}

SentencepieceTables read_sentencepiece_tables(const std::string& proto, const std::string& source) {
  SentencepieceTables t;
  WireReader r(proto, source);
  while (!r.done()) {
    const uint64_t key = r.varint();
    if (key == ((model_proto::kNormalizerSpec << 3) | kLengthDelimited)) {
      WireReader n(r.length_delimited(), source);
      while (!n.done()) {
        const uint64_t k = n.varint();
        if (k == ((normalizer_spec::kAddDummyPrefix << 3) | kVarint)) t.add_dummy_prefix = n.varint() != 0;
        else n.skip(k & 7);
      }
      continue;
    }
    if (key != ((model_proto::kPieces << 3) | kLengthDelimited)) {
      r.skip(key & 7);
      continue;
    }
    WireReader p(r.length_delimited(), source);
    std::string text;
    float score = 0.0f;
    int32_t type = 1;
    while (!p.done()) {
      const uint64_t k = p.varint();
      if (k == ((piece::kPiece << 3) | kLengthDelimited)) text = std::string(p.length_delimited());
      else if (k == ((piece::kScore << 3) | kFixed32)) score = p.fixed32_float();
      else if (k == ((piece::kType << 3) | kVarint)) type = static_cast<int32_t>(p.varint());
      else p.skip(k & 7);
    }
    t.pieces.push_back(std::move(text));
    t.scores.push_back(score);
    t.types.push_back(type);
  }
  return t;
}

std::string append_sentencepiece_pieces(const std::string& proto, const std::vector<AddedPiece>& pieces,
                                        const std::string& source) {
  const SentencepieceTables t = read_sentencepiece_tables(proto, source);
  std::unordered_set<std::string> seen(t.pieces.begin(), t.pieces.end());
  std::string out = proto;
  for (const AddedPiece& a : pieces) {
    CONDENSE_CHECK(!a.piece.empty(), "{}: an added token is empty", source);
    CONDENSE_CHECK(seen.insert(a.piece).second, "{}: added token '{}' is already a piece of the "
                   "sentencepiece model (or added twice)", source, a.piece);
    CONDENSE_CHECK(a.type == kControl || a.type == 4, "{}: added token '{}' has sentencepiece type {}, "
                   "expected 3 (control) or 4 (user defined)", source, a.piece, a.type);
    std::string p;
    put_bytes(p, piece::kPiece, a.piece);
    put_float(p, piece::kScore, 0.0f);
    put_int(p, piece::kType, a.type);
    put_bytes(out, model_proto::kPieces, p);
  }
  return out;
}

}  // namespace condense
