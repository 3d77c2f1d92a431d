#include "io/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace condense {
namespace {

// The reference implementation refuses headers past 100 MB; so do we (a corrupt length
// otherwise asks for an absurd allocation).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL") return 1;
  return 0;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& source) {
  CONDENSE_CHECK(size >= 8, "{}: truncated safetensors file ({} bytes, the header length alone "
                 "takes 8)", source, size);
  uint64_t n = read_u64_le(data);
  CONDENSE_CHECK(n <= kMaxHeaderBytes, "{}: safetensors header length {} exceeds the 100 MB limit",
                 source, n);
  CONDENSE_CHECK(n <= size - 8, "{}: safetensors header length {} runs past the end of the file "
                 "({} bytes)", source, n, size);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data + 8, data + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", source, e.what());
  }
  CONDENSE_CHECK(j.is_object(), "{}: safetensors header must be a JSON object", source);
  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      CONDENSE_CHECK(v.is_object(), "{}: __metadata__ must be an object of strings", source);
      for (auto m = v.begin(); m != v.end(); ++m) {
        CONDENSE_CHECK(m.value().is_string(), "{}: __metadata__ value '{}' is not a string",
                       source, m.key());
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    CONDENSE_CHECK(v.is_object(), "{}: tensor '{}': entry is not an object", source, name);
    SafetensorsEntry e;
    e.name = name;
    CONDENSE_CHECK(v.contains("dtype") && v["dtype"].is_string(),
                   "{}: tensor '{}': missing or non-string 'dtype'", source, name);
    e.dtype = v["dtype"].get<std::string>();
    size_t esize = safetensors_dtype_size(e.dtype);
    CONDENSE_CHECK(esize > 0, "{}: tensor '{}': unsupported dtype '{}' (supported: F64 F32 F16 "
                   "BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)", source, name, e.dtype);
    CONDENSE_CHECK(v.contains("shape") && v["shape"].is_array(),
                   "{}: tensor '{}': missing or non-array 'shape'", source, name);
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      CONDENSE_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape entry {} is not a "
                     "non-negative integer", source, name, d.dump());
      uint64_t dim = d.get<uint64_t>();
      CONDENSE_CHECK(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                         (dim == 0 || numel <= std::numeric_limits<uint64_t>::max() / dim),
                     "{}: tensor '{}': shape overflows", source, name);
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
    CONDENSE_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                       off[1].is_number_unsigned(),
                   "{}: tensor '{}': 'data_offsets' must be [begin, end] non-negative integers",
                   source, name);
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    CONDENSE_CHECK(e.begin <= e.end && e.end <= data_size,
                   "{}: tensor '{}': data_offsets [{}, {}] out of range (data section is {} "
                   "bytes)", source, name, e.begin, e.end, data_size);
    CONDENSE_CHECK(numel <= std::numeric_limits<uint64_t>::max() / esize &&
                       e.end - e.begin == numel * esize,
                   "{}: tensor '{}': {} with shape of {} elements needs {} bytes but "
                   "data_offsets span {}", source, name, e.dtype, numel, numel * esize,
                   e.end - e.begin);
    h.entries.push_back(std::move(e));
  }
  std::sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& e : h.entries) {
    CONDENSE_CHECK(e.begin >= pos, "{}: tensor '{}': data_offsets [{}, {}] overlap the previous "
                   "tensor (which ends at {})", source, e.name, e.begin, e.end, pos);
    CONDENSE_CHECK(e.begin == pos, "{}: tensor '{}': gap of {} bytes before its data (offsets "
                   "must be packed)", source, e.name, e.begin - pos);
    pos = e.end;
  }
  CONDENSE_CHECK(pos == data_size, "{}: file size {} does not match the header: expected {} "
                 "(8 + header {} + data {})", source, size, h.data_start + pos, n, pos);
  return h;
}

std::string make_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                    const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the writing order, so the header reads in file order.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  for (const auto& e : entries)
    j[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string text = j.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  return text;
}

}  // namespace condense
