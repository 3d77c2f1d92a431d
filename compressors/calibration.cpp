#include "compressors/calibration.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

// Accumulates sum_t x_tj^2 per input channel of every projection it sees. Keeps the weight
// unchanged, so the forward is exactly the model's.
class InputNormRecorder : public ProjectionHook {
 public:
  explicit InputNormRecorder(std::vector<std::string> gram_names = {})
      : gram_names_(std::move(gram_names)) {}
  bool observing() const override { return true; }
  void observe(const std::string& name, const at::Tensor& x) override {
    // q/k/v (and gate/up) read the same tensor: square it once. Holding `last_` keeps its
    // storage alive, so a later tensor cannot reuse the address and be mistaken for it.
    if (!last_.defined() || !x.is_same(last_)) {
      last_ = x;
      // One batch sums in float32 (a few thousand tokens); the running sum over the whole
      // calibration set is float64, where float32 would lose digits over 1e5+ tokens.
      last_sq_ = x.detach().reshape({-1, x.size(-1)}).square().sum(0).to(at::kDouble);
    }
    auto it = sums.find(name);
    if (it == sums.end()) sums.emplace(name, last_sq_.clone());
    else it->second.add_(last_sq_);
    if (std::find(gram_names_.begin(), gram_names_.end(), name) != gram_names_.end()) {
      at::Tensor flat = x.detach().reshape({-1, x.size(-1)});
      at::Tensor g = at::matmul(flat.t(), flat).to(at::kDouble);
      auto gt = grams.find(name);
      if (gt == grams.end()) grams.emplace(name, g);
      else gt->second.add_(g);
    }
  }
  std::map<std::string, at::Tensor> sums, grams;

 private:
  std::vector<std::string> gram_names_;
  at::Tensor last_, last_sq_;
};

// Installs `hook` and eval mode for the pass; puts back the model's own hook and training mode
// when calibration ends (or throws).
class HookSwap {
 public:
  HookSwap(LlamaForCausalLM& model, std::shared_ptr<ProjectionHook> hook)
      : model_(model), previous_(model->projection_hook()), was_training_(model->is_training()) {
    model_->eval();
    model_->set_projection_hook(std::move(hook));
  }
  ~HookSwap() {
    model_->set_projection_hook(previous_);
    model_->train(was_training_);
  }

 private:
  LlamaForCausalLM& model_;
  std::shared_ptr<ProjectionHook> previous_;
  bool was_training_;
};

}  // namespace

at::Tensor CalibrationStats::input_norms(const std::string& weight_name) const {
  auto it = input_sq_norms.find(weight_name);
  CONDENSE_CHECK(it != input_sq_norms.end(),
                 "calibration recorded no input statistics for '{}' (not a projection weight?)",
                 weight_name);
  return it->second.sqrt().to(at::kFloat);
}

CalibrationStats calibrate(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows,
                           const std::vector<std::string>& gram_weights) {
  CONDENSE_CHECK(!windows.empty(), "calibration needs at least one window of token ids");
  at::NoGradGuard no_grad;
  auto recorder = std::make_shared<InputNormRecorder>(gram_weights);
  HookSwap swap(model, recorder);

  const int64_t layers = model->config().num_hidden_layers;
  CalibrationStats stats;
  std::vector<double> influence(layers, 0.0);
  for (const at::Tensor& ids : windows) {
    CONDENSE_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong,
                   "calibration windows must be [B, T] int64 token ids");
    std::vector<at::Tensor> states;
    DecoderInput in;
    in.input_ids = ids;
    in.hidden_states = &states;
    model->hidden(in);
    for (int64_t i = 0; i < layers; ++i) {
      at::Tensor a = states[i].reshape({-1, states[i].size(-1)}).to(at::kDouble);
      at::Tensor b = states[i + 1].reshape({-1, states[i + 1].size(-1)}).to(at::kDouble);
      influence[i] += (1.0 - at::cosine_similarity(a, b, 1, 1e-12)).sum().item<double>();
    }
    stats.tokens += ids.numel();
  }
  for (double& v : influence) v /= static_cast<double>(stats.tokens);
  stats.input_sq_norms = std::move(recorder->sums);
  for (const std::string& name : gram_weights)
    CONDENSE_CHECK(recorder->grams.count(name),
                   "calibration: no projection named '{}' ran, so it has no input Gram matrix", name);
  stats.input_grams = std::move(recorder->grams);
  stats.block_influence = std::move(influence);
  return stats;
}

SequentialCalibration::SequentialCalibration(LlamaForCausalLM& model,
                                             const std::vector<at::Tensor>& windows)
    : model_(model) {
  CONDENSE_CHECK(!windows.empty(), "calibration needs at least one window of token ids");
  at::NoGradGuard no_grad;
  for (const at::Tensor& ids : windows) {
    states_.push_back(model_->embed(ids));
    tokens_ += ids.numel();
  }
}

CalibrationStats SequentialCalibration::record(int64_t layer) {
  CONDENSE_CHECK(layer == next_, "sequential calibration is at layer {}, asked for {}", next_, layer);
  at::NoGradGuard no_grad;
  auto recorder = std::make_shared<InputNormRecorder>();
  HookSwap swap(model_, recorder);
  for (const at::Tensor& h : states_) model_->forward_layers(h, layer, layer + 1);
  CalibrationStats stats;
  stats.tokens = tokens_;
  stats.input_sq_norms = std::move(recorder->sums);
  return stats;
}

void SequentialCalibration::advance(int64_t layer) {
  CONDENSE_CHECK(layer == next_, "sequential calibration is at layer {}, asked to pass layer {}",
                 next_, layer);
  at::NoGradGuard no_grad;
  HookSwap swap(model_, nullptr);
  for (at::Tensor& h : states_) h = model_->forward_layers(h, layer, layer + 1);
  ++next_;
}

}  // namespace condense
