// Trainable: what the Trainer trains. Not a model but a part of one: the model's parameters
// that require grad (the rest are frozen: no gradient, no optimizer state, not in gradient
// buckets, bitwise unchanged), plus parameters a compressor adds around it (LoRA adapters,
// projections, encoders), plus non-trained tensors that belong in every checkpoint (masks).
// The loop, optimizer, checkpoints, data parallelism and memory policies do not care which
// compressor built it (DESIGN.md, "Learned compressors").
#pragma once
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.h"
#include "model/llama.h"

namespace condense {

class Optimizer;

using LossFn = std::function<at::Tensor(LlamaForCausalLM&, const Batch&)>;

struct Trainable {
  LlamaForCausalLM model{nullptr};
  LossFn loss;
  // Added parameters, always trained, saved and restored by name
  // ("lora.model.layers.3.self_attn.q_proj.A"); never "model." or "lm_head." names.
  std::vector<std::pair<std::string, at::Tensor>> modules;
  // Saved with every checkpoint and restored on resume, never trained ("mask/<weight>").
  std::map<std::string, at::Tensor> state;
  // After gradients are final (accumulated and exchanged), before clipping: e.g. mask them.
  std::function<void()> before_step;
  // After every optimizer step: e.g. reapply masks to weights and optimizer state.
  std::function<void(Optimizer&)> after_step;
  // What validation reports (defaults to `loss`): e.g. plain cross-entropy while training
  // on a distillation loss, so validation numbers compare across recipes.
  LossFn eval_loss;
  // For losses over a varying number of tokens (xRAG: padded paraphrases and answers): how many
  // tokens `loss` averages over in a batch. Micro-batches and ranks are then weighted by their
  // tokens, so accumulating or sharding a batch gives the loss of the whole batch, as
  // transformers >= 4.46 does with num_items_in_batch (equal weights would give a batch of 10
  // answer tokens the say of one of 100); validation likewise. Empty: every batch weighs the
  // same (windows of a fixed length). eval_tokens: the same for validation batches (defaults to
  // tokens; xRAG's validation rows index other documents).
  std::function<int64_t(const Batch&)> tokens, eval_tokens;
};

// Parameters that train: the model's that require grad, then the modules, in a fixed order
// (the same on every rank).
std::vector<std::pair<std::string, at::Tensor>> trained_parameters(const Trainable& t);

// Freezes every model parameter whose Hugging Face name matches none of `patterns` (regexes,
// full match) and unfreezes the rest. Throws naming `key` (the recipe key) and the pattern when
// a pattern is not a valid regex or matches no parameter.
void set_trainable(LlamaForCausalLM& model, const std::vector<std::string>& patterns,
                   const std::string& key);

// "training 0.41M of 3.93M parameters (10.4%): 0.39M of the model's, 0.02M added" for logs.
std::string describe_trainable(const Trainable& t);

}  // namespace condense
