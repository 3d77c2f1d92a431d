// A sentencepiece model rebuilt from the tables llama.cpp keeps for it: GGUF's
// tokenizer.ggml.model = "llama" (Llama 1/2, Mistral, TinyLlama, CodeLlama) stores the pieces,
// their scores and token types, the special ids and add_space_prefix, not the .model file.
// From these, sentencepiece_model_proto() writes the bytes of a sentencepiece ModelProto (BPE,
// identity normalization, byte fallback when the vocabulary has byte pieces) that
// sentencepiece loads and that then encodes as llama.cpp's "llama" tokenizer does: pieces merged
// pairwise by score, bytes without a piece as <0xNN>, a space prefixed, spaces as U+2581, no
// whitespace collapsing (tests/python/test_gguf_sentencepiece.py compares the two on mixed text).
//
// Debian's libsentencepiece-dev ships no protobuf headers, so the handful of fields are written
// in protobuf's wire format here (field numbers from sentencepiece_model.proto).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace condense {

struct SentencepieceTables {
  std::vector<std::string> pieces;
  std::vector<float> scores;   // one per piece
  std::vector<int32_t> types;  // one per piece, sentencepiece's (= GGUF's) numbering:
                               // 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
  int32_t unk_id = 0, bos_id = 1, eos_id = 2;  // llama.cpp's defaults for this tokenizer
  bool add_dummy_prefix = true;                // GGUF's tokenizer.ggml.add_space_prefix
};

// The serialized ModelProto. Refuses, naming `source` and what is wrong: no pieces, scores or
// types of another length, a type outside 1..6, an empty or repeated piece, other than exactly
// one unknown piece or an unk_id that is not it, a bos/eos id out of range or not a control piece
// (sentencepiece finds them by name among control pieces). No pad id: condense pads nothing with
// it, and converters often name <unk> as the pad.
std::string sentencepiece_model_proto(const SentencepieceTables& t, const std::string& source);

// The pieces, scores, types and add_dummy_prefix of any serialized ModelProto (a .model file's
// bytes; absent fields read as protobuf's defaults: type normal, add_dummy_prefix true); the ids
// keep their defaults. Used for what sentencepiece 0.1.97's processor does not say (a piece's
// type: it has no IsUserDefined; whether it prefixes a space). Malformed bytes are refused
// naming `source`.
SentencepieceTables read_sentencepiece_tables(const std::string& proto, const std::string& source);

// `proto` (a .model file's bytes) with `pieces` appended after its own, each with score 0 and
// its sentencepiece type (3 control, 4 user defined): the added tokens a Hugging Face
// tokenizer.json keeps beside a tokenizer.model (Phi-3's <|user|>, <|end|>, ...). ModelProto's
// pieces are a repeated field, so appending keeps every other field of the model as it was.
// Refuses, naming `source`, a piece that is empty or already in the model, or another type.
struct AddedPiece {
  std::string piece;
  int32_t type = 4;
};
std::string append_sentencepiece_pieces(const std::string& proto, const std::vector<AddedPiece>& pieces,
                                        const std::string& source);

}  // namespace condense
