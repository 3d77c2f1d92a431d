// libFuzzer target for Hugging Face tokenizer.json files (text/bpe_tokenizer_json.cpp,
// BpeTokenizer::from_tokenizer_json, which `condense import` reads): any input must either load
// and encode, or raise condense::Error; crashes, sanitizer reports and other exception types
// are bugs. The reader takes a path, so each input is written to a per-process file first.
// Built by tests/fuzz/run_fuzz.sh.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "core/error.h"
#include "text/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "fuzz_tokenizer_json." + std::to_string(::getpid()) + ".json";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    condense::BpeTokenizer tok = condense::BpeTokenizer::from_tokenizer_json(path);
    std::vector<int32_t> ids = tok.encode("Hello, world! 123 caf\xc3\xa9");
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
    (void)tok.decode(ids);
  } catch (const condense::Error&) {
  }
  return 0;
}
