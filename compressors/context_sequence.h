// How a frozen decoder reads compressed context: sequences of input embeddings assembled from
// parts (plain token embeddings, compressed vectors, learned marker vectors), scored on their
// last positions. Shared by every context compressor's training and evaluation.
//
// A window of T tokens (inputs x [B, T], targets y [B, T] = x shifted left) is laid out as
// [prefix: p tokens][chunk: n tokens, the context][continuation: m = T - p - n tokens].
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

struct ContextLayout {
  int64_t prefix = 0;  // p
  int64_t chunk = 0;   // n
  // Throws naming `where` unless 1 <= n and p + n < T (at least one continuation token).
  void check(int64_t window, const std::string& where) const;
};

// The decoder's hidden states for the concatenation of `parts` (each [B, *, hidden]) along the
// sequence, positions 0 .. total - 1; the last targets.size(1) positions are scored against
// `targets` [B, K]: mean cross-entropy.
at::Tensor tail_nll(LlamaForCausalLM& decoder, const std::vector<at::Tensor>& parts,
                    const at::Tensor& targets);

// Teacher-forced accuracy on the last positions: how many argmax predictions equal `targets`
// (a count, as a double, and the number scored).
std::pair<double, int64_t> tail_correct(LlamaForCausalLM& decoder, const std::vector<at::Tensor>& parts,
                                        const at::Tensor& targets);

// Continuation with compressed context z [B, k, hidden] and the marker `cont` [hidden]:
// parts [embed(prefix), z, cont, embed(continuation)], targets y[:, p + n - 1 :] (the marker
// predicts the first continuation token).
struct SequenceParts {
  std::vector<at::Tensor> parts;
  at::Tensor targets;
};
SequenceParts continuation_sequence(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                    const at::Tensor& targets, const ContextLayout& layout,
                                    const at::Tensor& z, const at::Tensor& cont);

// Reconstruction: parts [z, rec, embed(chunk without its last token)], targets: the chunk.
SequenceParts reconstruction_sequence(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                      const ContextLayout& layout, const at::Tensor& z,
                                      const at::Tensor& rec);

// For comparisons on one measure: the m continuation tokens after the first (targets
// y[:, p + n :]) with the context given as `context` ([B, *, hidden]; undefined: none) between
// the prefix and the continuation.
SequenceParts continuation_with(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                const at::Tensor& targets, const ContextLayout& layout,
                                const at::Tensor& context);

}  // namespace condense
