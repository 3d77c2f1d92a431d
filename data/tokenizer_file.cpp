#include "data/tokenizer_file.h"

#include <algorithm>
#include <filesystem>
#include <type_traits>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "core/base64.h"
#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/hdf5_file.h"
#include "io/mapped_file.h"
#include "text/bpe_tokenizer.h"
#include "text/sentencepiece_proto.h"

namespace condense {
namespace {

std::vector<std::string> gguf_strings(const GgufReader& r, const std::string& path, const char* key) {
  CONDENSE_CHECK(r.has(key), "{}: no {} (the vocabulary's tokens)", path, key);
  const GgufValue& v = r.get(key);
  CONDENSE_CHECK(v.value.is_array(), "{}: {} is not an array", path, key);
  std::vector<std::string> out;
  out.reserve(v.value.size());
  for (const auto& e : v.value) {
    CONDENSE_CHECK(e.is_string(), "{}: {} holds a non-string element", path, key);
    out.push_back(e.get<std::string>());
  }
  return out;
}

template <typename T>
std::vector<T> gguf_numbers(const GgufReader& r, const std::string& path, const char* key) {
  const GgufValue& v = r.get(key);
  CONDENSE_CHECK(v.value.is_array(), "{}: {} is not an array", path, key);
  std::vector<T> out;
  out.reserve(v.value.size());
  for (const auto& e : v.value) {
    if constexpr (std::is_integral_v<T>)
      CONDENSE_CHECK(e.is_number_integer(), "{}: {} holds a non-integer element", path, key);
    else
      CONDENSE_CHECK(e.is_number(), "{}: {} holds a non-numeric element", path, key);
    out.push_back(e.get<T>());
  }
  return out;
}

std::optional<int32_t> gguf_id(const GgufReader& r, const char* key) {
  if (!r.has(key)) return std::nullopt;
  return static_cast<int32_t>(r.get_uint(key));
}

bool gguf_flag(const GgufReader& r, const std::string& path, const char* key, bool absent) {
  if (!r.has(key)) return absent;
  const GgufValue& v = r.get(key);
  CONDENSE_CHECK(v.value.is_boolean(), "{}: {} is not a bool", path, key);
  return v.value.get<bool>();
}

// The token count without the padding llama.cpp's converter (and condense's exports) append to
// reach the embedding's rows: a trailing run of unused (type 5) tokens named "[PAD{id}]" (Qwen2's
// 151665 tokens padded to 151936). They are no part of the vocabulary: without them a GGUF's
// vocabulary is its tokenizer.json's (same hash), and generation never draws them.
size_t unpadded_size(const std::vector<std::string>& tokens, const std::vector<int32_t>& types) {
  size_t n = tokens.size();
  while (n > 0 && n - 1 < types.size() && types[n - 1] == 5 &&
         tokens[n - 1] == fmt::format("[PAD{}]", n - 1))
    --n;
  return n;
}

// The byte-level BPE of a "gpt2" GGUF vocabulary as serialized tokenizer bytes. Errors name the
// file and key.
std::string gguf_bpe_tokenizer(const GgufReader& r, const std::string& path) {
  BpeVocabulary v;
  v.tokens = gguf_strings(r, path, "tokenizer.ggml.tokens");
  if (r.has("tokenizer.ggml.token_type"))
    v.token_types = gguf_numbers<int32_t>(r, path, "tokenizer.ggml.token_type");
  if (r.has("tokenizer.ggml.merges")) v.merges = gguf_strings(r, path, "tokenizer.ggml.merges");
  if (const size_t n = unpadded_size(v.tokens, v.token_types); n < v.tokens.size()) {
    v.tokens.resize(n);
    v.token_types.resize(n);
  }
  CONDENSE_CHECK(r.has("tokenizer.ggml.pre"), "{}: a gpt2 vocabulary without tokenizer.ggml.pre "
                 "(its pre-tokenizer); condense refuses to guess one", path);
  v.pre_tokenizer = r.get("tokenizer.ggml.pre").value.get<std::string>();
  v.bos_id = gguf_id(r, "tokenizer.ggml.bos_token_id");
  v.eos_id = gguf_id(r, "tokenizer.ggml.eos_token_id");
  v.pad_id = gguf_id(r, "tokenizer.ggml.padding_token_id");
  v.unk_id = gguf_id(r, "tokenizer.ggml.unknown_token_id");
  v.add_bos = gguf_flag(r, path, "tokenizer.ggml.add_bos_token", false);
  v.add_eos = gguf_flag(r, path, "tokenizer.ggml.add_eos_token", false);
  if (r.has("tokenizer.chat_template") && r.get("tokenizer.chat_template").value.is_string())
    v.chat_template = r.get("tokenizer.chat_template").value.get<std::string>();
  if (r.has(kGgufBpeNormalizerKey)) {
    const auto& n = r.get(kGgufBpeNormalizerKey).value;
    CONDENSE_CHECK(n == "nfc", "{}: {} is {} (valid: \"nfc\")", path, kGgufBpeNormalizerKey, n.dump());
    v.normalizer = "nfc";
  }
  return BpeTokenizer::from_gguf_fields(std::move(v), path).serialized();
}

// llama.cpp finds <unk>, <s> and </s> by id, whatever their token types, and converters type
// them variously (gguf-py's LlamaHfVocab marks every special token control, <unk> included).
// sentencepiece needs exactly one unknown piece and control pieces for bos/eos, so the pieces at
// those ids take those types (another piece typed unknown becomes control, which llama.cpp does
// not produce from text either); said in a warning. Ids out of range are left to
// sentencepiece_model_proto's refusal.
void retype_special_pieces(SentencepieceTables& t, const std::string& path) {
  const int64_t n = static_cast<int64_t>(t.types.size());
  std::vector<std::string> changed;
  auto retype = [&](int64_t id, int32_t type, const char* role) {
    if (id < 0 || id >= n || t.types[id] == type) return;
    changed.push_back(fmt::format("{} {} '{}' ({} -> {})", role, id,
                                  id < static_cast<int64_t>(t.pieces.size()) ? t.pieces[id] : "",
                                  t.types[id], type));
    t.types[id] = type;
  };
  const bool unk_in_range = t.unk_id >= 0 && t.unk_id < n;
  for (int64_t i = 0; i < n && unk_in_range; ++i)
    if (t.types[i] == 2 && i != t.unk_id) retype(i, 3, "unknown-typed");
  retype(t.unk_id, 2, "unk");
  retype(t.bos_id, 3, "bos");
  retype(t.eos_id, 3, "eos");
  if (!changed.empty())
    spdlog::warn("{}: token types follow the special ids as llama.cpp reads them: {}", path,
                 fmt::join(changed, ", "));
}

// llama.cpp's sentencepiece tables ("llama": Llama 1/2, Mistral, TinyLlama) rebuilt into a
// sentencepiece model (text/sentencepiece_proto.h), with llama.cpp's defaults for what is
// absent: scores 0, every token normal, <unk> 0, <s> 1, </s> 2, a space prefix. A condense
// sentencepiece tokenizer always prefixes <s> and never appends </s> to a scored text, so a file
// asking otherwise is refused: its probabilities would not be llama.cpp's.
std::string gguf_sentencepiece_tokenizer(const GgufReader& r, const std::string& path) {
  SentencepieceTables t;
  t.pieces = gguf_strings(r, path, "tokenizer.ggml.tokens");
  t.scores = r.has("tokenizer.ggml.scores") ? gguf_numbers<float>(r, path, "tokenizer.ggml.scores")
                                            : std::vector<float>(t.pieces.size(), 0.0f);
  t.types = r.has("tokenizer.ggml.token_type")
                ? gguf_numbers<int32_t>(r, path, "tokenizer.ggml.token_type")
                : std::vector<int32_t>(t.pieces.size(), 1);
  for (int32_t& type : t.types)
    if (type == 0) type = 1;  // llama.cpp's "undefined" is a normal piece
  if (const size_t n = unpadded_size(t.pieces, t.types); n < t.pieces.size() && n <= t.scores.size()) {
    t.pieces.resize(n);
    t.scores.resize(n);
    t.types.resize(n);
  }
  // Without unknown_token_id llama.cpp takes 0; condense takes the one piece typed unknown where
  // there is exactly one (the same id in every file llama.cpp's converter writes).
  std::optional<int32_t> unk = gguf_id(r, "tokenizer.ggml.unknown_token_id");
  if (!unk && std::count(t.types.begin(), t.types.end(), 2) == 1)
    unk = static_cast<int32_t>(std::find(t.types.begin(), t.types.end(), 2) - t.types.begin());
  t.unk_id = unk.value_or(0);
  t.bos_id = gguf_id(r, "tokenizer.ggml.bos_token_id").value_or(1);
  t.eos_id = gguf_id(r, "tokenizer.ggml.eos_token_id").value_or(2);
  t.add_dummy_prefix = gguf_flag(r, path, "tokenizer.ggml.add_space_prefix", true);
  retype_special_pieces(t, path);
  CONDENSE_CHECK(gguf_flag(r, path, "tokenizer.ggml.add_bos_token", true),
                 "{}: tokenizer.ggml.add_bos_token is false; condense's sentencepiece tokenizer "
                 "always starts a text with <s>, so it would score other tokens than llama.cpp", path);
  CONDENSE_CHECK(!gguf_flag(r, path, "tokenizer.ggml.add_eos_token", false),
                 "{}: tokenizer.ggml.add_eos_token is true; condense's sentencepiece tokenizer "
                 "never ends a text with </s>, so it would score other tokens than llama.cpp", path);
  return sentencepiece_model_proto(t, path + " (tokenizer.ggml.*)");
}

}  // namespace

std::optional<std::string> gguf_tokenizer_bytes(const GgufReader& r, const std::string& path) {
  if (r.has(kGgufSentencepieceKey)) {
    const GgufValue& v = r.get(kGgufSentencepieceKey);
    CONDENSE_CHECK(v.type == GgufValueType::kString, "{}: {} is not a string", path, kGgufSentencepieceKey);
    return base64_decode(v.value.get<std::string>(), path + ":" + kGgufSentencepieceKey);
  }
  if (!r.has("tokenizer.ggml.model")) return std::nullopt;
  const GgufValue& model = r.get("tokenizer.ggml.model");
  CONDENSE_CHECK(model.value.is_string(), "{}: tokenizer.ggml.model is not a string", path);
  const std::string name = model.value.get<std::string>();
  if (name == "gpt2") return gguf_bpe_tokenizer(r, path);
  if (name == "llama") return gguf_sentencepiece_tokenizer(r, path);
  return std::nullopt;
}

Tokenizer load_tokenizer_file(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".gguf") {
    auto file = MappedFile::open(path);
    GgufReader r(file->data(), file->size(), path);
    std::optional<std::string> bytes = gguf_tokenizer_bytes(r, path);
    CONDENSE_CHECK(bytes, "{}: holds no tokenizer condense can rebuild (tokenizer.ggml.model is "
                   "{}; condense reads \"gpt2\" byte-level BPE and \"llama\" sentencepiece vocabularies)",
                   path, r.has("tokenizer.ggml.model") ? r.get("tokenizer.ggml.model").value.dump() : "absent");
    return Tokenizer::from_serialized(*bytes, path);
  }
  if (ext == ".h5") {
    CONDENSE_CHECK(std::filesystem::is_regular_file(path), "{}: no such tokenizer file", path);
    H5File f = H5File::open_read(path);
    CONDENSE_CHECK(f.has("tokenizer"), "{}: an HDF5 file without a 'tokenizer' dataset (expected a "
                   "condense checkpoint or token store)", path);
    std::string bytes = f.read_bytes("tokenizer");
    CONDENSE_CHECK(!bytes.empty(), "{}: its tokenizer is empty (a checkpoint imported without one)", path);
    return Tokenizer::from_serialized(bytes, path + ":tokenizer");
  }
  return Tokenizer::load(path);
}

}  // namespace condense
