// Hugging Face weight directories: one model.safetensors, or shards
// model-00001-of-0000N.safetensors with model.safetensors.index.json
// ({"metadata": {"total_size": bytes}, "weight_map": {tensor: shard file}}), the layout
// transformers' save_pretrained writes and from_pretrained reads.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"

namespace condense {

// Writes `tensors` under `dir` (which must exist): a single model.safetensors when their data
// fits `max_shard_bytes`, else shards filled in the given order (a tensor larger than the cap
// gets a shard of its own) plus the index. Returns the file names written.
std::vector<std::string> write_safetensors_shards(
    const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    uint64_t max_shard_bytes);

// Read access to every tensor of a weight directory. open() validates each shard file and the
// index: a missing shard, a tensor the index places in a shard that lacks it, a tensor present
// in two shards or absent from the index are errors naming the file and tensor.
class SafetensorsShards {
 public:
  static SafetensorsShards open(const std::string& dir);
  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;  // path of its shard
  at::Tensor tensor(const std::string& name) const;
  uint64_t total_bytes() const;  // sum of the tensors' data

 private:
  const SafetensorsFile& shard(const std::string& name) const;
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
};

}  // namespace condense
