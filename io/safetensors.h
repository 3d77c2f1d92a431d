// safetensors files as LibTorch tensors: a memory-mapped, validated reader (the header rules
// are in io/safetensors_header.h) and an atomic writer. The writer orders tensors by element
// size, largest first, then by name, so every tensor's data starts at a multiple of its
// element size (the data section itself starts 8-aligned), and records
// __metadata__ {"format": "pt"} as transformers expects.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io/mapped_file.h"
#include "io/safetensors_header.h"

namespace condense {

class SafetensorsFile {
 public:
  // Maps and validates `path`; a missing, truncated or malformed file is an error naming it.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool has(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;  // throws naming file and tensor
  // A CPU tensor owning a copy of the data, in the file's dtype (F32, F16, BF16, ...).
  at::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// The safetensors dtype name of a tensor's dtype; throws for dtypes safetensors lacks here.
std::string safetensors_dtype_name(at::ScalarType t);

// Writes `tensors` (CPU, any layout; names unique) to `path` atomically.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace condense
