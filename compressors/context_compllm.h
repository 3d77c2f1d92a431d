// CompLLM-style segment compression (Berton et al. 2025, "CompLLM: Compression for Long Context
// Q&A", Amazon): the context is split into segments of at most S tokens, each compressed
// independently (cost linear in the context; a segment's embeddings depend on its tokens only,
// so they are cached by content and reused across queries).
//
//   segment (s <= S tokens) -> [embed(segment), k = ceil(s / C) learned slot vectors] through
//   the decoder *with* LoRA adapters on every projection, positions 0 .. s + k - 1 -> the
//   slots' final hidden states -> one linear map -> k "concept embeddings" in the decoder's
//   embedding space.
//
// The decoder *without* the adapters reads the concept embeddings of all segments in place of
// the context. Training distills: the student is the frozen decoder reading [prefix, concept
// embeddings, continuation], the teacher the same decoder reading the uncompressed window; the
// loss is forward KL on the continuation positions (the last context position predicting the
// first continuation token included), mixed with cross-entropy by context.kd_ratio.
//
// Checkpoint names: compllm.slots [ceil(S / C), hidden], compllm.proj.weight [hidden, hidden],
// compllm.lora.model.layers.<i>.<module>.<proj>.A / .B (the adapters are never merged into the
// decoder).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "compressors/context_compressor.h"
#include "compressors/lora.h"

namespace condense {

struct CompLlmOptions {
  int64_t segment_len = 20;  // S
  int64_t rate = 2;          // C: segment tokens per concept embedding
  int64_t lora_rank = 8;
  double lora_alpha = 16;
  double kd_ratio = 1.0;     // weight of KL; 1 - kd_ratio goes to cross-entropy
};

class CompLlmCompressor : public ContextCompressor {
 public:
  // Adapters (B at zero) on every q/k/v/o/gate/up/down projection of `decoder`, slots drawn
  // around the embeddings' scale, the projection at the identity. Throws naming the key when an
  // option is out of range.
  CompLlmCompressor(LlamaForCausalLM& decoder, CompLlmOptions options);

  // Segments of segment_len tokens, compressed independently (all rows' full segments in one
  // batch, the partial last ones in another) and concatenated. In inference mode (train(false),
  // as loaded for use) and without gradients, segments are served from the content cache when
  // present and the misses compressed together. In training mode nothing is cached: the
  // tensors change between calls (validation during training runs without gradients; an
  // optimizer's in-place update cannot be detected: the fused AdamW leaves version counters
  // alone).
  at::Tensor context(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  int64_t positions(int64_t n) const override;
  at::Tensor loss(LlamaForCausalLM& decoder, const Batch& batch, const ContextLayout& layout) override;
  std::vector<std::pair<std::string, at::Tensor>> named() const override;
  void load(const StoredTensors& stored) override;
  void calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  void to(c10::Device device) override;
  // Switching mode empties the cache.
  void train(bool on) override {
    training_ = on;
    cache_.clear();
  }
  std::string describe() const override;

  // One segment [B, s] (1 <= s <= segment_len) -> [B, ceil(s / C), hidden], no cache.
  at::Tensor compress_segment(LlamaForCausalLM& decoder, const at::Tensor& segment);
  int64_t cache_hits() const { return hits_; }
  int64_t cache_size() const { return static_cast<int64_t>(cache_.size()); }
  void clear_cache() { cache_.clear(); }
  const CompLlmOptions& options() const { return options_; }

 private:
  CompLlmOptions options_;
  std::shared_ptr<LoraAdapters> adapters_;
  at::Tensor slots_, proj_;
  bool training_ = true;
  // Segments [R, s] -> [R, ceil(s / C), hidden]; through the cache in inference mode without
  // gradients.
  at::Tensor compress_segments(LlamaForCausalLM& decoder, const at::Tensor& segments);
  std::unordered_map<std::string, at::Tensor> cache_;  // SHA-256 of the segment's ids -> [k, hidden]
  int64_t hits_ = 0;
};

}  // namespace condense
