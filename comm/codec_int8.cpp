// int8 with a fitted codebook, per parameter tensor: the quantizer INTELLECT-1 used for DiLoCo's
// pseudo-gradients (Jaghouar et al., 2024, after hivemind's uniform 8-bit quantization).
//
// For each tensor x of the bucket: shift = mean(x); the range is +-3 standard deviations of
// x - shift split into 256 uniform bins (scale = 6 std / 256); code = round((x - shift) / scale)
// + 128, clamped to [0, 255]. The codebook is not the bins' centres but the mean of the values
// that fell into each bin (a bin no value fell into keeps its centre), so the decoded vector
// keeps each bin's mass. Payload per rank: the codebooks (256 fp32 per tensor), then one code
// byte per element, padded to 4 bytes; the codebooks differ per rank, so payloads travel by
// all-gather and every rank decodes them in rank order into the same mean. Deterministic
// rounding: biased, meant for error feedback (or no error control, as INTELLECT-1). On CUDA the
// per-bin sums use atomic adds, so a codebook may differ in its last bit between two runs (all
// ranks still agree: they decode the same gathered payloads); on the CPU runs repeat exactly.
#include <ATen/ATen.h>

#include <cmath>

#include "comm/codec_impl.h"
#include "core/error.h"

namespace condense {
namespace {

constexpr int64_t kBins = 256;

class Int8Codec : public Codec {
 public:
  Int8Codec(const BucketLayout& layout, int world) : world_(world), numel_(layout.numel) {
    for (const TensorSegment& t : tensor_segments(layout)) segments_.push_back({t.offset, t.numel});
    codebook_bytes_ = static_cast<int64_t>(segments_.size()) * kBins * 4;
    payload_ = (codebook_bytes_ + numel_ + 3) / 4 * 4;
  }
  std::string name() const override { return "int8"; }
  int64_t payload_bytes() const override { return payload_; }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    CONDENSE_CHECK(v.numel() == numel_, "int8 codec: bucket of {} elements, built for {}",
                   v.numel(), numel_);
    at::Tensor payload = at::zeros({payload_}, v.options().dtype(at::kByte));
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor books = payload.narrow(0, 0, codebook_bytes_).view(at::kFloat).view({-1, kBins});
      at::Tensor codes = payload.narrow(0, codebook_bytes_, numel_);
      const at::Tensor centre = at::arange(kBins, v.options()).sub_(kBins / 2);
      for (size_t s = 0; s < segments_.size(); ++s) {
        const auto [offset, n] = segments_[s];
        at::Tensor x = v.narrow(0, offset, n);
        at::Tensor shift = x.mean();
        at::Tensor c = x - shift;
        at::Tensor std = c.norm().div_(std::sqrt(static_cast<double>(std::max<int64_t>(n - 1, 1))));
        // A constant tensor (std 0) puts everything into bin 128, whose mean is the constant.
        at::Tensor scale = std.mul_(6.0 / kBins).clamp_min_(1e-30);
        at::Tensor q = c.div_(scale).round_().add_(kBins / 2).clamp_(0, kBins - 1).to(at::kLong);
        at::Tensor sums = at::zeros({kBins}, v.options()).index_add_(0, q, x);
        at::Tensor counts = at::zeros({kBins}, v.options()).index_add_(0, q, at::ones_like(x));
        at::Tensor book = at::where(counts > 0, sums / counts.clamp_min(1), centre * scale + shift);
        books[static_cast<int64_t>(s)].copy_(book);
        codes.narrow(0, offset, n).copy_(q);
        if (local) local->narrow(0, offset, n).copy_(book.index_select(0, q));
      }
    }
    at::Tensor all = at::empty({world_ * payload_}, payload.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_();
    for (int r = 0; r < world_; ++r) {  // fixed rank order: the same sum on every rank
      at::Tensor part = all.narrow(0, r * payload_, payload_);
      at::Tensor books = part.narrow(0, 0, codebook_bytes_).view(at::kFloat).view({-1, kBins});
      at::Tensor codes = part.narrow(0, codebook_bytes_, numel_);
      for (size_t s = 0; s < segments_.size(); ++s) {
        const auto [offset, n] = segments_[s];
        mean.narrow(0, offset, n)
            .add_(books[static_cast<int64_t>(s)].index_select(0, codes.narrow(0, offset, n).to(at::kLong)));
      }
    }
    div_exact_(mean, world_);
    ctx.stats.add_all_gather(payload_, world_);
  }

 private:
  int world_;
  int64_t numel_;
  std::vector<std::pair<int64_t, int64_t>> segments_;  // (offset, numel) of each tensor
  int64_t codebook_bytes_ = 0, payload_ = 0;
};

}  // namespace

std::unique_ptr<Codec> make_int8_codec(const BucketLayout& layout, int world) {
  return std::make_unique<Int8Codec>(layout, world);
}

}  // namespace condense
