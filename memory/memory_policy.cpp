#include "memory/memory_policy.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "memory/chunked_cross_entropy.h"
#include "memory/compressed_activations.h"
#include "memory/offload.h"
#include "memory/recompute_policy.h"
#include "memory/saved_tensor_hooks.h"
#include "memory/wta_crs_linear.h"
#include "model/fused_ops.h"

namespace condense {

std::string check_memory_config(const MemoryConfig& c) {
  if (c.recompute == "budget" && !(c.budget_mb > 0))
    return "memory.budget_mb must be > 0 when memory.recompute is 'budget'";
  if (c.offload != "none" && c.activations != "fp32")
    return "memory.offload and compressed memory.activations cannot be combined; choose one";
  return "";
}

MemoryPolicy::MemoryPolicy(const MemoryConfig& cfg, LlamaForCausalLM& model) : cfg_(cfg) {
  std::string problem = check_memory_config(cfg_);
  CONDENSE_CHECK(problem.empty(), "{}", problem);
  // Before any backward: LibTorch 2.11's autograd engine gives a second engine instance no
  // device queues when the default one ran a CUDA backward first (measured on an H200:
  // "device_ready_queues_" INTERNAL ASSERT in Engine::ready_queue), so condense's engine must
  // be the default one from the start, with or without hooks in use.
  install_hooked_engine();
  KeepRule rule;
  rule.min_bytes = cfg_.offload_min_bytes;
  std::vector<at::Tensor> params = model->parameters();
  rule.add_parameters(params);
  if (cfg_.offload != "none") {
    offload_ = std::make_shared<OffloadHooks>(make_offload_tier(cfg_.offload, cfg_.offload_dir), rule);
    storage_ = offload_;
  } else if (cfg_.activations != "fp32") {
    rule.min_bytes = 0;  // compression has no I/O cost; only parameters stay as they are
    storage_ = std::make_shared<CompressedActivationHooks>(
        activation_format_from_name(cfg_.activations), rule, cfg_.int8_block);
  }
  RecomputeMode mode = recompute_mode_from_name(cfg_.recompute);
  if (mode != RecomputeMode::kNone || offload_) {
    recompute_ = std::make_shared<RecomputePolicy>(mode, model->config().num_hidden_layers,
                                                   cfg_.recompute_every, cfg_.budget_mb, offload_);
    recompute_->set_parameters(params);
  }
  attach(model);
}

void MemoryPolicy::attach(LlamaForCausalLM& model) const {
  model->set_block_hook(recompute_);
  model->set_mlp_linear(nullptr);
  if (cfg_.wta_crs) {
    double ratio = cfg_.wta_crs_ratio;
    model->set_mlp_linear([ratio](const at::Tensor& x, const at::Tensor& w) {
      return at::GradMode::is_enabled() ? wta_crs_linear(x, w, ratio) : at::linear(x, w);
    });
  }
}

MemoryPolicy::~MemoryPolicy() = default;

at::Tensor MemoryPolicy::hidden(LlamaForCausalLM& model, const DecoderInput& in) {
  std::optional<HooksScope> scope;
  if (storage_ && at::GradMode::is_enabled()) scope.emplace(storage_);
  return model->hidden(in);
}

at::Tensor MemoryPolicy::loss(LlamaForCausalLM& model, const at::Tensor& inputs,
                              const at::Tensor& targets) {
  at::Tensor hidden = this->hidden(model, {inputs});
  if (cfg_.loss == "chunked") {
    ChunkedLossOptions o{cfg_.loss_chunk, cfg_.loss_vocab_chunk, cfg_.loss_filter_eps, -100,
                         model->config().final_logit_softcapping};
    return chunked_cross_entropy(hidden, model->lm_head_weight(), targets, o);
  }
  at::Tensor logits = model->logits(hidden);
  return lm_cross_entropy(logits, targets);
}

std::string MemoryPolicy::describe() const {
  std::string r = cfg_.recompute;
  if (cfg_.recompute == "every_k") r += fmt::format(" (k={})", cfg_.recompute_every);
  if (cfg_.recompute == "budget") r += fmt::format(" ({} MB)", cfg_.budget_mb);
  return fmt::format("recompute {}, offload {}, activations {}, loss {}{}", r, cfg_.offload,
                     cfg_.activations, cfg_.loss,
                     cfg_.wta_crs ? fmt::format(", WTA-CRS ratio {}", cfg_.wta_crs_ratio) : "");
}

}  // namespace condense
