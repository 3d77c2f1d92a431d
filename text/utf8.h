// UTF-8 helpers for the byte-level BPE tokenizer. The tokenizer accepts arbitrary bytes, but
// its regexes (PCRE2 in UTF mode) must only ever see valid UTF-8, so text is cut into maximal
// valid runs first; these functions define "valid" once (RFC 3629: no overlongs, no
// surrogates, nothing past U+10FFFF).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace condense {

// Length of the valid UTF-8 sequence starting at s[pos], or 0 if the bytes there are not one.
size_t utf8_sequence_length(std::string_view s, size_t pos);

// The end of the maximal run of valid UTF-8 sequences starting at s[pos] (pos itself when the
// bytes there are not one): text is handled in such runs, invalid bytes between them.
size_t utf8_valid_run_end(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of `code_point` (must be <= 0x10FFFF and not a surrogate).
void append_utf8(std::string& out, uint32_t code_point);

// The code point of the valid sequence of `len` bytes at s[pos] (from utf8_sequence_length).
uint32_t decode_utf8(std::string_view s, size_t pos, size_t len);

}  // namespace condense
