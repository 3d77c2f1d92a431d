// The record files tests/tools' tokenizer helpers exchange with Python: IN holds records of
// u32 length + bytes; OUT gets, per record, u32 n + n int32 ids, then u32 length + the
// decoded bytes. encode_records() runs `encode` and `decode` over every record.
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace condense::test_tools {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CONDENSE_CHECK(in, "cannot open {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

template <typename Encode, typename Decode>
void encode_records(const std::string& in_path, const std::string& out_path, Encode encode,
                    Decode decode) {
  auto put_u32 = [](std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  const std::string in = read_file(in_path);
  std::string out;
  for (size_t pos = 0; pos < in.size();) {
    CONDENSE_CHECK(pos + 4 <= in.size(), "{}: truncated record header", in_path);
    uint32_t n = 0;
    std::memcpy(&n, in.data() + pos, 4);
    pos += 4;
    CONDENSE_CHECK(pos + n <= in.size(), "{}: truncated record", in_path);
    const std::vector<int32_t> ids = encode(std::string_view(in).substr(pos, n));
    pos += n;
    put_u32(out, static_cast<uint32_t>(ids.size()));
    out.append(reinterpret_cast<const char*>(ids.data()), ids.size() * 4);
    const std::string back = decode(ids);
    put_u32(out, static_cast<uint32_t>(back.size()));
    out += back;
  }
  std::ofstream(out_path, std::ios::binary) << out;
}

}  // namespace condense::test_tools
