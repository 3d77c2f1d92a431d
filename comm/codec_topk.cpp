// Top-K: the k largest magnitudes of the bucket, sent as (int32 index, fp32 value) pairs through
// one all-gather; every rank sums the gathered pairs in rank order, so all get the same mean.
// Wire cost per rank is (n-1) * 8k bytes against 2 (n-1)/n * 4 numel for a dense ring
// all-reduce: Top-K only saves bytes when k / numel < 1/n (GradientCompression logs this).
#include <ATen/ATen.h>

#include <cstring>

#include "comm/codec_impl.h"
#include "comm/topk_select.h"

namespace condense {
namespace {

class TopKCodec : public Codec {
 public:
  TopKCodec(int64_t numel, int64_t k, int world) : numel_(numel), k_(k), world_(world) {}
  std::string name() const override { return "topk"; }
  int64_t payload_bytes() const override { return 8 * k_; }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    at::Tensor payload = at::empty({2 * k_}, at::kInt);
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor idx = topk_abs_indices(v, k_);
      at::Tensor values = v.index_select(0, idx);
      payload.narrow(0, 0, k_).copy_(idx);
      std::memcpy(payload.data_ptr<int32_t>() + k_, values.data_ptr<float>(), 4 * k_);
      if (local) local->zero_().index_copy_(0, idx.to(at::kLong), values);
    }
    at::Tensor all = at::empty({world_ * 2 * k_}, at::kInt);
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_();
    for (int r = 0; r < world_; ++r) {  // fixed rank order: identical sums on every rank
      at::Tensor part = all.narrow(0, r * 2 * k_, 2 * k_);
      at::Tensor idx = part.narrow(0, 0, k_);
      at::Tensor values = at::from_blob(part.data_ptr<int32_t>() + k_, {k_}, at::kFloat);
      mean.index_add_(0, idx, values);
    }
    mean.div_(world_);
    ctx.stats.add_all_gather(payload_bytes(), world_);
  }

 private:
  int64_t numel_, k_;
  int world_;
};

}  // namespace

std::unique_ptr<Codec> make_topk_codec(int64_t numel, int64_t k, int world) {
  return std::make_unique<TopKCodec>(numel, k, world);
}

}  // namespace condense
