// Compressed gradient exchange for GradientSync: per bucket, error control (comm/error_control.h)
// around a codec (comm/codec.h), with dense warm-up steps, byte and time metering, and state
// that checkpoints restore exactly.
//
// Per synchronized step: begin_step(); exchange(b, flat) for every bucket b in bucket order
// (collective; may run on GradientSync's communication thread); end_step().
// During the first `warmup_steps` steps, and always for buckets smaller than
// `min_bucket_numel`, the codec is dense fp32 ("none") inside the same error control, so the
// error-control state is already meaningful when compression starts (e.g. EF21's h_i = g_i).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "comm/codec.h"
#include "comm/comm_config.h"
#include "comm/communicator.h"
#include "comm/error_control.h"

namespace condense {

class GradientCompression {
 public:
  // Collective in effect (every rank must build it with the same config and layouts, all on
  // one device, where the state is kept and exchange() must be given its buckets); logs
  // the plan on rank 0, including a warning when a codec sends more bytes than dense
  // all-reduce for this world size (with the break-even ratio for topk).
  GradientCompression(Communicator& comm, CompressionConfig config, std::vector<BucketLayout> buckets);

  void begin_step();
  // Collective. flat: bucket b's fp32 gradients of this rank; replaced by the estimate. On CUDA
  // the work is queued on the current stream, and the seconds in stats() are the host's time
  // to queue it (and wait where a codec reads a value back), not the GPU's time.
  void exchange(size_t bucket, at::Tensor& flat);
  void end_step() { ++step_; }

  const ExchangeStats& stats() const { return stats_; }
  // What one compressed exchange of all buckets moves (bytes only; the start-up plan).
  const ExchangeStats& plan() const { return plan_; }
  int64_t step() const { return step_; }  // synchronized steps completed
  bool compressing() const;               // past warm-up
  const CompressionConfig& config() const { return config_; }

  // All state of this rank (error-control vectors, codec state such as PowerSGD's Q) as one
  // flat fp32 vector on the buckets' device (so a NCCL communicator can gather it), and its
  // inverse, which takes `flat` on any device; load_state checks the length and names what it
  // expected. On CUDA both are queued on the caller's current stream, which must be ordered
  // after the exchanges (GradientSync::finish does that).
  at::Tensor state() const;
  void load_state(const at::Tensor& flat, int64_t step, const std::string& source);
  // Every bucket's error control and codec state as at construction (the same on every rank:
  // codec seeds come from the config), keeping step(). For a step dropped because some rank's
  // gradient was non-finite: its residuals (and PowerSGD's Q) may hold those values.
  void reset_state();

 private:
  struct Bucket {
    std::unique_ptr<Codec> codec;  // the configured codec (dense for small buckets)
    std::unique_ptr<Codec> dense;  // warm-up
    ErrorControl control;
  };
  std::vector<at::Tensor> state_tensors() const;
  CompressionConfig bucket_settings(size_t b) const;  // dense below min_bucket_numel; own seed
  Bucket make_bucket(size_t b) const;

  Communicator& comm_;
  CompressionConfig config_;
  std::vector<BucketLayout> layouts_;
  std::vector<Bucket> buckets_;
  ExchangeStats stats_, plan_;
  int64_t step_ = 0;
  at::Device device_ = at::kCPU;
};

}  // namespace condense
