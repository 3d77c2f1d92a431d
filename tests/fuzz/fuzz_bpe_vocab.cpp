// libFuzzer target for the byte-level BPE tokenizer as checkpoints and token stores carry it
// (text/bpe_vocabulary.cpp's serialized form, through BpeTokenizer::from_serialized): any input
// must either load, encode and decode (decode(encode(x)) == x, or nfc(x) with the NFC normalizer,
// wherever can_encode(x) and the ids are normal byte-level tokens), or raise
// condense::Error; crashes, sanitizer reports and other exception types are bugs. Built by
// tests/fuzz/run_fuzz.sh.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "text/bpe_tokenizer.h"
#include "text/unicode_nfc.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    condense::BpeTokenizer tok = condense::BpeTokenizer::from_serialized(bytes, "fuzz");
    for (const char* text : {"Hello, world! 123", "caf\xc3\xa9 \xe2\x82\xac\n\n  x", "cafe\xcc\x81", ""}) {
      const std::string want = tok.vocab().normalizer == "nfc" ? condense::nfc(text) : std::string(text);
      std::vector<int32_t> ids = tok.encode(text);
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) std::abort();
      // Round trip where it is promised: byte-level (normal) tokens decode to the bytes they
      // spell; a vocabulary may also mark a byte symbol's token control or user-defined, which
      // decode renders as its literal text by design.
      bool normal = true;
      for (int32_t id : ids) normal = normal && tok.token_type(id) == condense::BpeTokenType::kNormal;
      if (normal && tok.can_encode(text) && tok.decode(ids, /*render_special=*/true) != want) {
        std::fprintf(stderr, "round trip failed for '%s': decoded '%s' from", text,
                     tok.decode(ids, true).c_str());
        for (int32_t id : ids)
          std::fprintf(stderr, " %d='%s'(type %d)", id, tok.token(id).c_str(),
                       static_cast<int>(tok.token_type(id)));
        std::fprintf(stderr, "\n");
        std::abort();
      }
    }
  } catch (const condense::Error&) {
  }
  return 0;
}
