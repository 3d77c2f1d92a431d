// FastDecoder: one position of a plain float32 Llama (or Gemma 3) on CPU, without autograd or operator
// dispatch, for token-by-token generation (model/generate.cpp uses it after the prompt's
// batched prefill, which stays on the ATen forward).
//
// Why: at one position every op is a small matrix-vector product or a pointwise loop, and the
// ATen path pays a few microseconds of dispatch on each of its hundreds of ops per token, more
// than the arithmetic on small models (issue 19 measured the quickstart model at 0.2x llama.cpp).
// Here a token is ~5 parallel regions per layer over the float32 kernels of
// model/decode_kernels.h, reading the model's own weight tensors (no copy) and writing keys and
// values straight into the KVCache's buffers, so the ATen prefill and this decoder share one
// cache.
//
// It covers what generation of a plain model needs: float32 weights on CPU, batch 1, a float32
// fp or int8 cache (attention: model/decode_attention.h, the int8 one read as codes), and no hooks (KV projections, latent caches, projection or block hooks and replaced MLP
// linears keep the ATen path: unsupported() names which). Results agree with the ATen forward
// to float rounding (tests/test_fast_decoder.cpp checks 1e-5 on logits and greedy tokens; int8
// caches 1e-2 once a float difference moved a code by one).
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/kv_cache.h"
#include "model/llama.h"

namespace condense {

class FastDecoder {
 public:
  // Empty when `model` with `cache` can decode here; otherwise the reason it cannot.
  static std::string unsupported(const LlamaForCausalLM& model, const KVCache& cache);

  // The model must stay alive and unchanged while the decoder is used; throws with the reason
  // when unsupported() is not empty.
  FastDecoder(const LlamaForCausalLM& model, KVCache& cache);

  // Runs token `id` at position cache.length(): appends its keys and values to the cache,
  // commits the position, and returns the logits [vocab] (float32; a tensor over this
  // decoder's buffer, overwritten by the next step).
  at::Tensor step(int64_t id);

 private:
  // Positions per split-K part (model/decode_attention.h): fixed, so that the result does not
  // depend on the thread count; long enough that a part's bookkeeping is small beside its rows.
  static constexpr int64_t kPart = 256;
  template <class Task>
  void attend_parts(int64_t parts, const Task& task);
  void attend_fp(int64_t layer, int64_t pos);
  void attend_int8(int64_t layer, int64_t window, int64_t pos);

  struct Layer {
    at::Tensor norm_in, q, k, v, o, norm_post, gate, up, down;
    at::Tensor q_bias, k_bias, v_bias;  // undefined without LlamaConfig::qkv_bias
    at::Tensor q_norm, k_norm;          // undefined without LlamaConfig::qk_norm
    // Gemma 3: norm_post is the attention output's norm; norm_ff_in / norm_ff_out around the
    // MLP (undefined otherwise, where norm_post is the MLP's input norm).
    at::Tensor norm_ff_in, norm_ff_out;
    bool rope = true;                   // false in SmolLM3's NoPE layers
    bool local_rope = false;            // Gemma 3's windowed layers: cos_local_ / sin_local_
    int64_t window = 0;                 // LlamaConfig::window(layer): 0 = full attention
  };
  LlamaConfig config_;
  KVCache& cache_;
  std::vector<Layer> layers_;
  at::Tensor embed_, norm_, lm_head_, cos_, sin_, cos_local_, sin_local_;
  // Scratch: x and its norm [hidden], q and attention output [heads * head_dim], this
  // position's k and v [kv_heads * head_dim], a projection's output [hidden], gate and up
  // [intermediate], per-head RMSNorm scales [heads] (qk_norm), logits
  // [vocab]; per split-K task (KV head x part) scores [query heads of the KV head * kPart] and an
  // int8 query times a key group's scales [head_dim]; per part and head a Partial: values
  // [head_dim], maximum and sum.
  std::vector<float> x_, xn_, q_, att_, k_, v_, proj_, gate_, up_, scores_, head_rstd_, scaled_q_;
  std::vector<float> part_out_, part_max_, part_sum_;
  at::Tensor logits_;
};

}  // namespace condense
