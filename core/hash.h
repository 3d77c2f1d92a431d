// SHA-256 (FIPS 180-4) for identifying tokenizers and resolved recipes. Not for security.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace condense {

// Lower-case hex digest of the bytes.
std::string sha256_hex(std::string_view bytes);

}  // namespace condense
