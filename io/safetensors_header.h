// safetensors header parsing and validation, without LibTorch (so libFuzzer builds it alone).
// Layout (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian
// header length N, N bytes of JSON mapping tensor names to {"dtype", "shape", "data_offsets":
// [begin, end]} (offsets relative to the data section) plus an optional "__metadata__" object
// of string -> string, then the data section. A valid file packs its tensors with no gaps or
// overlaps, each span holds exactly numel * element size bytes, and the file ends where the
// last tensor ends. Every violation is a condense::Error naming the source and the tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace condense {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte span within the data section
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by begin (file order)
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;                // 8 + header length
};

// Bytes per element of a safetensors dtype name; 0 for a name this reader does not support.
size_t safetensors_dtype_size(const std::string& dtype);

// Parses and validates the whole file image `data[0, size)`; `source` names it in errors.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& source);

// The header JSON for `entries` (in the given order, offsets as given) and `metadata`,
// space-padded so that 8 + its length is a multiple of 8 (the data section starts aligned).
std::string make_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                    const std::map<std::string, std::string>& metadata);

}  // namespace condense
