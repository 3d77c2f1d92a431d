// Unicode Normalization Form C (UAX #15): canonical decomposition, canonical ordering of
// combining marks, canonical composition. The `NFC` normalizer of a tokenizer.json (Qwen2's);
// tables from tools/gen_unicode_nfc.py (Unicode 14.0 from Python's unicodedata, without what the
// `tokenizers` package's older tables do not know, so that it equals that package's NFC), Hangul
// syllables computed. Bytes that are not valid UTF-8 pass through unchanged and split the text
// there.
#pragma once
#include <string>
#include <string_view>

namespace condense {

std::string nfc(std::string_view utf8);

// The tables' version ("14.0.0 as tokenizers 0.22.2 applies it").
const char* nfc_unicode_version();

}  // namespace condense
