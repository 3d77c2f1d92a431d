// Calibration: one hooked pass of a model over calibration windows (held out from training)
// that records what the pruning methods need:
//   - input_sq_norms[name]: for every projection (q/k/v/o_proj, gate/up/down_proj), the sum over
//     calibration tokens of x_j^2 per input channel j, float64 [in_features]. Wanda's ||X_j||_2
//     is its square root; it also gives Minitron's importances: MLP neurons from down_proj's
//     input, query heads from o_proj's input (one head = head_dim consecutive channels), and
//     embedding channels from the norm outputs (the inputs of q_proj and gate_proj), summed
//     over layers.
//   - block_influence[i]: mean over tokens of 1 - cos(input of layer i, output of layer i)
//     (ShortGPT's block influence; Minitron's depth importance). Low = the layer changes little.
//   - input_grams[name]: on request, sum over tokens of x x^T for the named projections, float64
//     [in_features, in_features]; W G W^T is then the (uncentered) covariance of the projection's
//     outputs, which KV-head merging (compressors/kv_merge.h) takes its SVD of.
// The pass runs without gradients, in eval mode, with the model's projection hook replaced for
// its duration (restored afterwards).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

struct CalibrationStats {
  int64_t tokens = 0;                                // calibration tokens seen
  std::map<std::string, at::Tensor> input_sq_norms;  // weight name -> [in_features] float64
  std::map<std::string, at::Tensor> input_grams;     // requested names -> [in, in] float64
  std::vector<double> block_influence;               // [num_hidden_layers]

  // sqrt(input_sq_norms[name]) as float32; throws naming `name` if it was not recorded.
  at::Tensor input_norms(const std::string& weight_name) const;
};

// windows: token-id tensors [B, T] (int64). Throws if `windows` is empty. gram_weights: weight
// names whose input Gram matrices to record as well (each costs in_features^2 doubles).
CalibrationStats calibrate(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows,
                           const std::vector<std::string>& gram_weights = {});

// Layer-sequential calibration for methods that change layer i before measuring layer i + 1
// (Wanda): holds every window's hidden states at the current layer boundary (windows x B x T x
// hidden floats), so the whole pass costs two forwards of each layer, not one per layer.
// Usage: for i in 0..L-1 { stats = seq.record(i); change layer i; seq.advance(i); }
class SequentialCalibration {
 public:
  SequentialCalibration(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows);
  // Input statistics of layer i's projections on the current inputs (block_influence empty).
  CalibrationStats record(int64_t layer);
  // Runs layer i (as it is now) so its outputs become the inputs of layer i + 1.
  void advance(int64_t layer);

 private:
  LlamaForCausalLM model_;
  std::vector<at::Tensor> states_;  // per window, [B, T, hidden] at the next layer's input
  int64_t next_ = 0;                // the layer whose inputs states_ holds
  int64_t tokens_ = 0;
};

}  // namespace condense
