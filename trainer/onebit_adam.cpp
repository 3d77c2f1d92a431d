#include "trainer/onebit_adam.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace condense {

std::vector<int64_t> VarianceSchedule::steps() const {
  CONDENSE_CHECK(freeze_steps >= 1, "comm.sync.freeze_steps must be >= 1 (steps that estimate "
                 "Adam's second moment before it freezes), got {}", freeze_steps);
  CONDENSE_CHECK(update_scaler >= 0, "comm.sync.var_update_scaler must be >= 1, got {}",
                 update_scaler);
  std::vector<int64_t> out;
  if (update_scaler == 0) {
    for (int64_t s = 1; s <= freeze_steps; ++s) out.push_back(s);
    return out;
  }
  // DeepSpeed's ZeroOneAdam: a variance step when s % interval == 0; after every update_scaler
  // of them the interval doubles.
  int64_t interval = 1, counter = 0;
  for (int64_t s = 1; s <= freeze_steps; ++s) {
    if (s % interval != 0) continue;
    out.push_back(s);
    if (++counter == update_scaler) {
      counter = 0;
      interval *= 2;
    }
  }
  return out;
}

OneBitAdam::OneBitAdam(const std::vector<std::pair<std::string, at::Tensor>>& params,
                       AdamWOptions opt, VarianceSchedule schedule, Communicator& comm,
                       CompressionConfig compression, double bucket_cap_mb)
    : adam_(params, opt), opt_(opt), variance_steps_(schedule.steps()) {
  auto [decayed, plain] = register_params(params);
  decay_.assign(params_.size(), 0.0);
  for (size_t i : decayed) decay_[i] = opt.weight_decay;
  const std::map<std::string, at::Tensor> s = adam_.state();  // handles to AdamW's tensors
  for (const std::string& n : names_) {
    m_.push_back(s.at(n + "/exp_avg"));
    v_.push_back(s.at(n + "/exp_avg_sq"));
    t_.push_back(s.at(n + "/step"));
  }
  mask_.resize(params_.size());
  buckets_ = group_into_buckets(params_, bucket_cap_mb);
  for (const BucketLayout& l : buckets_.layouts)
    flat_.push_back(at::empty({l.numel}, at::TensorOptions(l.device).dtype(at::kFloat)));
  compression_ = std::make_unique<GradientCompression>(comm, std::move(compression), buckets_.layouts);
  if (comm.rank() == 0) {
    if (schedule.update_scaler == 0)
      spdlog::info("comm.sync: onebit_adam, {} dense AdamW steps, then Adam's second moment frozen "
                   "and the momentum exchanged through comm.compression", schedule.freeze_steps);
    else
      spdlog::info("comm.sync: zero_one_adam, {} dense AdamW steps that refresh the second moment "
                   "(the interval doubles every {}; the last at step {}), the momentum exchanged "
                   "through comm.compression at every other step", variance_steps_.size(),
                   schedule.update_scaler, variance_steps_.back());
  }
}

bool OneBitAdam::is_variance_step(int64_t step) const {
  return std::binary_search(variance_steps_.begin(), variance_steps_.end(), step);
}

int64_t OneBitAdam::variance_steps_until(int64_t step) const {
  return std::upper_bound(variance_steps_.begin(), variance_steps_.end(), step) -
         variance_steps_.begin();
}

void OneBitAdam::load_state(const std::map<std::string, at::Tensor>& state) {
  adam_.load_state(state);
  steps_ = t_.empty() ? 0 : static_cast<int64_t>(t_.front().item<float>());
  refresh_masks();
}

void OneBitAdam::refresh_masks() {
  at::NoGradGuard no_grad;
  if (v_.empty()) return;
  std::vector<at::Tensor> nonzero, all;
  for (const at::Tensor& v : v_) {
    nonzero.push_back(v.gt(0));
    all.push_back(nonzero.back().all());
  }
  // One read-back for every parameter (on CUDA one synchronization, not one per tensor).
  const at::Tensor full = at::stack(all).cpu();
  const bool* f = full.data_ptr<bool>();
  for (size_t i = 0; i < v_.size(); ++i) mask_[i] = f[i] ? at::Tensor() : nonzero[i];
}

void OneBitAdam::apply(size_t i, double lr, double bc2) {
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(steps_));
  at::Tensor p = params_[i].detach();
  if (decay_[i] > 0) p.mul_(1.0 - lr * decay_[i]);
  at::Tensor denom = v_[i].div(bc2).sqrt_().add_(opt_.eps);
  p.addcdiv_(m_[i], denom, -lr / bc1);
  t_[i].add_(1.0);
}

void OneBitAdam::dense_step(double lr) {
  // AdamW on the (already exchanged) mean gradient, with v's bias correction counting only the
  // variance steps. Like AdamW, a parameter without a gradient is left alone.
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(variance_steps_until(steps_)));
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].grad();
    if (!g.defined()) continue;
    m_[i].mul_(b1).add_(g, 1.0 - b1);
    v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    apply(i, lr, bc2);
  }
}

void OneBitAdam::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  if (is_variance_step(steps_)) {
    // Every step so far a variance step: plain AdamW, bit for bit.
    if (variance_steps_until(steps_) == steps_) adam_.step(lr);
    else dense_step(lr);
    refresh_masks();
    return;
  }
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
      if (mask_[i].defined()) m_[i].mul_(mask_[i]);
    }
  }
  compression_->end_step();
  // The AdamW step with v as the last variance step left it (and its bias correction with it).
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(variance_steps_until(steps_)));
  for (size_t i = 0; i < params_.size(); ++i) apply(i, lr, bc2);
}

}  // namespace condense
