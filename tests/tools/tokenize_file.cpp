// Test helper for tests/python/test_gguf_sentencepiece.py: encodes and decodes records with the
// tokenizer a file holds, read exactly as every --tokenizer option reads it
// (data/tokenizer_file.h: a GGUF's vocabulary, a checkpoint's, a .model, a tokenizer.json).
//   tokenize_file [--save-serialized PATH] [--special] TOKENIZER_FILE IN OUT
// (--special: Tokenizer::encode_special, control pieces written in the text parsed)
// IN and OUT: tests/tools/token_records.h. Prints kind, vocab_size, sha256, bos_id, eos_id,
// unk_id and the count of each token type ("types 1:N 2:N ...") on stdout.
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "data/tokenizer_file.h"
#include "tests/tools/token_records.h"

int main(int argc, char** argv) {
  try {
    std::string save;
    bool special = false;  // encode_special: control pieces in the text become their ids
    while (argc > 4) {
      const std::string a = argv[1];
      if (a == "--save-serialized" && argc > 5) {
        save = argv[2];
        argv += 2;
        argc -= 2;
      } else if (a == "--special") {
        special = true;
        argv += 1;
        argc -= 1;
      } else {
        break;
      }
    }
    CONDENSE_CHECK(argc == 4, "usage: tokenize_file [--save-serialized PATH] [--special] TOKENIZER_FILE IN OUT");
    const condense::Tokenizer tok = condense::load_tokenizer_file(argv[1]);
    if (!save.empty()) std::ofstream(save, std::ios::binary) << tok.serialized();
    std::map<int32_t, int64_t> types;
    for (int id = 0; id < tok.vocab_size(); ++id) ++types[tok.token_type(id)];
    std::cout << "kind " << tok.kind() << "\nvocab_size " << tok.vocab_size() << "\nsha256 "
              << tok.sha256() << "\nbos_id " << tok.bos_id() << "\neos_id " << tok.eos_id()
              << "\nunk_id " << tok.unk_id() << "\ntypes";
    for (auto [type, n] : types) std::cout << " " << type << ":" << n;
    std::cout << "\n";
    condense::test_tools::encode_records(
        argv[2], argv[3],
        [&](std::string_view text) { return special ? tok.encode_special(std::string(text)) : tok.encode(std::string(text)); },
        [&](const std::vector<int32_t>& ids) { return tok.decode(ids); });
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
