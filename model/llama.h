// The Llama decoder (LlamaForCausalLM): token embedding, N x [RMSNorm, GQA attention with
// RoPE, RMSNorm, SwiGLU MLP] with residuals, final RMSNorm, LM head (tied to the embedding or
// not). Parameter names are exactly Hugging Face's ("model.layers.0.self_attn.q_proj.weight",
// "lm_head.weight"), so checkpoints map 1:1 onto HF state dicts.
//
// Extension points for later work: inputs_embeds in place of token ids (soft context tokens),
// a KVHook on keys/values after RoPE, and hidden() without the LM head (losses that never
// build full logits).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/attention.h"
#include "model/llama_config.h"
#include "model/projection_hook.h"
#include "model/rms_norm.h"
#include "model/rope.h"

namespace condense {

class KVCache;

// Wraps the forward of each decoder layer and of its attention and MLP sub-blocks; memory
// policies (memory/recompute_policy.h) use it to recompute, offload or measure per block.
// run() must return fn(x) (the same values); it may run fn again later, so fn captures what it
// needs by value. kLayer wraps the whole layer; kAttention and kMlp the residual branches
// (norm -> attention -> o_proj, norm -> SwiGLU MLP) inside it.
class BlockHook {
 public:
  enum class Part { kLayer, kAttention, kMlp };
  virtual ~BlockHook() = default;
  virtual at::Tensor run(int64_t layer, Part part,
                         const std::function<at::Tensor(const at::Tensor&)>& fn,
                         const at::Tensor& x) = 0;
};

// A replacement for the bias-free linear maps of the MLP, y = x W^T with the same values (for
// sampled weight gradients, memory/wta_crs_linear.h); null means at::linear.
using LinearFn = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight)>;

class LlamaMLPImpl : public torch::nn::Module {
 public:
  LlamaMLPImpl(const LlamaConfig& c, int64_t layer_index);
  at::Tensor forward(const at::Tensor& x);  // down(silu(gate(x)) * up(x)); gelu_tanh for Gemma
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  LinearFn linear_fn;  // set by LlamaForCausalLMImpl::set_mlp_linear
  ProjectionHook* projection_hook = nullptr;  // set by LlamaForCausalLMImpl::set_projection_hook

 private:
  std::string names_[3];  // HF weight names of gate, up, down
  bool gelu_ = false;      // GeGLU (LlamaConfig::gemma)
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  LlamaDecoderLayerImpl(const LlamaConfig& c, int64_t index);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     KVCache* cache, KVHook* hook);
  // The residual branches: norm -> attention (-> norm, Gemma), and norm -> MLP (-> norm).
  at::Tensor attention_branch(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                              KVCache* cache, KVHook* hook);
  at::Tensor mlp_branch(const at::Tensor& x);
  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  // Llama: input_layernorm before the attention, post_attention_layernorm before the MLP.
  // Gemma (LlamaConfig::gemma): post_attention_layernorm on the attention's output, and
  // pre_feedforward_layernorm / post_feedforward_layernorm (null otherwise) around the MLP.
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  RMSNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};
  BlockHook* block_hook = nullptr;  // set by LlamaForCausalLMImpl::set_block_hook
  int64_t index = 0;
};
TORCH_MODULE(LlamaDecoderLayer);

// The body, registered as "model" inside LlamaForCausalLM.
class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  std::vector<LlamaDecoderLayer> layer_list;  // typed access to `layers`
};
TORCH_MODULE(LlamaModel);

// What a forward pass reads. Exactly one of input_ids ([B, T] int64) and inputs_embeds
// ([B, T, hidden]) is set. With a cache, positions start at cache->length().
struct DecoderInput {
  at::Tensor input_ids;
  at::Tensor inputs_embeds;
  KVCache* cache = nullptr;
  // When set, receives num_hidden_layers + 1 tensors [B, T, hidden]: the input of layer 0 and
  // the output of every layer (before the final norm). For hidden-state distillation and
  // layer importance (block influence).
  std::vector<at::Tensor>* hidden_states = nullptr;
};

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  // Builds the model with Hugging Face's initialization (normal(0, initializer_range) for
  // linear and embedding weights, ones for norms), drawing from the global torch generator.
  explicit LlamaForCausalLMImpl(LlamaConfig config);

  at::Tensor forward(const at::Tensor& input_ids) { return logits(hidden({input_ids})); }
  // Final-normed hidden states [B, T, hidden].
  at::Tensor hidden(const DecoderInput& in);
  // Runs layers [begin, end) on hidden states [B, T, hidden] at positions 0..T-1 (no cache,
  // no hooks but the projection hook): layer-sequential calibration and pruning.
  at::Tensor forward_layers(const at::Tensor& h, int64_t begin, int64_t end);
  // LM head: [..., hidden] -> [..., vocab], soft-capped where the config says (Gemma 2). Losses that
  // tile the LM head (chunked cross-entropy, chunked KD) cap their tiles themselves.
  at::Tensor logits(const at::Tensor& hidden);
  at::Tensor embed(const at::Tensor& input_ids);
  // The LM head's weight [vocab, hidden] (the embedding when tied).
  at::Tensor lm_head_weight() const;

  void set_kv_hook(std::shared_ptr<KVHook> hook) { kv_hook_ = std::move(hook); }
  const std::shared_ptr<KVHook>& kv_hook() const { return kv_hook_; }
  // Null removes it. The model keeps the hook alive.
  void set_block_hook(std::shared_ptr<BlockHook> hook);
  bool has_block_hook() const { return block_hook_ != nullptr; }
  // Routes every MLP projection through `fn` (null restores at::linear).
  void set_mlp_linear(LinearFn fn);
  // Null removes it. The model keeps the hook alive. See model/projection_hook.h.
  void set_projection_hook(std::shared_ptr<ProjectionHook> hook);
  const std::shared_ptr<ProjectionHook>& projection_hook() const { return projection_hook_; }
  const LlamaConfig& config() const { return config_; }

  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tie_word_embeddings

 private:
  // cos and sin of positions [offset, offset + length) for `layer`.
  struct RopeTables {
    at::Tensor cos, sin, local_cos, local_sin;  // local: Gemma 3's windowed layers (else = global)
    const at::Tensor& c(const LlamaConfig& config, int64_t layer) const {
      return config.local_rope(layer) ? local_cos : cos;
    }
    const at::Tensor& s(const LlamaConfig& config, int64_t layer) const {
      return config.local_rope(layer) ? local_sin : sin;
    }
  };
  RopeTables rope_tables(int64_t offset, int64_t length, c10::Device device) const;

  LlamaConfig config_;
  Rope rope_;
  Rope rope_local_;  // Gemma 3's windowed layers: plain RoPE on rope_local_theta
  std::shared_ptr<KVHook> kv_hook_;
  std::shared_ptr<BlockHook> block_hook_;
  std::shared_ptr<ProjectionHook> projection_hook_;
};
TORCH_MODULE(LlamaForCausalLM);

// A model of `config` on `like`'s device, dtype and training mode, for a transform to fill
// (structured pruning, KV-head merging). Its throwaway random initialization leaves the global
// CPU generator where it was, so building it does not shift later sampling or training.
LlamaForCausalLM new_model_like(const LlamaForCausalLM& like, const LlamaConfig& config);

}  // namespace condense
