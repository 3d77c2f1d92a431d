// GPT-2 byte-to-unicode table, see byte_unicode.h.
#include "text/byte_unicode.h"

#include <array>

#include "text/utf8.h"

namespace condense {
namespace {

bool printable(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Table {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::array<int, 256 + 68> from_cp{};  // -1 where no byte is written as that code point
  Table() {
    from_cp.fill(-1);
    uint32_t next = 256;  // non-printable bytes take U+0100.. in byte order
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = printable(b) ? static_cast<uint32_t>(b) : next++;
      append_utf8(to_utf8[b], to_cp[b]);
      from_cp[to_cp[b]] = b;
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

uint32_t byte_to_code_point(uint8_t b) { return table().to_cp[b]; }

std::optional<uint8_t> code_point_to_byte(uint32_t cp) {
  const auto& from = table().from_cp;
  if (cp >= from.size() || from[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(from[cp]);
}

std::string byte_level_encode(std::string_view bytes) {
  const Table& t = table();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += t.to_utf8[static_cast<uint8_t>(c)];
  return out;
}

std::string byte_level_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = utf8_sequence_length(text, pos);
    if (len == 0) {  // not UTF-8 at all: not byte-level text; keep the byte
      out.push_back(text[pos++]);
      continue;
    }
    const auto byte = code_point_to_byte(decode_utf8(text, pos, len));
    if (byte) {
      out.push_back(static_cast<char>(*byte));
    } else {
      out.append(text.substr(pos, len));
    }
    pos += len;
  }
  return out;
}

}  // namespace condense
