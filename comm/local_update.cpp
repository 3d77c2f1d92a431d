#include "comm/local_update.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <spdlog/spdlog.h>

#include "comm/flat_buckets.h"
#include "core/error.h"
#include "core/shape.h"

namespace condense {

const std::vector<std::string>& sync_modes() {
  static const std::vector<std::string> m = {"ddp", "diloco", "onebit_adam", "zero_one_adam"};
  return m;
}

const std::vector<std::string>& outer_optimizers() {
  static const std::vector<std::string> o = {"nesterov", "sgd"};
  return o;
}

LocalUpdate::LocalUpdate(Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> params,
                         SyncConfig sync, CompressionConfig compression, double bucket_cap_mb)
    : comm_(comm), params_(std::move(params)), sync_(std::move(sync)) {
  CONDENSE_CHECK(sync_.inner_steps >= 1, "comm.sync.inner_steps must be >= 1, got {}",
                 sync_.inner_steps);
  CONDENSE_CHECK(!params_.empty(), "local update: no trained parameters");
  const at::Device device = params_.front().second.device();
  std::vector<at::Tensor> tensors;
  for (const auto& [name, p] : params_) {
    CONDENSE_CHECK(p.scalar_type() == at::kFloat && p.device() == device,
                   "local update: parameter '{}' is {} on {}; every trained tensor must be fp32 on {}",
                   name, c10::toString(p.scalar_type()), p.device().str(), device.str());
    tensors.push_back(p);
  }
  const int64_t fragments = sync_.fragments;
  CONDENSE_CHECK(fragments >= 1 && sync_.inner_steps % fragments == 0,
                 "comm.sync.fragments must be >= 1 and divide comm.sync.inner_steps ({}), got {}",
                 sync_.inner_steps, fragments);
  CONDENSE_CHECK(fragments <= static_cast<int64_t>(tensors.size()), "comm.sync.fragments {} exceeds "
                 "the {} trained tensors (a fragment is a run of whole tensors)", fragments,
                 tensors.size());
  // Fragments: runs of whole tensors, cut where the running element count passes f / P of the
  // total (and never empty); each is grouped into buckets of its own.
  int64_t total = 0;
  for (const at::Tensor& t : tensors) total += t.numel();
  std::vector<size_t> first(fragments + 1, tensors.size());
  first[0] = 0;
  int64_t seen = 0;
  for (size_t i = 0, f = 1; i < tensors.size() && f < static_cast<size_t>(fragments); ++i) {
    seen += tensors[i].numel();
    const size_t left = tensors.size() - (i + 1);  // tensors for the remaining fragments
    if ((seen * fragments >= total * static_cast<int64_t>(f) && left >= fragments - f) ||
        left == fragments - f)
      first[f++] = i + 1;
  }
  FlatBuckets flat;
  std::vector<int64_t> fragment_of;
  for (int64_t f = 0; f < fragments; ++f) {
    std::vector<at::Tensor> part(tensors.begin() + first[f], tensors.begin() + first[f + 1]);
    FlatBuckets fb = group_into_buckets(part, bucket_cap_mb);
    for (size_t b = 0; b < fb.layouts.size(); ++b) {
      for (size_t& m : fb.members[b]) m += first[f];
      flat.layouts.push_back(fb.layouts[b]);
      flat.members.push_back(fb.members[b]);
      fragment_of.push_back(f);
    }
  }
  const auto opt = at::TensorOptions(device).dtype(at::kFloat);
  at::NoGradGuard no_grad;
  for (size_t b = 0; b < flat.layouts.size(); ++b) {
    Bucket bucket{fragment_of[b], flat.members[b], flat.layouts[b].offsets};
    const int64_t numel = flat.layouts[b].numel;
    bucket.anchor = at::empty({numel}, opt);
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      const at::Tensor& p = params_[bucket.params[j]].second;
      bucket.anchor.narrow(0, bucket.offsets[j], p.numel()).copy_(p.detach().reshape({-1}));
    }
    if (sync_.outer_momentum > 0) bucket.momentum = at::zeros({numel}, opt);
    bucket.delta = at::empty({numel}, opt);
    buckets_.push_back(std::move(bucket));
  }
  compression_ = std::make_unique<GradientCompression>(comm_, std::move(compression), flat.layouts);
  if (comm_.rank() == 0) {
    const ExchangeStats& plan = compression_->plan();
    const double per_step = plan.wire_bytes / static_cast<double>(sync_.inner_steps);
    spdlog::info("comm.sync: diloco, {} inner steps per exchange of the pseudo-gradient{}, outer {} "
                 "(lr {}, momentum {}): {:.3g} MB on the wire per rank and round, {:.3g} MB per "
                 "step, {:.1f}x less than a dense fp32 all-reduce every step",
                 sync_.inner_steps,
                 fragments > 1 ? fmt::format(" in {} fragments (one every {} steps)", fragments,
                                             sync_.inner_steps / fragments) : "",
                 sync_.outer_optimizer, sync_.outer_lr, sync_.outer_momentum,
                 plan.wire_bytes / 1e6, per_step / 1e6,
                 per_step > 0 ? plan.dense_wire_bytes / per_step : 1.0);
  }
}

std::vector<int64_t> LocalUpdate::fragments_due(int64_t step, int64_t total) const {
  const int64_t h = sync_.inner_steps, p = sync_.fragments;
  std::vector<int64_t> out;
  for (int64_t f = 0; f < p; ++f)
    if (step == total || step % h == ((f + 1) * (h / p)) % h) out.push_back(f);
  return out;
}

void LocalUpdate::outer_step(const std::vector<int64_t>& fragments) {
  at::NoGradGuard no_grad;
  compression_->begin_step();
  const bool nesterov = sync_.outer_optimizer == "nesterov";
  const double mu = sync_.outer_momentum, lr = sync_.outer_lr;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    if (!fragments.empty() &&
        std::find(fragments.begin(), fragments.end(), bucket.fragment) == fragments.end())
      continue;
    // D = anchor - w (this rank's pseudo-gradient), in the bucket's flat layout.
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      const at::Tensor& p = params_[bucket.params[j]].second;
      bucket.delta.narrow(0, bucket.offsets[j], p.numel()).copy_(p.detach().reshape({-1}));
    }
    at::sub_out(bucket.delta, bucket.anchor, bucket.delta);
    compression_->exchange(b, bucket.delta);  // delta <- the estimate of mean_r D_r
    if (bucket.momentum.defined()) {
      bucket.momentum.mul_(mu).add_(bucket.delta);
      if (nesterov) bucket.delta.add_(bucket.momentum, mu);
      else bucket.delta.copy_(bucket.momentum);
    }
    bucket.anchor.sub_(bucket.delta, lr);
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      at::Tensor p = params_[bucket.params[j]].second.detach();
      p.copy_(bucket.anchor.narrow(0, bucket.offsets[j], p.numel()).view(p.sizes()));
    }
  }
  compression_->end_step();
}

void LocalUpdate::swap_anchor() {
  at::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    for (size_t j = 0; j < bucket.params.size(); ++j) {
      at::Tensor p = params_[bucket.params[j]].second.detach();
      at::Tensor a = bucket.anchor.narrow(0, bucket.offsets[j], p.numel()).view(p.sizes());
      at::Tensor local = p.clone();
      p.copy_(a);
      a.copy_(local);
    }
  }
}

std::map<std::string, at::Tensor> LocalUpdate::shared_state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    // Copies: the caller may hold them while swap_anchor() rewrites the anchor in place.
    out["local_update/anchor" + std::to_string(b)] = buckets_[b].anchor.clone();
    if (buckets_[b].momentum.defined())
      out["local_update/momentum" + std::to_string(b)] = buckets_[b].momentum.clone();
  }
  return out;
}

void LocalUpdate::load_shared_state(const std::map<std::string, at::Tensor>& state,
                                    const std::string& source) {
  at::NoGradGuard no_grad;
  auto take = [&](const std::string& name, at::Tensor& dst) {
    auto it = state.find(name);
    CONDENSE_CHECK(it != state.end(), "{}: no '{}': the checkpoint was not written by a diloco run "
                   "with these parameters, comm.bucket_cap_mb and comm.sync.fragments (and outer "
                   "momentum)", source, name);
    CONDENSE_CHECK(it->second.sizes() == dst.sizes(), "{}: '{}' has shape {}, expected {}", source,
                   name, shape_str(it->second.sizes()), shape_str(dst.sizes()));
    dst.copy_(it->second);
  };
  for (size_t b = 0; b < buckets_.size(); ++b) {
    take("local_update/anchor" + std::to_string(b), buckets_[b].anchor);
    if (buckets_[b].momentum.defined())
      take("local_update/momentum" + std::to_string(b), buckets_[b].momentum);
  }
}

}  // namespace condense
