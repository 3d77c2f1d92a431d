#include "trainer/onebit_adam.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cmath>

#include "core/error.h"

namespace condense {

OneBitAdam::OneBitAdam(const std::vector<std::pair<std::string, at::Tensor>>& params,
                       AdamWOptions opt, int64_t freeze_steps, Communicator& comm,
                       CompressionConfig compression, double bucket_cap_mb)
    : adam_(params, opt), opt_(opt), freeze_steps_(freeze_steps) {
  CONDENSE_CHECK(freeze_steps_ >= 1, "comm.sync.freeze_steps must be >= 1 (dense AdamW steps "
                 "that estimate the second moment before it freezes), got {}", freeze_steps_);
  auto [decayed, plain] = register_params(params);
  decay_.assign(params_.size(), 0.0);
  for (size_t i : decayed) decay_[i] = opt.weight_decay;
  const std::map<std::string, at::Tensor> s = adam_.state();  // handles to AdamW's tensors
  for (const std::string& n : names_) {
    m_.push_back(s.at(n + "/exp_avg"));
    v_.push_back(s.at(n + "/exp_avg_sq"));
    t_.push_back(s.at(n + "/step"));
  }
  buckets_ = group_into_buckets(params_, bucket_cap_mb);
  for (const BucketLayout& l : buckets_.layouts)
    flat_.push_back(at::empty({l.numel}, at::TensorOptions(l.device).dtype(at::kFloat)));
  compression_ = std::make_unique<GradientCompression>(comm, std::move(compression), buckets_.layouts);
  if (comm.rank() == 0)
    spdlog::info("comm.sync: onebit_adam, {} dense AdamW steps, then Adam's second moment frozen "
                 "and the momentum exchanged through comm.compression", freeze_steps_);
}

void OneBitAdam::load_state(const std::map<std::string, at::Tensor>& state) {
  adam_.load_state(state);
  steps_ = t_.empty() ? 0 : static_cast<int64_t>(t_.front().item<float>());
}

void OneBitAdam::step(double lr) {
  ++steps_;
  if (steps_ <= freeze_steps_) {
    adam_.step(lr);
    return;
  }
  at::NoGradGuard no_grad;
  const double b1 = opt_.beta1;
  // m_r = beta1 m + (1 - beta1) g_r into the flat buckets, exchanged (error feedback inside);
  // the mean becomes every rank's m.
  compression_->begin_step();
  for (size_t b = 0; b < flat_.size(); ++b) {
    const std::vector<size_t>& members = buckets_.members[b];
    for (size_t j = 0; j < members.size(); ++j) {
      const size_t i = members[j];
      at::Tensor dst = flat_[b].narrow(0, buckets_.layouts[b].offsets[j], m_[i].numel()).view(m_[i].sizes());
      const at::Tensor& g = params_[i].grad();
      if (g.defined()) at::add_out(dst, m_[i] * b1, g, 1.0 - b1);
      else at::mul_out(dst, m_[i], b1);
    }
    compression_->exchange(b, flat_[b]);
    for (size_t j = 0; j < members.size(); ++j) {
      const size_t i = members[j];
      m_[i].copy_(flat_[b].narrow(0, buckets_.layouts[b].offsets[j], m_[i].numel()).view(m_[i].sizes()));
    }
  }
  compression_->end_step();
  // The AdamW step with v as it was at the freeze (and its bias correction with it).
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(freeze_steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i].detach();
    if (decay_[i] > 0) p.mul_(1.0 - lr * decay_[i]);
    at::Tensor denom = v_[i].div(bc2).sqrt_().add_(opt_.eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
    t_[i].add_(1.0);
  }
}

}  // namespace condense
