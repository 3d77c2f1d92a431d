// KVCache: per-layer keys and values of past positions for incremental decoding, in
// preallocated buffers [B, kv_heads, capacity, head_dim] so each new token costs no copy of
// the past. Not thread-safe; one cache per generation.
#pragma once
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama_config.h"

namespace condense {

class KVCache {
 public:
  KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity, at::TensorOptions options);
  // Number of positions already cached (the position offset of the next input).
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Appends k, v ([B, kv_heads, T, head_dim]) for `layer` at the current length and returns
  // views of all cached keys/values for that layer. The length advances in commit().
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // Call once after all layers appended T positions.
  void commit(int64_t t);
  void clear() { length_ = 0; }

 private:
  std::vector<at::Tensor> keys_, values_;
  int64_t capacity_;
  int64_t length_ = 0;
};

}  // namespace condense
