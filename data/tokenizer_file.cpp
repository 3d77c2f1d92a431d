#include "data/tokenizer_file.h"

#include <filesystem>

#include "core/base64.h"
#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/hdf5_file.h"
#include "io/mapped_file.h"
#include "text/bpe_tokenizer.h"

namespace condense {
namespace {

// The byte-level BPE of a "gpt2" GGUF vocabulary as serialized tokenizer bytes; nullopt for
// other tokenizer models. Errors name the file and key.
std::optional<std::string> gguf_bpe_tokenizer(const GgufReader& r, const std::string& path) {
  if (!r.has("tokenizer.ggml.model")) return std::nullopt;
  const GgufValue& model = r.get("tokenizer.ggml.model");
  CONDENSE_CHECK(model.value.is_string(), "{}: tokenizer.ggml.model is not a string", path);
  if (model.value.get<std::string>() != "gpt2") return std::nullopt;
  auto strings = [&](const char* key) {
    const GgufValue& v = r.get(key);
    CONDENSE_CHECK(v.value.is_array(), "{}: {} is not an array", path, key);
    std::vector<std::string> out;
    out.reserve(v.value.size());
    for (const auto& e : v.value) {
      CONDENSE_CHECK(e.is_string(), "{}: {} holds a non-string element", path, key);
      out.push_back(e.get<std::string>());
    }
    return out;
  };
  auto id = [&](const char* key) -> std::optional<int32_t> {
    if (!r.has(key)) return std::nullopt;
    return static_cast<int32_t>(r.get_uint(key));
  };
  auto flag = [&](const char* key) {
    return r.has(key) && r.get(key).value.is_boolean() && r.get(key).value.get<bool>();
  };
  BpeVocabulary v;
  v.tokens = strings("tokenizer.ggml.tokens");
  if (r.has("tokenizer.ggml.token_type")) {
    const GgufValue& t = r.get("tokenizer.ggml.token_type");
    CONDENSE_CHECK(t.value.is_array(), "{}: tokenizer.ggml.token_type is not an array", path);
    for (const auto& e : t.value) v.token_types.push_back(e.get<int32_t>());
  }
  if (r.has("tokenizer.ggml.merges")) v.merges = strings("tokenizer.ggml.merges");
  CONDENSE_CHECK(r.has("tokenizer.ggml.pre"), "{}: a gpt2 vocabulary without tokenizer.ggml.pre "
                 "(its pre-tokenizer); condense refuses to guess one", path);
  v.pre_tokenizer = r.get("tokenizer.ggml.pre").value.get<std::string>();
  v.bos_id = id("tokenizer.ggml.bos_token_id");
  v.eos_id = id("tokenizer.ggml.eos_token_id");
  v.pad_id = id("tokenizer.ggml.padding_token_id");
  v.unk_id = id("tokenizer.ggml.unknown_token_id");
  v.add_bos = flag("tokenizer.ggml.add_bos_token");
  v.add_eos = flag("tokenizer.ggml.add_eos_token");
  if (r.has("tokenizer.chat_template") && r.get("tokenizer.chat_template").value.is_string())
    v.chat_template = r.get("tokenizer.chat_template").value.get<std::string>();
  return BpeTokenizer::from_gguf_fields(std::move(v), path).serialized();
}

}  // namespace

std::optional<std::string> gguf_tokenizer_bytes(const GgufReader& r, const std::string& path) {
  if (r.has(kGgufSentencepieceKey)) {
    const GgufValue& v = r.get(kGgufSentencepieceKey);
    CONDENSE_CHECK(v.type == GgufValueType::kString, "{}: {} is not a string", path, kGgufSentencepieceKey);
    return base64_decode(v.value.get<std::string>(), path + ":" + kGgufSentencepieceKey);
  }
  return gguf_bpe_tokenizer(r, path);
}

Tokenizer load_tokenizer_file(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".gguf") {
    auto file = MappedFile::open(path);
    GgufReader r(file->data(), file->size(), path);
    std::optional<std::string> bytes = gguf_tokenizer_bytes(r, path);
    CONDENSE_CHECK(bytes, "{}: holds no tokenizer condense can rebuild (tokenizer.ggml.model is "
                   "{}; condense reads \"gpt2\" byte-level BPE vocabularies and its own exports)",
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
