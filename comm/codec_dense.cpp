// Dense codecs: none (fp32), fp16, bf16. All summable, exchanged by one all-reduce.
#include <ATen/ATen.h>

#include "comm/codec_impl.h"

namespace condense {
namespace {

class DenseCodec : public Codec {
 public:
  DenseCodec(std::string name, int64_t numel, int world) : name_(std::move(name)), numel_(numel), world_(world) {
    type_ = name_ == "fp16" ? at::kHalf : name_ == "bf16" ? at::kBFloat16 : at::kFloat;
  }
  std::string name() const override { return name_; }
  int64_t payload_bytes() const override { return numel_ * at::elementSize(type_); }
  bool summable() const override { return true; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    if (type_ == at::kFloat) {
      // Exactly GradientSync's plain path: sum, then divide (bitwise the same result).
      {
        ScopedSeconds t(ctx.stats.exchange_s);
        mean.copy_(v);
        ctx.comm.all_reduce_sum(mean);
      }
      div_exact_(mean, world_);
      if (local) local->copy_(v);
    } else {
      // Pre-divided by n before rounding (as DDP's fp16 hook does) so the 16-bit sum cannot
      // overflow where the mean would not.
      at::Tensor payload;
      {
        ScopedSeconds t(ctx.stats.compress_s);
        payload = div_exact(v, world_).to(type_);
        if (local) local->copy_(payload.to(at::kFloat).mul_(world_));
      }
      {
        ScopedSeconds t(ctx.stats.exchange_s);
        ctx.comm.all_reduce_sum(payload);
      }
      ScopedSeconds t(ctx.stats.decompress_s);
      mean.copy_(payload);
    }
    ctx.stats.add_all_reduce(payload_bytes(), world_);
  }

 private:
  std::string name_;
  int64_t numel_;
  int world_;
  at::ScalarType type_;
};

}  // namespace

std::unique_ptr<Codec> make_dense_codec(const std::string& name, int64_t numel, int world) {
  return std::make_unique<DenseCodec>(name, numel, world);
}

}  // namespace condense
