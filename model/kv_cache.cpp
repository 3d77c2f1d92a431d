#include "model/kv_cache.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {

KVCache::KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity,
                 at::TensorOptions options)
    : capacity_(capacity) {
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    keys_.push_back(at::empty({batch, config.kv_heads(), capacity, config.head_size()}, options));
    values_.push_back(at::empty({batch, config.kv_heads(), capacity, config.head_size()}, options));
  }
}

std::pair<at::Tensor, at::Tensor> KVCache::append(int64_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  int64_t t = k.size(2);
  CONDENSE_CHECK(length_ + t <= capacity_, "KV cache full: {} cached + {} new > capacity {}",
                 length_, t, capacity_);
  keys_[layer].narrow(2, length_, t).copy_(k);
  values_[layer].narrow(2, length_, t).copy_(v);
  return {keys_[layer].narrow(2, 0, length_ + t), values_[layer].narrow(2, 0, length_ + t)};
}

void KVCache::commit(int64_t t) { length_ += t; }

}  // namespace condense
