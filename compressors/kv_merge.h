// KV-head merging: MHA -> GQA, or GQA -> fewer KV groups, as a one-shot transform into a plain
// (smaller-cache) Llama, then healed by distillation from the original (a finetune recipe with
// distill.teacher). Consecutive KV heads merge: new head G replaces heads G*g .. G*g+g-1
// (g = old / new), so query head h keeps reading the merged head h / (heads / new), exactly
// the grouping GQA attention uses.
//
// Two initializations:
//   mean  the merged K and V projections are the means of the group's (Ainslie et al. 2023,
//         "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
//         Checkpoints"); q_proj and o_proj are unchanged.
//   svd   low-rank merging from the calibration activations (Yu et al. 2024, "Effectively
//         Compress KV Heads for LLM"): the group's keys (values) are approximated in the best
//         d-dimensional subspace of their calibration covariance, W G W^T with G the input Gram
//         matrix of k_proj/v_proj (compressors/calibration.h), and the map back from the merged
//         head to each original head is folded into the query (keys) or o_proj (values), so the
//         only approximation is the subspace.
//
// RoPE. Keys are rotated after projection, so a merge of key channels is only exact under RoPE
// when it commutes with every rotation. Writing channel pair (i, i + r/2) (r = d, or the rotated
// channels LlamaConfig::rotary_dim() with a partial_rotary_factor), the pair RoPE rotates
// by one angle in Hugging Face's layout, as one complex number z_i, a rotation multiplies z_i by
// e^{i theta n}: the same phase for every head. A merge that, per frequency i, maps the g heads'
// complex values to one complex value (m_i = sum_j c_ji z_ji, and back z_ji ~ m_i conj(c_ji))
// therefore commutes with RoPE, and the best such map is the top eigenvector of the g x g
// Hermitian covariance of (z_1i .. z_gi), which is the same before and after rotation (the phase
// cancels). The query of a head over original KV head j absorbs the way back: q'_i = q_i c_ji, a
// 2x2 rotation-and-scale of each channel pair of its q_proj rows. Values have no RoPE: their
// merge is the top-d eigenvectors U of the real covariance, v_m = U^T v_cat, and o_proj's
// columns of a head over original head j become W_o,h U_j. The d - r channels a partial RoPE
// leaves unrotated merge the same way as values (any real map commutes with no rotation), their
// way back folded into the queries' rows of those channels.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compressors/calibration.h"
#include "model/llama.h"
#include "model/llama_config.h"

namespace condense {

struct KVMergeOptions {
  int64_t kv_heads = 0;      // the new num_key_value_heads; divides the current count
  std::string init = "svd";  // svd | mean
};

// Every option check that needs no calibration: kv_heads in [1, current), dividing the current
// KV heads (and so the query heads), an even head_dim, a known init. Throws naming the option.
void check_kv_merge(const LlamaConfig& config, const KVMergeOptions& options);

// The weights whose input Gram matrices the svd init needs (one per layer: k_proj's input, which
// is v_proj's as well); pass them to calibrate().
std::vector<std::string> kv_merge_gram_weights(const LlamaConfig& config);

// A new model with kv_heads KV heads; every other tensor copied. `stats` must carry the Gram
// matrices of kv_merge_gram_weights for init svd (may be null for mean). `model` is unchanged;
// the result has its device, dtype and training mode.
LlamaForCausalLM merge_kv_heads(LlamaForCausalLM& model, const KVMergeOptions& options,
                                const CalibrationStats* stats);

}  // namespace condense
