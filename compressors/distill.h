// Distillation losses: a frozen teacher's outputs supervise a trainable (pruned, smaller) student.
//
// chunked_kd_loss is logit distillation: forward KL(p_teacher || p_student) between the two
// models' next-token distributions softened by a temperature T (Hinton et al. 2015, "Distilling
// the Knowledge in a Neural Network"; the T^2 factor keeps gradient magnitudes comparable across
// temperatures), optionally mixed with the student's plain cross-entropy. Minitron (Muralidharan
// et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation") found logit-only
// forward KL the best way to retrain pruned models. top_k > 0 keeps only the teacher's k most
// likely tokens (renormalized), as when teacher logits are cached sparsely.
//
// Memory contract: like memory/chunked_cross_entropy.h, a custom autograd function that never
// holds [N x V] logits. Forward and backward build the student's and the teacher's logits for
// token_chunk tokens at a time (backward recomputes them); what is kept between the two is O(N)
// (per-token log-sum-exps). Peak extra memory: a few token_chunk x V tiles plus O(N + V x H).
// Gradients flow to the student hidden states and the student LM head only; the teacher's
// tensors are constants (they need not be detached).
//
// hidden_state_loss compares intermediate hidden states of paired layers (the states come from
// the model's forward with DecoderInput::hidden_states set: index 0 is the embedding output,
// index i + 1 the output of layer i). Widths must match; a width-pruned student needs a
// projection first, which this does not provide.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace condense {

struct KdLossOptions {
  double temperature = 1.0;
  bool temperature_squared = true;  // multiply the KL by T^2
  int64_t top_k = 0;                // 0: the teacher's full distribution
  double kd_ratio = 1.0;            // loss = kd_ratio * KD + (1 - kd_ratio) * CE
  int64_t token_chunk = 1024;
  int64_t ignore_index = -100;      // targets equal to it are excluded from KD and CE means
  // Logit soft caps (LlamaConfig::final_logit_softcapping, Gemma 2; 0: none) of the student's and
  // the teacher's LM head: each side's logits are capped before the temperature, as its model's
  // logits() caps them.
  double softcap = 0;
  double teacher_softcap = 0;
};

// student_hidden [N, Hs] or [B, T, Hs], student_weight [V, Hs] (LM head), teacher_hidden
// [N, Ht] or [B, T, Ht], teacher_weight [V, Ht], targets [N] (or [B, T]) int64. Hidden states are
// final-normed (what the LM head reads). Returns a scalar in float (double for double inputs).
at::Tensor chunked_kd_loss(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                           const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                           const at::Tensor& targets, const KdLossOptions& options = {});

// Mean over layer_pairs (student layer index, teacher layer index) of the MSE between the two
// states ("mse") or of the mean over tokens of 1 - cosine similarity along the hidden dimension
// ("cosine"). The teacher states are constants.
at::Tensor hidden_state_loss(const std::vector<at::Tensor>& student_states,
                             const std::vector<at::Tensor>& teacher_states,
                             const std::vector<std::pair<int64_t, int64_t>>& layer_pairs,
                             const std::string& kind);

}  // namespace condense
