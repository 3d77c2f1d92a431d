// Causal self-attention with grouped-query support (num_key_value_heads <= num_attention_heads),
// RoPE, an optional KV cache, and an extension point on keys/values after RoPE (KVHook) that
// learned KV projections plug into. Parameter names follow Hugging Face: q_proj, k_proj,
// v_proj, o_proj (biases on q/k/v only with LlamaConfig::qkv_bias: Qwen2's attention), and
// with LlamaConfig::qk_norm q_norm / k_norm, RMSNorms of each query and key head before RoPE
// (Qwen3's). A layer LlamaConfig::no_rope_layers marks 0 attends without RoPE (SmolLM3's NoPE
// layers); a layer LlamaConfig::window() gives a window attends to that many positions only.
#pragma once
#include <memory>
#include <optional>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/llama_config.h"
#include "model/projection_hook.h"
#include "model/rms_norm.h"

namespace condense {

class KVCache;

// Learned KV-cache compressors plug in here, in one of two ways.
//
// Projections after RoPE (compressors/kv_project.h): every layer calls project() after RoPE
// with q [B, heads, T, head_dim] and k, v [B, kv_heads, T, head_dim]; what it returns is what
// attention uses and the cache stores, in any widths (queries and keys one, values another).
// Scores keep the model's 1/sqrt(head_dim) scale. restore() maps attention's output
// [B, heads, T, value width] back to head_dim before o_proj.
//
// Latent caches (compressors/cskv.h), when latent() is true: the hook replaces k_proj and
// v_proj. encode() maps the layer's input x [B, T, hidden] to what the cache stores per
// position, {key latent, value latent} [B, 1, T, width] (one latent shared by all KV heads);
// decode() rebuilds keys and values [B, kv_heads, T_all, head_dim] from the latents of all
// positions so far, applying RoPE to the keys at positions 0 .. T_all - 1 (a cache starts at
// position 0, and without a cache the input does). project() is not called, and restore()
// only for latent values (below).
// A positive window() w keeps CSKV's recent tokens exact: a query at position p reads the
// original keys and values (k_proj / v_proj, RoPE) of positions p - w + 1 .. p and the rebuilt
// ones of older positions; the cache holds the originals of the last w - 1 positions beside
// the latents (KVCache::append_recent).
// Without a window, a latent hook may keep the values latent for a block of t queries
// (latent_values(t)): attention then reads decode_keys()' rebuilt keys and the value latent
// itself, shared by the KV heads, and restore() maps attention's output [B, heads, t, value
// width] to head_dim per query head. softmax(q k^T) (c_v B_v) = (softmax(q k^T) c_v) B_v, so
// this is the same attention without rebuilding every cached position's values per token.
class KVHook {
 public:
  struct Projected {
    at::Tensor q, k, v;
  };
  virtual ~KVHook() = default;
  virtual Projected project(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v) {
    return {q, k, v};
  }
  virtual at::Tensor restore(int64_t layer, const at::Tensor& out) { return out; }

  virtual bool latent() const { return false; }
  virtual std::pair<at::Tensor, at::Tensor> encode(int64_t layer, const at::Tensor& x);
  virtual std::pair<at::Tensor, at::Tensor> decode(int64_t layer, const at::Tensor& key_latent,
                                                   const at::Tensor& value_latent);
  virtual int64_t window() const { return 0; }
  virtual bool latent_values(int64_t t) const { return false; }
  virtual at::Tensor decode_keys(int64_t layer, const at::Tensor& key_latent);
};

// at::scaled_dot_product_attention(q, k, v, mask, dropout, causal, scale, gqa), or with cap > 0 (Gemma
// 2's attn_logit_softcapping) the same attention with each score soft-capped after the scale and
// before the mask, written out because SDPA has no cap: softmax(mask(cap * tanh(q k^T * scale /
// cap))) v, query head h reading KV head h / (H / Hkv) without repeating them, the softmax in float
// (transformers' eager attention upcasts it too). q [B, H, t, d]; k, v [B, Hkv, n, *]; mask bool
// (true: attend) [t, n] or [B, 1, t, n]; causal as SDPA's is_causal (query i reads keys 0 .. i).
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& mask, double dropout, bool causal, std::optional<double> scale,
                  bool gqa, double cap);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const LlamaConfig& config, int64_t layer_index);
  // x: [B, T, hidden]; cos/sin: [T, head_dim] for the positions of x. With a cache, x's
  // positions follow the cached ones and k/v are appended to it.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     KVCache* cache, KVHook* hook);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // only with LlamaConfig::qk_norm
  // q or k [B, T, heads, head_dim] through q_norm / k_norm where the model has them.
  at::Tensor norm_q(const at::Tensor& q) { return q_norm ? q_norm(q) : q; }
  at::Tensor norm_k(const at::Tensor& k) { return k_norm ? k_norm(k) : k; }
  // q or k [B, heads, T, head_dim] rotated for their positions, unchanged in a NoPE layer.
  at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  bool uses_rope() const { return rope_; }
  ProjectionHook* projection_hook = nullptr;  // set by LlamaForCausalLMImpl::set_projection_hook

 private:
  at::Tensor project(const at::Tensor& x, torch::nn::Linear& proj, int which);
  std::string names_[4];  // HF weight names of q, k, v, o
  int64_t layer_, heads_, kv_heads_, head_dim_;
  double dropout_;
  int64_t window_;  // LlamaConfig::window(layer): 0 attends to every earlier position
  double scale_;    // LlamaConfig::attention_scale()
  bool own_scale_;  // a scale other than SDPA's default 1/sqrt(head_dim) (Gemma)
  double softcap_;  // LlamaConfig::attn_logit_softcapping (Gemma 2): scores capped, SDPA not used
  bool rope_;
};
TORCH_MODULE(LlamaAttention);

}  // namespace condense
