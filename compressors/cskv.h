// Low-rank KV cache (CSKV: Wang et al. 2024, "CSKV: Training-Efficient Channel Shrinking for KV
// Cache in Long-Context Scenarios"): per layer, k_proj and v_proj are replaced by low-rank
// factors, and the cache stores the low-rank latent instead of keys and values.
//
//   key latent    c_k = x A_k        x [B, T, hidden], A_k [hidden, r_k]    (cached)
//   keys          k   = RoPE(c_k B_k)                  B_k [r_k, kv_heads * head_dim]
//   values        c_v = x A_v (cached), v = c_v B_v
// One latent per layer serves all KV heads, so the cache holds r_k + r_v numbers per token and
// layer instead of 2 kv_heads head_dim. Attention rebuilds the keys and values of every cached
// position from the latents, applying RoPE to the rebuilt keys at their positions (RoPE cannot
// be folded into the latent: it rotates each position differently); that costs
// T (r_k + r_v) kv_heads head_dim multiply-adds per layer and generated token.
//
// Initialization, three ways (LowRankKVOptions::init):
//   svd     the SVD of the projection weight alone, W^T = [hidden, kv_dim] ~ A B.
//   asvd    activation-aware (ASVD, Yuan et al. 2023): input channel j scaled by
//           s_j = rms(x_j)^0.5 over calibration tokens before the SVD and unscaled after:
//           diag(s) W^T = U S V^T, A = diag(1/s) U_r S_r, B = V_r^T.
//   whiten  the rank-r factors closest on the calibration data, min ||X W^T - X A B||_F (the
//           objective SVD-LLM's whitening solves, Wang et al. 2024): with the outputs'
//           covariance W G W^T (G = X^T X, the input Gram matrix), V_r its top-r eigenvectors,
//           A = W^T V_r and B = V_r^T, since X W^T V_r V_r^T is the best rank-r approximation
//           of X W^T. Keys are compared before RoPE, which rotates without changing norms.
// At r = kv_dim every init reproduces W exactly. The default is whiten: it minimizes the
// error that matters, and diagonal scaling (asvd) only approximates G by its diagonal.
//
// Training (recipes/cskv.yaml, recovery.method cskv): CSKV's layer-wise reconstruction loss.
// A forward without gradients through the compressed model records each layer's attention
// input x; then, per layer, ||x A B - x W^T||^2 / ||x W^T||^2 for keys and for values
// (RoPE is orthogonal, so the key error is the same before or after it), averaged over the
// 2 x layers terms. Only the factors train; the model's own k_proj / v_proj stay as the target.
// Under kind distill the factors instead train end to end on the distillation loss (KD against
// the uncompressed model plus cross-entropy), as MatryoshkaKV's projections do: the
// reconstruction error is what whiten already minimizes, while the loss of the model's output
// weighs each direction by what attention does with it.
//
// Values stay latent while decoding (latent_values(): blocks of at most kLatentValueQueries
// queries, without a window): attention reads the cached value latent c_v itself and restore()
// applies B_v to its output per query head, (P c_v) B_v instead of P (c_v B_v), so a generated
// token no longer rebuilds every cached position's values (T r_v kv_heads head_dim multiply-
// adds per layer) but maps one output per head up (r_v head_dim per query head). Longer blocks
// (prefill, training) rebuild the values, where the fused attention kernel of equal widths
// serves better than the reference kernel that unequal widths fall back to.
//
// An optional window keeps the most recent tokens exact (CSKV's bi-branch cache): a query
// reads the original keys and values of its last `window` positions and the rebuilt ones of
// older positions; chosen at inference (--kv-window) and, for training by distillation, with
// recovery.kv_window; it costs a fixed window - 1 positions of full keys and values beside the
// latents.
//
// Stored in checkpoints as cskv/layers.<i>.key_down (A_k), .key_up (B_k), .value_down,
// .value_up, float32. Export multiplies them out (fold_into): a plain Llama whose k_proj /
// v_proj compute the compressed model's keys and values with an uncompressed cache.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "compressors/calibration.h"
#include "io/hdf5_file.h"
#include "model/attention.h"
#include "model/llama.h"
#include "model/rope.h"

namespace condense {

struct LowRankKVOptions {
  int64_t key_rank = 0;          // r_k, 1..min(hidden, kv_heads * head_dim)
  int64_t value_rank = 0;        // r_v, same range
  std::string init = "whiten";   // svd | asvd | whiten (see above)
};

// The q_proj weights whose input Gram matrices (the attention inputs) whiten needs.
std::vector<std::string> low_rank_kv_gram_weights(const LlamaConfig& config);

// Throws naming the option (--key-rank / --value-rank / --init) and the valid values.
void check_low_rank_kv(const LlamaConfig& config, const LowRankKVOptions& options);

class LowRankKV : public KVHook {
 public:
  struct Factors {
    at::Tensor key_down, key_up, value_down, value_up;  // A_k, B_k, A_v, B_v
  };
  LowRankKV(const LlamaConfig& config, std::vector<Factors> layers);

  // Factors of every layer's k_proj and v_proj; `stats` from calibrate() for asvd (input norms)
  // and whiten (input Gram matrices of low_rank_kv_gram_weights()).
  static std::shared_ptr<LowRankKV> from_model(LlamaForCausalLM& model, const LowRankKVOptions& options,
                                               const CalibrationStats* stats);
  // The factors stored in a checkpoint, or null when it has none; shapes checked against
  // `config`, naming the file and dataset on a mismatch.
  static std::shared_ptr<LowRankKV> from_file(const H5File& file, const LlamaConfig& config);
  // Checkpoint tensors (cskv/layers.<i>.key_down, ...), float32 on the CPU.
  std::map<std::string, at::Tensor> entries() const;

  // Moves the factors to a device / dtype (the model's). Before make_trainable().
  void to(at::Device device, at::ScalarType dtype);
  // Training: the factors require grad; parameters() names them for the trainer.
  void make_trainable();
  std::vector<std::pair<std::string, at::Tensor>> parameters() const;
  // While on, encode() keeps each layer's input x (detached) for reconstruction_loss().
  void record_inputs(bool on);
  // The layer-wise relative reconstruction error of keys and values on the recorded inputs
  // against the model's own k_proj / v_proj, averaged over 2 x layers terms; differentiable in
  // the factors. Throws if no forward was recorded.
  at::Tensor reconstruction_loss(LlamaForCausalLM& model) const;
  // Replaces k_proj / v_proj of `model` by A B (transposed): the plain Llama computing this
  // model's keys and values, for export.
  void fold_into(LlamaForCausalLM& model) const;

  // Latent widths of layer 0 (every layer has the same unless a file says otherwise).
  int64_t key_rank() const { return layers_[0].key_down.size(1); }
  int64_t value_rank() const { return layers_[0].value_down.size(1); }

  // CSKV's window: the last w positions before each query (itself included) read the original
  // keys and values instead of the rebuilt ones (model/attention.h); 0: none. The cache then
  // holds w - 1 positions of full keys and values beside the latents.
  void set_window(int64_t window);
  int64_t window() const override { return window_; }

  bool latent() const override { return true; }
  static constexpr int64_t kLatentValueQueries = 16;
  bool latent_values(int64_t t) const override { return t <= kLatentValueQueries; }
  // RoPE(c_k B_k) at positions 0 .. T - 1 (c_k B_k in a layer without RoPE): [B, kv_heads, T,
  // head_dim].
  at::Tensor decode_keys(int64_t layer, const at::Tensor& key_latent) override;
  // Attention's output over the value latent [B, heads, t, r_v] -> [B, heads, t, head_dim]: query
  // head h times the columns of B_v that form its KV head's values.
  at::Tensor restore(int64_t layer, const at::Tensor& out) override;
  std::pair<at::Tensor, at::Tensor> encode(int64_t layer, const at::Tensor& x) override;
  std::pair<at::Tensor, at::Tensor> decode(int64_t layer, const at::Tensor& key_latent,
                                           const at::Tensor& value_latent) override;

 private:
  // cos / sin [n, head_dim] for positions 0 .. n-1, from a table grown on demand.
  std::pair<at::Tensor, at::Tensor> rope_table(int64_t n, at::Device device);

  std::vector<Factors> layers_;
  int64_t kv_heads_, head_dim_, hidden_;
  Rope rope_;
  LlamaConfig config_;  // which layers rotate keys (uses_rope)
  at::Tensor cos_, sin_;  // positions 0 .. cos_.size(0) - 1
  bool record_ = false;
  int64_t window_ = 0;
  std::vector<at::Tensor> inputs_;  // per layer, the last recorded input
};

}  // namespace condense
