// 1-bit Adam's compressed all-reduce (Tang et al., ICML 2021, section 4.1; DeepSpeed's
// compressed_allreduce) for the quantizing codecs (sign, qsgd), `comm.compression.collective:
// compressed_all_reduce`. The bucket is cut into one chunk per rank (ceil(numel / n) elements,
// the last padded with zeros):
//   1. worker: every chunk of v is encoded (the decoded chunks are `local`, C(v), which error
//      control outside subtracts: the worker error);
//   2. all-to-all: rank j receives chunk j of every rank;
//   3. server: rank j decodes them in rank order, averages, adds its server error e_j, encodes
//      u = avg + e_j, and keeps e_j = u - C(u) (codec state, checkpointed);
//   4. all-gather of the server payloads; every rank decodes all chunks in order, so the mean is
//      identical bit for bit everywhere.
// Each rank sends 2 (n - 1) chunk payloads: (n - 1)/n of one full-bucket payload twice, against
// n - 1 full payloads for the plain all-gather, so it pays from 3 ranks on. The mean is not the
// average of the ranks' C(v) but its compressed image; over steps, sum(mean) + e = sum(avg C(v))
// per chunk (the server's own error feedback).
#include <ATen/ATen.h>

#include "comm/codec_impl.h"
#include "comm/codec_kernels.h"
#include "core/error.h"

namespace condense {
namespace {

class CompressedAllReduceCodec : public Codec {
 public:
  CompressedAllReduceCodec(int64_t numel, int64_t levels, int64_t block, int world, at::Device device)
      : numel_(numel), world_(world), chunk_((numel + world - 1) / world),
        format_(chunk_, levels, block),
        stride_((format_.payload_bytes() + 3) / 4 * 4),  // 4-byte aligned scales in every slot
        server_error_(at::zeros({chunk_}, at::TensorOptions(device).dtype(at::kFloat))) {}

  std::string name() const override { return format_.levels ? "qsgd" : "sign"; }
  int64_t payload_bytes() const override { return (world_ + 1) * format_.payload_bytes(); }
  bool summable() const override { return false; }
  void plan(ExchangeStats& s, int world) const override { add(s, world); }
  std::vector<at::Tensor> state() override { return {server_error_}; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    CONDENSE_CHECK(ctx.comm.size() == world_, "compressed all-reduce built for {} ranks, run on {}",
                   world_, ctx.comm.size());
    const bool ops = use_tensor_ops(v, ctx);
    const int64_t bytes = format_.payload_bytes();
    const int64_t padded = chunk_ * world_;
    at::Tensor vp = padded == numel_ ? v : at::constant_pad_nd(v, {0, padded - numel_}, 0);
    at::Tensor send = at::zeros({world_ * stride_}, v.options().dtype(at::kByte));
    at::Tensor recv = at::empty_like(send);
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor decoded = local ? at::zeros({padded}, v.options()) : at::Tensor();
      for (int j = 0; j < world_; ++j) {
        at::Tensor slot = send.narrow(0, j * stride_, bytes);
        quantized_encode(format_, vp.narrow(0, j * chunk_, chunk_).contiguous(),
                         ctx.rank_seed + static_cast<uint64_t>(j), slot, ops);
        if (local) {
          at::Tensor part = decoded.narrow(0, j * chunk_, chunk_);
          quantized_decode_add(format_, slot, part, ops);
        }
      }
      if (local) local->copy_(decoded.narrow(0, 0, numel_));
    }
    at::Tensor server = at::zeros({stride_}, send.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_to_all(send, recv);
    }
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor u = at::zeros({chunk_}, v.options());
      for (int r = 0; r < world_; ++r)  // rank order
        quantized_decode_add(format_, recv.narrow(0, r * stride_, bytes), u, ops);
      div_exact_(u, world_);
      u.add_(server_error_);
      at::Tensor slot = server.narrow(0, 0, bytes);
      quantized_encode(format_, u, ctx.rank_seed ^ 0x5E5Eull, slot, ops);
      at::Tensor cu = at::zeros_like(u);
      quantized_decode_add(format_, slot, cu, ops);
      at::sub_out(server_error_, u, cu);
    }
    at::Tensor all = at::empty({world_ * stride_}, send.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(server, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    at::Tensor out = at::zeros({padded}, v.options());
    for (int j = 0; j < world_; ++j) {
      at::Tensor part = out.narrow(0, j * chunk_, chunk_);
      quantized_decode_add(format_, all.narrow(0, j * stride_, bytes), part, ops);
    }
    mean.copy_(out.narrow(0, 0, numel_));
    add(ctx.stats, world_);
  }

 private:
  // Two rounds of n - 1 chunk payloads leave this rank (the alignment padding is not counted:
  // a transport could drop it).
  void add(ExchangeStats& s, int world) const {
    s.add_all_to_all(format_.payload_bytes(), world);
    s.add_all_gather(format_.payload_bytes(), world);
  }

  int64_t numel_;
  int world_;
  int64_t chunk_;
  QuantizedFormat format_;
  int64_t stride_;
  at::Tensor server_error_;  // e_j of the chunk this rank serves
};

}  // namespace

std::unique_ptr<Codec> make_compressed_all_reduce_codec(const CompressionConfig& c,
                                                        const BucketLayout& layout, int world) {
  CONDENSE_CHECK(c.codec == "sign" || c.codec == "qsgd", "comm.compression.collective "
                 "compressed_all_reduce works with codec sign or qsgd, got '{}'", c.codec);
  return std::make_unique<CompressedAllReduceCodec>(layout.numel, c.codec == "qsgd" ? c.levels : 0,
                                                    c.block, world, layout.device);
}

}  // namespace condense
