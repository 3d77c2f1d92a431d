// Test helper for tests/python/test_bpe_tokenizer.py: encodes and decodes records with a
// byte-level BPE tokenizer so Python can compare the ids with llama.cpp's and tokenizers'.
//   bpe_tokenize (--json tokenizer.json | --fields fields.json) [--pre NAME] [--no-special]
//                [--save-serialized PATH] [--export-json PATH] IN OUT
// fields.json holds GGUF's tokenizer fields ({"tokens", "token_types", "merges", "pre",
// "bos_id", "eos_id", "pad_id", "unk_id"}) and goes through BpeTokenizer::from_gguf_fields.
// The tokenizer used is the one rebuilt from its own serialized bytes, so serialization is
// exercised too. IN: records of u32 length + bytes. OUT: per record u32 n + n int32 ids, then
// u32 length + the decoded bytes. Prints the vocabulary size and sha256 on stdout.
// --export-json writes the tokenizer's to_tokenizer_json() (what `export --format hf` writes).
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "text/bpe_tokenizer.h"

using condense::BpeTokenizer;
using condense::BpeVocabulary;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CONDENSE_CHECK(in, "cannot open {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

BpeVocabulary fields_from_json(const std::string& path) {
  const auto j = nlohmann::json::parse(read_file(path));
  BpeVocabulary v;
  v.tokens = j.at("tokens").get<std::vector<std::string>>();
  v.token_types = j.at("token_types").get<std::vector<int32_t>>();
  v.merges = j.at("merges").get<std::vector<std::string>>();
  v.pre_tokenizer = j.at("pre").get<std::string>();
  for (auto [key, field] : {std::pair{"bos_id", &v.bos_id},
                            {"eos_id", &v.eos_id},
                            {"pad_id", &v.pad_id},
                            {"unk_id", &v.unk_id}}) {
    if (j.contains(key) && !j[key].is_null()) *field = j[key].get<int32_t>();
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string json_path, fields_path, pre, in_path, out_path, save_serialized, export_json;
    bool special = true;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--json" && i + 1 < argc) {
        json_path = argv[++i];
      } else if (a == "--fields" && i + 1 < argc) {
        fields_path = argv[++i];
      } else if (a == "--pre" && i + 1 < argc) {
        pre = argv[++i];
      } else if (a == "--save-serialized" && i + 1 < argc) {
        save_serialized = argv[++i];
      } else if (a == "--export-json" && i + 1 < argc) {
        export_json = argv[++i];
      } else if (a == "--no-special") {
        special = false;
      } else if (in_path.empty()) {
        in_path = a;
      } else {
        out_path = a;
      }
    }
    CONDENSE_CHECK(
        !out_path.empty() && (json_path.empty() != fields_path.empty()),
        "usage: bpe_tokenize (--json F | --fields F) [--pre NAME] [--no-special] "
        "[--save-serialized PATH] [--export-json PATH] IN OUT");
    BpeTokenizer built = json_path.empty() ? BpeTokenizer::from_gguf_fields(
                                                 fields_from_json(fields_path), fields_path)
                                           : BpeTokenizer::from_tokenizer_json(json_path);
    if (!pre.empty()) {
      BpeVocabulary v = built.vocab();
      v.pre_tokenizer = pre;
      built = BpeTokenizer(std::move(v), "--pre " + pre);
    }
    const BpeTokenizer tok = BpeTokenizer::from_serialized(built.serialized(), "serialized");
    CONDENSE_CHECK(tok.serialized() == built.serialized(), "serialization does not round-trip");
    if (!save_serialized.empty()) std::ofstream(save_serialized, std::ios::binary) << tok.serialized();
    if (!export_json.empty()) std::ofstream(export_json, std::ios::binary) << tok.to_tokenizer_json();
    std::cout << "vocab_size " << tok.vocab_size() << "\nsha256 " << tok.sha256() << "\npre "
              << tok.pretokenizer().name() << "\nadd_bos " << tok.vocab().add_bos << "\nadd_eos "
              << tok.vocab().add_eos << "\nbos_id " << tok.bos_id().value_or(-1) << "\neos_id "
              << tok.eos_id().value_or(-1) << "\n";

    const std::string in = read_file(in_path);
    std::string out;
    for (size_t pos = 0; pos < in.size();) {
      CONDENSE_CHECK(pos + 4 <= in.size(), "{}: truncated record header", in_path);
      uint32_t n = 0;
      std::memcpy(&n, in.data() + pos, 4);
      pos += 4;
      CONDENSE_CHECK(pos + n <= in.size(), "{}: truncated record", in_path);
      const std::vector<int32_t> ids = tok.encode(std::string_view(in).substr(pos, n), special);
      pos += n;
      put_u32(out, static_cast<uint32_t>(ids.size()));
      out.append(reinterpret_cast<const char*>(ids.data()), ids.size() * 4);
      const std::string back = tok.decode(ids);
      put_u32(out, static_cast<uint32_t>(back.size()));
      out += back;
    }
    std::ofstream(out_path, std::ios::binary) << out;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
