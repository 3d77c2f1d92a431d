// GPT-2's byte-to-unicode table (Radford et al. 2019, openai/gpt-2 encoder.py): byte-level BPE
// works on text in which every byte is one visible code point, so merges and vocabulary
// strings never contain raw whitespace or control bytes and every byte string is encodable.
// Printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) map to themselves; the other 68
// bytes map, in byte order, to U+0100, U+0101, ... (so ' ' is U+0120 'Ġ', '\n' is U+010A 'Ċ').
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace condense {

// The code point byte `b` is written as.
uint32_t byte_to_code_point(uint8_t b);
// The byte written as code point `cp`, if any.
std::optional<uint8_t> code_point_to_byte(uint32_t cp);

// Each byte of `bytes` as the UTF-8 of its code point (the tokenizer's internal spelling).
std::string byte_level_encode(std::string_view bytes);
// Inverse of byte_level_encode. A code point outside the table (a vocabulary that is not
// byte-level) is copied through as its own UTF-8, as Hugging Face's ByteLevel decoder does.
std::string byte_level_decode(std::string_view text);

}  // namespace condense
