// Data-parallel gradient synchronization with buckets exchanged while backward still runs
// (the approach of PyTorch DDP, Li et al., VLDB 2020).
//
// Parameters that require grad are grouped into buckets of at most `bucket_cap_mb` (the first
// at most 1 MB, so the first exchange starts early, as in DDP), in reverse registration order
// (roughly the order backward produces their gradients), identically on every rank; a
// parameter larger than the cap gets a bucket of its own. Gradients are views into their
// bucket's flat fp32 buffer (DDP's gradient_as_bucket_view): begin_backward(true) points every
// parameter's grad at its zeroed slot (keeping what earlier micro-steps accumulated), autograd
// accumulates into it in place, and a post-accumulate-grad hook marks it ready; when a bucket is
// complete, a communication thread all-reduces it in place. So gradients are held once, not
// twice, and never copied in or out. (A grad that something replaced is copied into its slot
// and re-pointed.) Buckets are exchanged strictly in bucket order, so every rank issues the
// same collectives in the same order. finish() waits for all buckets; each grad then holds the
// mean over ranks. Parameters that got no gradient in a step contribute zeros. Optimizers may
// reset grads to undefined after the step; the next begin_backward(true) points them back.
//
// Gradient accumulation: begin_backward(false) before non-final micro-steps leaves gradients
// local; begin_backward(true) before the last one arms the exchange.
//
// Compression (config.compression enabled): each bucket goes through GradientCompression
// (error control around a codec) instead of the plain all-reduce; the bucket layout is the
// same, so the overlap with backward is kept.
//
// CUDA parameters (all on one device): the buckets live there, and the exchanges (codecs and
// collectives) are queued on one exchange stream: the communicator's stream() (NCCL's own) or,
// for a communicator without one, a stream from the pool. Host threads only queue work, so the
// order between streams is kept with events: when a bucket becomes ready, an event is recorded
// on the stream current on the thread that completed it (the autograd engine's device thread
// after the gradient's accumulation, or finish() on the caller's thread), and the exchange
// stream waits for it before exchanging that bucket; begin_backward(true) makes the exchange
// stream wait for the caller's stream too (optimizer step, checkpoint restore); finish() makes
// the caller's current stream wait for the exchanges, so the optimizer, clipping and checkpoints
// queued after it read the exchanged gradients. Timings in last_step() are host times then.
#pragma once
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include "comm/communicator.h"
#include "comm/gradient_compression.h"

namespace condense {

struct GradSyncConfig {
  double bucket_cap_mb = 25.0;
  bool overlap = true;  // false: exchange every bucket in finish(), after backward
  CompressionConfig compression;  // codec "none" + error control "none": plain all-reduce
};

class GradientSync {
 public:
  using Clock = std::chrono::steady_clock;
  struct Bucket {
    std::vector<size_t> params;    // indices into the parameter list
    std::vector<int64_t> offsets;  // element offset of each parameter in `flat`
    at::Tensor flat;               // fp32, contiguous
    size_t pending = 0;            // gradients still to arrive this step
    bool ready = false, done = false;
  };
  struct StepStats {
    ExchangeStats exchange;  // bytes and seconds of this rank's exchanges (all buckets)
    bool started = false;
    Clock::time_point first_exchange_start, last_exchange_end;
  };

  // `comm` must outlive this object. Collective: all ranks construct it with the same
  // parameter list (names are used only in errors).
  GradientSync(Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> params,
               GradSyncConfig config);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  void begin_backward(bool sync_this_micro_step);
  // Collective. Blocks until every bucket is exchanged; grads then hold the global mean.
  void finish();

  const std::vector<Bucket>& buckets() const { return buckets_; }
  const StepStats& last_step() const { return stats_; }
  // Null without compression. Its state belongs in checkpoints (per rank).
  GradientCompression* compression() { return compression_.get(); }

  // Called by the hooks (public for the hook class; not for users).
  void on_grad_ready(size_t param_index);

 private:
  void mark_ready_locked(size_t param_index);
  // Makes parameter k's grad its bucket slot, copying a grad held elsewhere (zeros if none).
  void bind_grad(size_t param_index);
  void exchange(size_t bucket_index);
  void comm_loop();
  // The stream current on this thread for the buckets' device (CUDA only).
  c10::Stream current_stream() const;

  Communicator& comm_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<std::pair<size_t, size_t>> location_;  // param -> (bucket, slot)
  std::vector<at::Tensor> slots_;                    // param -> its view into the bucket
  std::vector<bool> arrived_;
  std::vector<Bucket> buckets_;
  GradSyncConfig config_;
  StepStats stats_;
  std::unique_ptr<GradientCompression> compression_;

  // CUDA buckets only (empty for CPU, where nothing below is used): the exchange stream, one
  // "ready" event per bucket, "begun" (the caller's stream at begin_backward) and "done" (the
  // exchange stream after the last exchange queued). Recorded and waited on under mu_ or by the
  // one thread that runs exchanges.
  std::optional<c10::Stream> exchange_stream_;
  std::vector<c10::Event> ready_events_;
  std::optional<c10::Event> begun_event_, done_event_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false, stop_ = false;
  size_t next_ = 0;  // next bucket to exchange
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace condense
