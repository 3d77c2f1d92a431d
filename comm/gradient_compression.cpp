#include "comm/gradient_compression.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/random.h"

namespace condense {

GradientCompression::GradientCompression(Communicator& comm, CompressionConfig config,
                                         std::vector<BucketLayout> layouts)
    : comm_(comm), config_(std::move(config)), layouts_(std::move(layouts)) {
  const int world = comm_.size();
  if (!layouts_.empty()) device_ = layouts_.front().device;
  for (const BucketLayout& layout : layouts_)
    CONDENSE_CHECK(layout.device == device_, "GradientCompression: buckets on {} and {}; all "
                   "buckets must be on one device", device_.str(), layout.device.str());
  int64_t total = 0, total_payload = 0, total_dense_wire = 0, total_wire = 0;
  for (size_t b = 0; b < layouts_.size(); ++b) {
    const BucketLayout& layout = layouts_[b];
    CompressionConfig bucket_config = bucket_settings(b);
    Bucket bucket = make_bucket(b);
    ExchangeStats plan, dense;
    const int64_t payload = bucket.codec->payload_bytes();
    bucket.codec->plan(plan, world);
    dense.add_all_reduce(4 * layout.numel, world);
    total += layout.numel;
    plan_.payload_bytes += payload;
    plan_.wire_bytes += plan.wire_bytes;
    plan_.dense_wire_bytes += dense.wire_bytes;
    total_payload += payload;
    total_wire += plan.wire_bytes;
    total_dense_wire += dense.wire_bytes;
    if (world > 1 && plan.wire_bytes >= dense.wire_bytes && bucket_config.codec != "none" &&
        comm_.rank() == 0) {
      std::string why = config_.codec == "topk"
          ? fmt::format("topk all-gathers (index, value) pairs and only saves bytes below the "
                        "break-even ratio k/numel < 1/n = {:.4g} for {} ranks (here {:.4g})",
                        1.0 / world, world, double(kept_elements(config_, layout.numel)) / layout.numel)
          : fmt::format("{} payloads are all-gathered", config_.codec);
      spdlog::warn("comm.compression: bucket {} ({} elements): codec '{}' sends {} bytes per rank "
                   "against {} for a dense fp32 all-reduce; {}",
                   b, layout.numel, config_.codec, plan.wire_bytes, dense.wire_bytes, why);
    }
    buckets_.push_back(std::move(bucket));
  }
  if (comm_.rank() == 0) {
    spdlog::info("comm.compression: codec {} with error control {}{}, {} buckets, {} elements: "
                 "{:.3g} MB payload and {:.3g} MB on the wire per rank and exchange ({:.1f}x less than "
                 "dense fp32 all-reduce), after {} dense warm-up exchanges",
                 config_.codec, config_.error_control,
                 config_.error_control == "econtrol" ? fmt::format(" (eta {})", config_.eta)
                 : config_.error_control == "ef" && config_.decay != 1.0
                     ? fmt::format(" (decay {})", config_.decay) : "",
                 buckets_.size(), total, total_payload / 1e6, total_wire / 1e6,
                 total_wire > 0 ? double(total_dense_wire) / total_wire : 1.0, config_.warmup_steps);
  }
}

CompressionConfig GradientCompression::bucket_settings(size_t b) const {
  CompressionConfig c = config_;
  if (layouts_[b].numel < config_.min_bucket_numel) c.codec = "none";
  c.seed = static_cast<int64_t>(mix64(static_cast<uint64_t>(config_.seed) * 1000003u + b));
  return c;
}

GradientCompression::Bucket GradientCompression::make_bucket(size_t b) const {
  const BucketLayout& layout = layouts_[b];
  const int world = comm_.size();
  const bool ec = config_.error_control != "none";
  return Bucket{make_codec(bucket_settings(b), layout, world, ec),
                make_codec(CompressionConfig{}, layout, world, ec),
                ErrorControl(config_.error_control, config_.eta, layout.numel, layout.device,
                             config_.decay)};
}

void GradientCompression::reset_state() {
  for (size_t b = 0; b < buckets_.size(); ++b) buckets_[b] = make_bucket(b);
}

bool GradientCompression::compressing() const { return step_ >= config_.warmup_steps; }

void GradientCompression::begin_step() { stats_ = ExchangeStats{}; }

void GradientCompression::exchange(size_t b, at::Tensor& flat) {
  CONDENSE_CHECK(b < buckets_.size(), "GradientCompression: bucket {} of {}", b, buckets_.size());
  Bucket& bucket = buckets_[b];
  uint64_t shared = mix64(mix64(static_cast<uint64_t>(config_.seed) ^ 0x5EEDull) +
                          static_cast<uint64_t>(step_) * 0x9E3779B97F4A7C15ull + b);
  ExchangeContext ctx{comm_, shared, mix64(shared + static_cast<uint64_t>(comm_.rank()) + 1), stats_};
  Codec& codec = compressing() ? *bucket.codec : *bucket.dense;
  bucket.control.step(flat, codec, ctx);
  stats_.add_dense_reference(4 * flat.numel(), comm_.size());
}

std::vector<at::Tensor> GradientCompression::state_tensors() const {
  std::vector<at::Tensor> out;
  for (const Bucket& b : buckets_) {
    for (const at::Tensor& t : b.control.state()) out.push_back(t);
    for (const at::Tensor& t : b.codec->state()) out.push_back(t);
  }
  return out;
}

at::Tensor GradientCompression::state() const {
  std::vector<at::Tensor> flat;
  for (const at::Tensor& t : state_tensors()) flat.push_back(t.reshape({-1}));
  return flat.empty() ? at::empty({0}, at::TensorOptions(device_).dtype(at::kFloat)) : at::cat(flat);
}

void GradientCompression::load_state(const at::Tensor& flat, int64_t step, const std::string& source) {
  std::vector<at::Tensor> tensors = state_tensors();
  int64_t expected = 0;
  for (const at::Tensor& t : tensors) expected += t.numel();
  CONDENSE_CHECK(flat.scalar_type() == at::kFloat && flat.dim() == 1 && flat.numel() == expected,
                 "{}: compression state has {} {} elements, expected {} fp32 for codec '{}' with "
                 "error control '{}' over these buckets; was the checkpoint written with another "
                 "comm.compression setting or model?",
                 source, flat.numel(), c10::toString(flat.scalar_type()), expected, config_.codec,
                 config_.error_control);
  int64_t offset = 0;
  at::NoGradGuard no_grad;
  for (at::Tensor& t : tensors) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
  step_ = step;
}

}  // namespace condense
