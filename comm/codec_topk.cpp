// Top-K: the k largest magnitudes of the bucket (scope "bucket"), or of each parameter tensor
// in it with k proportional to its size (scope "tensor", layer-wise Top-K: no tensor is starved
// by another with larger gradients), sent as (int32 index, fp32 value) pairs through one
// all-gather; every rank sums the gathered pairs in rank order, so all get the same mean.
// Wire cost per rank is (n-1) * 8k bytes against 2 (n-1)/n * 4 numel for a dense ring
// all-reduce: Top-K only saves bytes when k / numel < 1/n (GradientCompression logs this).
#include <ATen/ATen.h>

#include <array>

#include "comm/codec_impl.h"
#include "comm/topk_select.h"

namespace condense {
namespace {

class TopKCodec : public Codec {
 public:
  // segments: (offset, numel, k) of each part selected independently, in offset order.
  TopKCodec(std::vector<std::array<int64_t, 3>> segments, int world)
      : segments_(std::move(segments)), world_(world) {
    for (const auto& s : segments_) k_ += s[2];
  }
  std::string name() const override { return "topk"; }
  int64_t payload_bytes() const override { return 8 * k_; }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    const bool ops = use_tensor_ops(v, ctx);
    // Payload: k int32 indices, then the k fp32 values' bits (a float view of int32 storage).
    at::Tensor payload = at::empty({2 * k_}, v.options().dtype(at::kInt));
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor idx = select(v, ops);
      at::Tensor values = v.index_select(0, idx);
      payload.narrow(0, 0, k_).copy_(idx);
      payload.narrow(0, k_, k_).view(at::kFloat).copy_(values);
      if (local) local->zero_().index_copy_(0, idx.to(at::kLong), values);
    }
    at::Tensor all = at::empty({world_ * 2 * k_}, payload.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_();
    // Fixed rank order: identical sums on every rank. Within one rank's payload the indices are
    // distinct, so each index_add_ adds one value to an element (deterministic on CUDA too).
    for (int r = 0; r < world_; ++r) {
      at::Tensor part = all.narrow(0, r * 2 * k_, 2 * k_);
      mean.index_add_(0, part.narrow(0, 0, k_), part.narrow(0, k_, k_).view(at::kFloat));
    }
    div_exact_(mean, world_);
    ctx.stats.add_all_gather(payload_bytes(), world_);
  }

 private:
  // Ascending int32 indices of each segment's top k (segments in offset order, so the whole
  // list ascends); the CPU selection or the tensor-op one, which return the same indices.
  at::Tensor select(const at::Tensor& v, bool ops) const {
    auto topk = [ops](const at::Tensor& x, int64_t k) {
      return ops ? topk_abs_indices_tensor_ops(x, k) : topk_abs_indices(x, k);
    };
    if (segments_.size() == 1) return topk(v, k_);
    std::vector<at::Tensor> parts;
    for (const auto& [offset, numel, k] : segments_)
      parts.push_back(topk(v.narrow(0, offset, numel), k).add_(static_cast<int32_t>(offset)));
    return at::cat(parts);
  }

  std::vector<std::array<int64_t, 3>> segments_;
  int64_t k_ = 0;
  int world_;
};

}  // namespace

std::unique_ptr<Codec> make_topk_codec(const CompressionConfig& c, const BucketLayout& layout, int world) {
  std::vector<std::array<int64_t, 3>> segments;
  if (c.scope == "tensor" && layout.shapes.size() > 1) {
    for (size_t j = 0; j < layout.shapes.size(); ++j) {
      int64_t end = j + 1 < layout.offsets.size() ? layout.offsets[j + 1] : layout.numel;
      int64_t numel = end - layout.offsets[j];
      segments.push_back({layout.offsets[j], numel, kept_elements(c, numel)});
    }
  } else {
    segments.push_back({0, layout.numel, kept_elements(c, layout.numel)});
  }
  return std::make_unique<TopKCodec>(std::move(segments), world);
}

}  // namespace condense
