// KV-cache projections: per KV head, orthonormal bases of its keys (after RoPE) and of its
// values; the cache stores only the first `rank` coordinates (MatryoshkaKV's layout, Lin et al.,
// ICLR 2025, "MatryoshkaKV: Adaptive KV Compression via Trainable Orthogonal Projection").
//
//   keys     k' = k U_k[:, :r]  after RoPE, and every query head of the group q' = q U_k[:, :r],
//            so q' k'^T = q U_k[:, :r] U_k[:, :r]^T k^T: exact at r = head_dim (U_k orthogonal)
//   values   v' = v U_v[:, :r] before attention; attention's output per query head is mapped
//            back by U_v[:, :r]^T before o_proj: exact at r = head_dim
// Under GQA the bases are per KV head (shared by its query heads), so the cache really shrinks.
// The bases are ordered by importance (descending), so one set serves every rank ("nested").
//
// Initialization from a calibration pass: PCA of each head's keys after RoPE and values, with
// their mean vectors (MatryoshkaKV's starting point and the untrained baseline it is measured
// against): mu = the calibration mean, U = the eigenvectors of the centered covariance, largest
// first. Centering is free at inference:
//   keys     scores read q . (k - mu_k) projected; the dropped q . mu_k is the same for every
//            key a query reads, and softmax ignores a constant shift, so only k - mu_k is cached
//   values   v ~ mu_v + (v - mu_v) U U^T, and attention's weights sum to 1, so the output is
//            mu_v + (P (v - mu_v) U) U^T: (v - mu_v) U is cached and mu_v added back
// Both are exact at full rank. Under Gemma 2's score cap (LlamaConfig::attn_logit_softcapping) the
// shift no longer cancels (cap * tanh(s / cap) is not shift-invariant): keys stay uncentered (zero
// key mean, the second moment's eigenvectors; exact at full rank again), values centered. Stored in checkpoints as kv_proj/layers.<i>.key / .value,
// float32 [kv_heads, head_dim, head_dim], columns = directions, and .key_mean / .value_mean
// [kv_heads, head_dim]; a checkpoint without means (made before they existed) loads with zero
// means, i.e. the uncentered projection it was trained as.
//
// Training (make_trainable): U = U0 Cayley(S - S^T), Cayley(A) = (I + A)^-1 (I - A), with the
// generators S ([kv_heads, d, d], kv_proj/layers.<i>.key_skew / .value_skew) trained from zero,
// so U starts at the PCA bases and stays orthogonal to rounding whatever the optimizer does.
// sample_ranks() draws, per layer and KV head, a rank from the nested set {d/4, d/2, 3d/4, d}
// for the next forward (MatryoshkaKV's nested training), applied as masks on the coordinates so
// heads may differ; one trained set then serves every rank. A checkpoint with generators gives
// the composed bases to inference (from_file).
//
// Ragged ranks at inference (set_head_ranks, a --kv-budget per head): a layer whose KV heads
// keep different ranks r_h caches them packed, one "head" of width R = sum_h r_h per token, so
// the cache shrinks by exactly the dropped coordinates. Head h's coordinates sit in its slice
// [o_h, o_h + r_h) of the packed width; the query heads of group h are projected with a block
// basis that is U_h[:, :r_h] in that slice and zero elsewhere, so every query head's scores
// read only its own KV head's slice (the same dot products as truncating per head), and
// attention's packed output is mapped back by the same block basis's transpose. Attention
// then runs as GQA with one KV head (H x R instead of H x r_h per score: more arithmetic,
// which decoding of these model sizes does not notice; memory is what the budget buys).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io/hdf5_file.h"
#include "model/attention.h"
#include "model/llama.h"

namespace condense {

class KVProjection : public KVHook {
 public:
  // bases: per layer {key, value}, each [kv_heads, head_dim, head_dim] with orthonormal columns;
  // means: per layer {key, value} [kv_heads, head_dim], or empty for zero means.
  KVProjection(const LlamaConfig& config, std::vector<std::pair<at::Tensor, at::Tensor>> bases,
               std::vector<std::pair<at::Tensor, at::Tensor>> means = {});

  // Centered PCA of every KV head's keys (after RoPE) and values over the calibration windows.
  static std::shared_ptr<KVProjection> from_calibration(LlamaForCausalLM& model,
                                                        const std::vector<at::Tensor>& windows);
  // The projection stored in a checkpoint, or null when it has none. Checks shapes against
  // `config` and names the file and dataset on any mismatch.
  static std::shared_ptr<KVProjection> from_file(const H5File& file, const LlamaConfig& config);
  // Checkpoint tensors ("kv_proj/layers.<i>.key" / ".value", composed bases, and ".key_mean" /
  // ".value_mean").
  std::map<std::string, at::Tensor> entries() const;

  // Uniform ranks for keys and values, 1..head_dim (head_dim: exact). Throws naming `option`.
  void set_rank(int64_t key_rank, int64_t value_rank, const std::string& option = "--kv-rank");
  // Per-layer ranks (every KV head of a layer alike; compressors/kv_budget.h allocates them),
  // each 1..head_dim.
  void set_layer_ranks(const std::vector<int64_t>& key_ranks, const std::vector<int64_t>& value_ranks);
  // Per-layer, per-KV-head ranks ([layer][kv_head], each 1..head_dim). Where a layer's heads
  // differ, project() packs them (below), so the cache holds exactly the sum of the ranks.
  void set_head_ranks(const std::vector<std::vector<int64_t>>& key_ranks,
                      const std::vector<std::vector<int64_t>>& value_ranks);
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  // The ranks a sampled draw from the nested set {d/4, d/2, 3d/4, d} takes (ascending).
  std::vector<int64_t> nested_ranks() const;
  // Moves the bases (and generators) to a device / dtype (the model's).
  void to(at::Device device, at::ScalarType dtype);

  // Training: generators at zero, requiring grad. parameters() are the modules the trainer
  // trains ("kv_proj/layers.<i>.key_skew" / ".value_skew"), state() the fixed PCA bases saved
  // and means saved beside them ("kv_proj/layers.<i>.key" / ".value" / ".key_mean" /
  // ".value_mean"); the means stay fixed.
  void make_trainable();
  std::vector<std::pair<std::string, at::Tensor>> parameters() const;
  std::map<std::string, at::Tensor> state() const;
  // Per layer and KV head a rank drawn uniformly from {d/4, d/2, 3d/4, d} for the following
  // forwards (until set_rank or another draw).
  void sample_ranks(at::Generator& gen);
  // Per KV head, the {key, value} ranks the next forward uses (sampled or uniform).
  std::pair<std::vector<int64_t>, std::vector<int64_t>> sampled_ranks(int64_t layer) const;
  // The bases in use: U0 Cayley(S - S^T) with generators, else U0. [kv_heads, d, d].
  std::pair<at::Tensor, at::Tensor> bases(int64_t layer) const;

  Projected project(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v) override;
  at::Tensor restore(int64_t layer, const at::Tensor& out) override;

 private:
  at::Tensor q_project(const at::Tensor& q, const at::Tensor& basis) const;
  at::Tensor back(const at::Tensor& out, const at::Tensor& basis, int64_t width) const;
  static bool uniform(const std::vector<int64_t>& ranks);
  // [Hkv, d, sum r_h]: head h's first r_h columns of `basis` in its slice, zeros elsewhere.
  // Built by copies into zeros, so autograd reaches the bases (a forward with grad stays exact).
  static at::Tensor block_basis(const at::Tensor& basis, const std::vector<int64_t>& ranks);

  std::vector<std::pair<at::Tensor, at::Tensor>> bases_;
  std::vector<std::pair<at::Tensor, at::Tensor>> means_;  // [kv_heads, d] per layer
  std::vector<std::pair<at::Tensor, at::Tensor>> skews_;  // generators S when trainable
  // Per layer {key, value} masks [kv_heads, 1, d] of sampled ranks; empty: uniform ranks.
  std::vector<std::pair<at::Tensor, at::Tensor>> rank_masks_;
  int64_t heads_, kv_heads_, head_dim_;
  std::vector<std::vector<int64_t>> key_ranks_, value_ranks_;  // [layer][kv_head]
  std::vector<at::Tensor> value_basis_;  // per layer: project()'s value basis, for restore()
};

}  // namespace condense
