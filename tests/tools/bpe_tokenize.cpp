// Test helper for tests/python/test_bpe_tokenizer.py: encodes and decodes records with a
// byte-level BPE tokenizer so Python can compare the ids with llama.cpp's and tokenizers'.
//   bpe_tokenize (--json tokenizer.json | --fields fields.json) [--pre NAME] [--no-special]
//                [--save-serialized PATH] [--export-json PATH] IN OUT
// fields.json holds GGUF's tokenizer fields ({"tokens", "token_types", "merges", "pre",
// "bos_id", "eos_id", "pad_id", "unk_id"}) and goes through BpeTokenizer::from_gguf_fields.
// The tokenizer used is the one rebuilt from its own serialized bytes, so serialization is
// exercised too. IN and OUT: tests/tools/token_records.h. Prints the vocabulary size and sha256
// on stdout.
// --export-json writes the tokenizer's to_tokenizer_json() (what `export --format hf` writes).
//   bpe_tokenize --nfc IN OUT   writes each record's NFC form (text/unicode_nfc.h) as its decoded
//                               bytes, with no ids.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "text/bpe_tokenizer.h"
#include "text/unicode_nfc.h"
#include "tests/tools/token_records.h"

using condense::BpeTokenizer;
using condense::BpeVocabulary;
using condense::test_tools::read_file;

namespace {

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
    if (argc == 4 && std::string(argv[1]) == "--nfc") {
      std::string normalized;
      condense::test_tools::encode_records(
          argv[2], argv[3],
          [&](std::string_view text) {
            normalized = condense::nfc(text);
            return std::vector<int32_t>{};
          },
          [&](const std::vector<int32_t>&) { return normalized; });
      std::cout << "unicode " << condense::nfc_unicode_version() << "\n";
      return 0;
    }
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

    condense::test_tools::encode_records(
        in_path, out_path, [&](std::string_view text) { return tok.encode(text, special); },
        [&](const std::vector<int32_t>& ids) { return tok.decode(ids); });
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
