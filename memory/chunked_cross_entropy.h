// Chunked cross-entropy (the idea of cut cross-entropy, Wijmans et al. 2024, "Cut Your Losses in
// Large-Vocabulary Language Models"): the mean next-token loss of hidden states under an LM
// head, computed over [token x vocabulary] tiles with a running log-sum-exp, so the full
// [tokens x vocab] logits (the largest single allocation of small-model training) never exist.
// A custom autograd function: forward keeps only the per-token log-sum-exp; backward recomputes
// each tile's softmax and accumulates the hidden and weight gradients tile by tile. With
// filter_eps > 0, backward skips tiles whose softmax is below filter_eps everywhere (gradient
// filtering; the paper uses 2^-12, below bf16 resolution); the target terms are always exact.
//
// Shapes: hidden [N, H] (or [B, T, H]), weight [V, H], targets [N] int64 (ignore_index rows are
// excluded from the mean). The loss is float32 (double for double inputs, the exact tests') whatever the inputs' dtype. Peak extra memory: token_chunk x vocab_chunk floats plus O(N).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace condense {

struct ChunkedLossOptions {
  int64_t token_chunk = 1024;
  int64_t vocab_chunk = 8192;
  double filter_eps = 0;
  int64_t ignore_index = -100;
  // The logits' soft cap (LlamaConfig::final_logit_softcapping; 0: none): each tile's logits are
  // capped as LlamaForCausalLMImpl::logits caps the full ones.
  double softcap = 0;
};

// The dtype the LM-head tiles are multiplied in: autocast's (bf16) when autocast is on for the
// hidden state's device, as the full-logits path's lm_head matmul runs under autocast; else the
// inputs' promoted type (double stays double for exact tests). The chunked losses (this one and
// compressors/distill.h) cast hidden and weight to it before their autograd functions: their
// backward runs after the trainer's autocast scope has ended, where a bf16 hidden state against
// an fp32 weight failed. Softmax statistics and the loss are float either way, from the same
// rounded logits in forward and backward.
at::ScalarType lm_head_compute_type(const at::Tensor& hidden, const at::Tensor& weight);

at::Tensor chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                 const at::Tensor& targets, const ChunkedLossOptions& options = {});

}  // namespace condense
