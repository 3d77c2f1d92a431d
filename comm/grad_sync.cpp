#include "comm/grad_sync.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "core/error.h"

namespace condense {
namespace {

class ReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  ReadyHook(GradientSync* sync, size_t index) : sync_(sync), index_(index) {}
  void operator()(const torch::autograd::Variable&) override { sync_->on_grad_ready(index_); }

 private:
  GradientSync* sync_;
  size_t index_;
};

}  // namespace

GradientSync::GradientSync(Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> all,
                           GradSyncConfig config)
    : comm_(comm), config_(config) {
  for (auto& p : all)
    if (p.second.requires_grad()) params_.push_back(std::move(p));
  CONDENSE_CHECK(config_.bucket_cap_mb > 0, "bucket_cap_mb must be > 0");
  const int64_t cap = static_cast<int64_t>(config_.bucket_cap_mb * 1024 * 1024 / sizeof(float));
  location_.resize(params_.size());
  arrived_.assign(params_.size(), false);
  // The first bucket (the last layers, whose gradients backward produces first) is capped at
  // 1 MB, as in PyTorch DDP, so that the first exchange starts early in backward.
  const int64_t first_cap = std::min<int64_t>(cap, 1024 * 1024 / sizeof(float));
  int64_t filled = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const at::Tensor& p = params_[k].second;
    CONDENSE_CHECK(p.scalar_type() == at::kFloat, "gradient sync supports fp32 parameters; '{}' is {}",
                   params_[k].first, c10::toString(p.scalar_type()));
    const at::Tensor& first = params_.back().second;
    CONDENSE_CHECK(p.device() == first.device() && (p.is_cpu() || p.is_cuda()),
                   "gradient sync needs all parameters on one CPU or CUDA device; '{}' is on {}, "
                   "'{}' on {}", params_[k].first, p.device().str(), params_.back().first,
                   first.device().str());
    const int64_t limit = buckets_.size() == 1 ? first_cap : cap;
    if (buckets_.empty() || (filled > 0 && filled + p.numel() > limit)) {
      buckets_.emplace_back();
      filled = 0;
    }
    Bucket& b = buckets_.back();
    location_[k] = {buckets_.size() - 1, b.params.size()};
    b.params.push_back(k);
    b.offsets.push_back(filled);
    filled += p.numel();
  }
  for (Bucket& b : buckets_) {
    int64_t n = b.offsets.back() + params_[b.params.back()].second.numel();
    b.flat = at::zeros({n}, params_[b.params.front()].second.options().requires_grad(false));
  }
  slots_.resize(params_.size());
  for (size_t k = 0; k < params_.size(); ++k) {
    auto [bi, slot] = location_[k];
    const at::Tensor& p = params_[k].second;
    slots_[k] = buckets_[bi].flat.narrow(0, buckets_[bi].offsets[slot], p.numel()).view(p.sizes());
  }
  if (!buckets_.empty() && buckets_.front().flat.is_cuda()) {
    // See "CUDA parameters" in grad_sync.h.
    const at::Device device = buckets_.front().flat.device();
    std::optional<c10::Stream> comm_stream = comm_.stream();
    if (comm_stream && comm_stream->device() == device) {
      exchange_stream_ = *comm_stream;
    } else {
      exchange_stream_ = c10::impl::VirtualGuardImpl(device.type()).getStreamFromGlobalPool(device);
    }
    for (size_t i = 0; i < buckets_.size(); ++i) ready_events_.emplace_back(device.type());
    begun_event_.emplace(device.type());
    done_event_.emplace(device.type());
  }
  if (config_.compression.enabled()) {
    std::vector<BucketLayout> layouts;
    for (const Bucket& b : buckets_) {
      BucketLayout layout{b.offsets, {}, b.flat.numel(), b.flat.device()};
      for (size_t k : b.params) layout.shapes.push_back(params_[k].second.sizes().vec());
      layouts.push_back(std::move(layout));
    }
    compression_ = std::make_unique<GradientCompression>(comm_, config_.compression, std::move(layouts));
  }
  for (size_t k = 0; k < params_.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k].second,
                                                   std::make_unique<ReadyHook>(this, k));
  if (config_.overlap) thread_ = std::thread([this] { comm_loop(); });
}

GradientSync::~GradientSync() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p.second, nullptr);
}

void GradientSync::begin_backward(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = sync;
  if (!sync) return;
  next_ = 0;
  stats_ = StepStats{};
  if (compression_) compression_->begin_step();
  if (exchange_stream_) {
    // This step's exchanges come after what the caller queued so far (the optimizer's update
    // of the parameters, a restored compression state).
    begun_event_->record(current_stream());
    begun_event_->block(*exchange_stream_);
  }
  std::fill(arrived_.begin(), arrived_.end(), false);
  for (Bucket& b : buckets_) {
    b.pending = b.params.size();
    b.ready = b.done = false;
  }
  at::NoGradGuard no_grad;
  for (size_t k = 0; k < params_.size(); ++k) bind_grad(k);
}

void GradientSync::bind_grad(size_t k) {
  at::Tensor& p = params_[k].second;
  const at::Tensor& slot = slots_[k];
  const at::Tensor& g = p.grad();
  if (g.defined() && g.data_ptr() == slot.data_ptr()) return;  // already accumulating in place
  if (g.defined()) slot.copy_(g);
  else slot.zero_();
  p.mutable_grad() = slot;
}

void GradientSync::on_grad_ready(size_t k) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!armed_ || arrived_[k]) return;
  mark_ready_locked(k);
}

// Parameter k's gradient is complete in its bucket slot (bound there by begin_backward; a
// grad that autograd or the user replaced since is copied in and re-pointed).
void GradientSync::mark_ready_locked(size_t k) {
  arrived_[k] = true;
  {
    at::NoGradGuard no_grad;
    bind_grad(k);
  }
  Bucket& b = buckets_[location_[k].first];
  if (--b.pending == 0) {
    // CUDA: the bucket's gradients are final once the work queued so far on this thread's
    // stream has run (the engine runs the post-accumulate hook after the accumulation, on the
    // stream it used; in finish(), backward has returned, and the engine has made the caller's
    // stream wait for its streams).
    if (exchange_stream_) ready_events_[location_[k].first].record(current_stream());
    b.ready = true;
    cv_.notify_all();
  }
}

c10::Stream GradientSync::current_stream() const {
  return c10::impl::VirtualGuardImpl(exchange_stream_->device_type()).getStream(exchange_stream_->device());
}

void GradientSync::exchange(size_t index) {
  Bucket& b = buckets_[index];
  // CUDA: everything below (codecs, collectives) is queued on the exchange stream, after the
  // bucket's gradients; `done` marks the end of the last exchange for finish().
  std::optional<c10::StreamGuard> on_exchange_stream;
  if (exchange_stream_) {
    on_exchange_stream.emplace(*exchange_stream_);
    ready_events_[index].block(*exchange_stream_);
  }
  auto t0 = Clock::now();
  if (!stats_.started) stats_.first_exchange_start = t0;
  stats_.started = true;
  if (compression_) {
    compression_->exchange(index, b.flat);
  } else {
    comm_.all_reduce_sum(b.flat);
    div_exact_(b.flat, comm_.size());  // as the codecs divide (comm/codec.h)
    const int64_t bytes = b.flat.numel() * static_cast<int64_t>(sizeof(float));
    stats_.exchange.add_all_reduce(bytes, comm_.size());
    stats_.exchange.add_dense_reference(bytes, comm_.size());
  }
  if (exchange_stream_) done_event_->record(*exchange_stream_);
  auto t1 = Clock::now();
  stats_.last_exchange_end = t1;
  if (!compression_) stats_.exchange.exchange_s += std::chrono::duration<double>(t1 - t0).count();
}

void GradientSync::comm_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] {
      return stop_ || (armed_ && next_ < buckets_.size() && buckets_[next_].ready);
    });
    if (stop_) return;
    Bucket& b = buckets_[next_];
    const size_t index = next_;
    lock.unlock();
    try {
      exchange(index);
    } catch (...) {
      lock.lock();
      error_ = std::current_exception();
      next_ = buckets_.size();
      cv_.notify_all();
      continue;
    }
    lock.lock();
    b.done = true;
    ++next_;
    cv_.notify_all();
  }
}

void GradientSync::finish() {
  std::unique_lock<std::mutex> lock(mu_);
  CONDENSE_CHECK(armed_, "GradientSync::finish without begin_backward(true)");
  for (size_t k = 0; k < params_.size(); ++k)
    if (!arrived_[k]) mark_ready_locked(k);
  if (config_.overlap) {
    cv_.wait(lock, [&] { return next_ >= buckets_.size(); });
    if (error_) {
      auto e = error_;
      error_ = nullptr;
      armed_ = false;
      std::rethrow_exception(e);
    }
  } else {
    for (size_t i = 0; i < buckets_.size(); ++i) exchange(i);
  }
  // CUDA: what the caller queues from now on (clipping, the optimizer) reads the exchanged
  // gradients. Buckets are exchanged in order on one stream, so the last one's event covers all.
  if (exchange_stream_) done_event_->block(current_stream());
  armed_ = false;
  if (compression_) {
    stats_.exchange = compression_->stats();
    compression_->end_step();
  }
  // Every grad is its bucket slot (bound when it arrived), which now holds the mean.
}

}  // namespace condense
