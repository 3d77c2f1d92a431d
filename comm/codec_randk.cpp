// Random-K: k coordinates drawn uniformly without replacement from a seed every rank derives
// identically for the step and bucket, so all ranks pick the same coordinates and the k values
// are summable by all-reduce (no indices on the wire). Unbiased form: C(v) = (numel/k) v_S;
// contractive form (for error feedback, which needs ||C(v) - v|| <= (1 - k/numel) ||v||): v_S.
#include <ATen/ATen.h>

#include "comm/codec_impl.h"
#include "core/random.h"

namespace condense {
namespace {

// k distinct indices of [0, n), ascending, from `seed` (Floyd's algorithm, Bentley 1987).
at::Tensor sample_indices(int64_t n, int64_t k, uint64_t seed) {
  std::vector<bool> taken(static_cast<size_t>(n), false);
  uint64_t state = seed;
  for (int64_t j = n - k; j < n; ++j) {
    int64_t t = static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(j) + 1));
    taken[taken[t] ? j : t] = true;
  }
  at::Tensor idx = at::empty({k}, at::kLong);
  int64_t* out = idx.data_ptr<int64_t>();
  for (int64_t i = 0, m = 0; i < n; ++i)
    if (taken[i]) out[m++] = i;
  return idx;
}

class RandKCodec : public Codec {
 public:
  RandKCodec(int64_t numel, int64_t k, bool unbiased)
      : numel_(numel), k_(k), scale_(unbiased ? double(numel) / double(k) : 1.0) {}
  std::string name() const override { return "randk"; }
  int64_t payload_bytes() const override { return 4 * k_; }
  bool summable() const override { return true; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    const int world = ctx.comm.size();
    at::Tensor idx, payload;
    {
      ScopedSeconds t(ctx.stats.compress_s);
      // Drawn on the host (Floyd's algorithm is sequential), then moved to v's device: the same
      // indices on every device.
      idx = sample_indices(numel_, k_, ctx.shared_seed);
      if (!v.is_cpu()) idx = idx.to(v.device());
      payload = v.index_select(0, idx);
      if (local) local->zero_().index_copy_(0, idx, payload.mul(scale_));
    }
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_reduce_sum(payload);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_().index_copy_(0, idx, payload.mul_(scale_ / world));
    ctx.stats.add_all_reduce(payload_bytes(), world);
  }

 private:
  int64_t numel_, k_;
  double scale_;
};

}  // namespace

std::unique_ptr<Codec> make_randk_codec(int64_t numel, int64_t k, bool unbiased) {
  return std::make_unique<RandKCodec>(numel, k, unbiased);
}

}  // namespace condense
