// KVCache: per-layer keys and values of past positions for incremental decoding, in buffers
// [B, heads, capacity, width] allocated at a layer's first append at the appended heads and
// widths (kv_heads x head_dim, or what a KV hook stores: projected widths, or one latent "head"
// shared by all heads; model/attention.h's KVHook), so each new token costs no copy of the
// past. Not thread-safe; one cache per generation.
//
// Two storage types:
//   fp    the keys and values as the model computes them (its dtype).
//   int8  KIVI's layout (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for
//         KV Cache"), at 8 bits: keys quantized per channel over groups of `group` consecutive
//         positions (key outliers sit in fixed channels), values per token; asymmetric (a
//         float32 scale and minimum per group-channel or per token, codes 0..255). The keys of
//         the current, incomplete group stay in full precision (KIVI's residual) and are
//         quantized when the group completes; values are quantized as they arrive. The ATen
//         attention reads dequantized copies made per call (the fast decoder reads the codes
//         themselves), so only the codes, scales and the residual group are held.
// Every query of an int8 append sees exactly the keys it would see decoding one token at a time
// (the quantized keys of complete groups before its own, its own group's in full precision), so
// a chunked prefill (prefill() in model/generate.h) and token-by-token decoding agree. An append
// within one group returns one run of positions as fp does; an append across groups returns the
// keys of the groups it completes twice (quantized, and in full precision) and sets
// append_mask(), which the attention must apply (model/attention.cpp; a latent cache's attention
// cannot, and refuses).
//
// Sliding-window layers (LlamaConfig::window) of an fp cache hold only their window: a ring of
// min(window, capacity) slots, position p in slot p % slots, so their memory stops growing once
// the window fills (Gemma 3 windows five layers in six). Attention over a ring reads it as the
// append returns it: one new position, every slot (in slot order: attention sums over keys, so
// their order does not matter, and every held key is within the new query's window); a chunk of
// several, the window - 1 held positions its first query still sees, in position order, then the
// chunk (a copy), which the caller masks from its first key's position (length + T - returned).
// An int8 cache's windowed layers hold a ring of whole key groups, ceil(window / group) + 1 of them
// (position p's value in slot p % slots, complete key group G in group slot G % groups): an append
// returns the complete groups that cover the window behind the current group, in position order,
// then the current group, and the caller masks as for a chunk.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama_config.h"

namespace condense {

enum class KVCacheType { kFp, kInt8 };

struct KVCacheOptions {
  KVCacheType type = KVCacheType::kFp;
  int64_t group = 32;  // int8: positions per key quantization group
};

// "fp" | "int8" -> options; throws naming `option` (e.g. "--kv-cache") and the valid values.
KVCacheOptions parse_kv_cache(const std::string& text, const std::string& option);

class KVCache {
 public:
  KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity, at::TensorOptions options,
          KVCacheOptions kind = {});
  // Number of positions already cached (the position offset of the next input).
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // The most positions the next append may carry: up to the capacity, except that int8 appends
  // stay within the current key group unless cross_groups (the caller applies append_mask()).
  int64_t max_append(bool cross_groups = false) const;
  // Appends k, v ([B, heads, T, width], the same heads and widths at every append of a layer)
  // for `layer` at the current length and returns
  // all cached keys/values for that layer (views for fp; dequantized copies for int8). The
  // length advances in commit().
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // After an int8 append across key groups: which returned key each new query sees, bool [T, keys]
  // (causal and by key group; a sliding window is the caller's), and the position of each returned
  // key, long [keys]. Undefined after any other append, whose keys are one run of positions ending
  // at the new ones.
  const at::Tensor& append_mask() const { return append_mask_; }
  const at::Tensor& append_key_positions() const { return append_key_positions_; }
  // CSKV's recent window (compressors/cskv.h): the original keys/values of the `keep` positions
  // before the current length followed by the appended k, v ([B, kv_heads, T, head_dim]), and
  // the position of the first. Held in full precision whatever the cache type; `keep` fixed
  // per layer. Counted by window_bytes(), not bytes_per_token() (a fixed amount, not per token).
  struct Recent {
    at::Tensor k, v;
    int64_t begin = 0;
  };
  Recent append_recent(int64_t layer, const at::Tensor& k, const at::Tensor& v, int64_t keep);
  // The fixed part: CSKV's recent windows and the sliding-window rings (per sequence).
  double window_bytes() const;
  // fp caches: the key and value buffers of `layer`, [B, heads, slots(layer), width] (allocated
  // at kv_heads x head_dim when the layer has not been appended to yet), for a decoder that writes
  // positions itself (model/fast_decoder.h: position p in slot p % slots) and then calls commit().
  std::pair<at::Tensor, at::Tensor> fp_buffers(int64_t layer);
  // int8 caches: the same for the KIVI buffers (allocated likewise): the decoder writes position p's
  // key into key_tail row p % group and its value's codes, scale and minimum into value slot
  // p % value_slots, then commit() quantizes a key group that completes into group slot
  // (p / group) % key_groups.
  struct Int8Buffers {
    at::Tensor key_codes;    // uint8 [B, heads, key_groups * group, width]
    at::Tensor key_scale, key_min;  // float [B, heads, key_groups, width]
    at::Tensor key_tail;     // the cache's dtype [B, heads, group, width]
    at::Tensor value_codes;  // uint8 [B, heads, value_slots, width]
    at::Tensor value_scale, value_min;  // float [B, heads, value_slots, 1]
    int64_t key_groups = 0, value_slots = 0;
  };
  Int8Buffers int8_buffers(int64_t layer);
  // The positions `layer` holds: its ring's slots for a sliding-window layer (fp: min(window,
  // capacity); int8: whole key groups, where fewer than the capacity's), else the capacity.
  int64_t slots(int64_t layer) const { return ring_[static_cast<size_t>(layer)] > 0 ? ring_[static_cast<size_t>(layer)] : capacity_; }
  int64_t batch() const { return batch_; }
  // Call once after all layers appended T positions.
  void commit(int64_t t);
  void clear() {
    length_ = 0;
    for (auto* v : {&recent_k_, &recent_v_})
      for (at::Tensor& t : *v) t = at::Tensor();
  }
  // Bytes the cache holds per position over all layers (codes and scales for int8; the
  // residual key group, at most `group` positions, is not counted), at the widths appended so
  // far (kv_heads x head_dim for a layer not yet appended to); a sliding-window layer's ring
  // counts too, though it stops growing at its window (held_bytes() says what is held).
  double bytes_per_token() const;
  // Bytes held now for one sequence: each layer's per-position bytes times the positions it holds
  // (the length, or a ring's min(length, slots)), plus CSKV's recent windows.
  double held_bytes() const;
  const KVCacheOptions& kind() const { return kind_; }
  // The dtype keys and values are computed in (fp: stored in; int8: the residual key group's).
  at::ScalarType dtype() const { return c10::typeMetaToScalarType(options_.dtype()); }

 private:
  void allocate(int64_t layer, int64_t heads, int64_t key_width, int64_t value_width);
  // fp_buffers / int8_buffers: `layer` checked and allocated at kv_heads x head_dim if new.
  void allocate_for_decoder(int64_t layer);
  double layer_bytes_per_position(size_t layer) const;
  std::pair<at::Tensor, at::Tensor> append_ring(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  std::pair<at::Tensor, at::Tensor> append_int8(int64_t layer, const at::Tensor& k, const at::Tensor& v);

  std::vector<at::Tensor> keys_, values_;  // fp: [B, H, cap, width]; int8: uint8 codes
  // int8 only: key scales/minima [B, H, groups, width], the residual keys [B, H, group, width],
  // value scales/minima [B, H, cap, 1].
  std::vector<at::Tensor> key_scale_, key_min_, key_tail_, value_scale_, value_min_;
  std::vector<at::Tensor> recent_k_, recent_v_;  // per layer, the last `keep` positions
  std::vector<int64_t> ring_;  // per layer: a sliding-window layer's ring slots, else 0
  at::Tensor append_mask_, append_key_positions_;  // after an int8 append across key groups
  KVCacheOptions kind_;
  at::TensorOptions options_;
  int64_t batch_, capacity_, kv_heads_, head_dim_, element_bytes_;
  int64_t length_ = 0;
};

}  // namespace condense
