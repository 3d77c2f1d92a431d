// SparseLoCo's operator (Sarfi et al., "Communication-efficient language model training scales
// reliably and robustly", 2025; CCLoco): chunked Top-K with values quantized to a few bits.
//
// Chunks: a 2-D tensor whose sides are multiples of s = sqrt(chunk) is cut into s x s tiles
// (SparseLoCo's 64 x 64 blocks at the default chunk 4096); every other tensor is flattened and
// cut into runs of `chunk` elements (the last one zero-padded). Each chunk keeps its k largest
// magnitudes (k = config.k if set, else round(ratio * chunk), at least 1; ties to the lower
// index, on every device), so no tensor and no region of a tensor is starved by another. The kept values are quantized to `bits` bits on a
// grid of 2^bits levels spanning [-m, m], m = the chunk's largest kept magnitude (level j stands
// for m (2j / (2^bits - 1) - 1): the largest value is exact, and no level is spent on zero,
// which Top-K never keeps), rounded to the nearest level; the rounding error goes back to error
// feedback with the unsent values.
//
// bits = 32 sends the kept values as they are (fp32, no scales): DeMo's chunked Top-K.
//
// transform = dct (DeMo, Peng et al. 2024): every chunk, as a side x side square (tiles as they
// are, runs reshaped), goes through the orthonormal 2-D DCT-II, C X C^T, before Top-K, and the
// summed coefficients come back through C^T Y C. Smooth regions concentrate in few low-frequency
// coefficients, so k of them carry more of the chunk. The transform is orthonormal and linear:
// `local` is the decoded vector in the original coordinates, and error feedback works there.
//
// Payload per rank: one fp32 scale per chunk, k int16 in-chunk indices per chunk, the codes
// bit-packed (or the fp32 values); padded to 4 bytes. All-gather; every rank scatters the payloads in rank order
// into the same sum. Tensor ops only, so it runs on any device.
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "comm/codec_impl.h"
#include "core/error.h"

namespace condense {
namespace {

struct ChunkedTensor {
  int64_t offset, numel;
  int64_t rows = 0, cols = 0;  // tiled when rows > 0: a [rows, cols] matrix in side x side tiles
  int64_t chunks;              // chunks this tensor contributes
};

class SparseLoCoCodec : public Codec {
 public:
  SparseLoCoCodec(const CompressionConfig& c, const BucketLayout& layout, int world)
      : world_(world), numel_(layout.numel), chunk_(c.chunk), bits_(c.bits), dct_(c.transform == "dct") {
    CONDENSE_CHECK(chunk_ >= 1 && chunk_ <= 32768, "comm.compression.chunk must be in [1, 32768] "
                   "(in-chunk indices are int16), got {}", chunk_);
    CONDENSE_CHECK((bits_ >= 2 && bits_ <= 8) || bits_ == 32,
                   "comm.compression.bits must be in [2, 8] or 32 (fp32 values), got {}", bits_);
    k_ = c.k > 0 ? std::min(c.k, chunk_)
                 : std::clamp<int64_t>(std::llround(c.ratio * static_cast<double>(chunk_)), 1, chunk_);
    const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(chunk_))));
    side_ = side * side == chunk_ ? side : 0;
    CONDENSE_CHECK(c.transform == "none" || c.transform == "dct", "comm.compression.transform must "
                   "be none or dct, got '{}'", c.transform);
    CONDENSE_CHECK(!dct_ || side_ > 0, "comm.compression.transform dct needs a square chunk "
                   "(the 2-D DCT of side x side), got chunk {}", chunk_);
    if (dct_) basis_ = dct_basis(side_).to(layout.device);
    for (const TensorSegment& s : tensor_segments(layout)) {
      ChunkedTensor t{s.offset, s.numel};
      if (side_ > 0 && s.shape.size() == 2 && s.shape[0] % side_ == 0 && s.shape[1] % side_ == 0) {
        t.rows = s.shape[0];
        t.cols = s.shape[1];
      }
      t.chunks = (s.numel + chunk_ - 1) / chunk_;  // tiles: exactly numel / chunk
      tensors_.push_back(t);
      chunks_ += t.chunks;
    }
    scale_bytes_ = raw() ? 0 : 4 * chunks_;
    index_bytes_ = 2 * chunks_ * k_;
    code_bytes_ = (chunks_ * k_ * bits_ + 7) / 8;  // 32 bits: 4 bytes per value
    payload_ = (scale_bytes_ + index_bytes_ + code_bytes_ + 3) / 4 * 4;
  }
  std::string name() const override { return "sparseloco"; }
  int64_t payload_bytes() const override { return payload_; }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    CONDENSE_CHECK(v.numel() == numel_, "sparseloco codec: bucket of {} elements, built for {}",
                   v.numel(), numel_);
    const double top = static_cast<double>((int64_t{1} << bits_) - 1);  // highest level
    at::Tensor payload = at::zeros({payload_}, v.options().dtype(at::kByte));
    {
      ScopedSeconds t(ctx.stats.compress_s);
      at::Tensor m = to_chunks(v);                                  // [chunks, chunk]
      if (dct_) m = transform(m, false);
      at::Tensor idx = select(m);                                   // [chunks, k]
      at::Tensor vals = m.gather(1, idx);
      payload.narrow(0, scale_bytes_, index_bytes_).view(at::kShort).copy_(idx.view({-1}));
      if (raw()) {
        // Offset 4 * chunks * k / 2: 4-byte aligned only when chunks * k is even; copy bytes.
        payload.narrow(0, index_bytes_, code_bytes_).copy_(vals.reshape({-1}).view(at::kByte));
        if (local) from_chunks(back(at::zeros_like(m).scatter_(1, idx, vals)), *local);
      } else {
        at::Tensor scale = vals.abs().amax(1, true);                  // [chunks, 1]
        at::Tensor safe = at::where(scale > 0, scale, at::ones_like(scale));
        at::Tensor code = vals.div(safe).add_(1.0).mul_(top / 2).round_().clamp_(0, top);
        payload.narrow(0, 0, scale_bytes_).view(at::kFloat).copy_(scale.view({-1}));
        payload.narrow(0, scale_bytes_ + index_bytes_, code_bytes_).copy_(pack(code.view({-1})));
        if (local) {
          at::Tensor dense = at::zeros_like(m).scatter_(1, idx, dequantize(code, scale, top));
          from_chunks(back(dense), *local);
        }
      }
    }
    at::Tensor all = at::empty({world_ * payload_}, payload.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    at::Tensor sum = at::zeros({chunks_, chunk_}, v.options());
    for (int r = 0; r < world_; ++r) {  // fixed rank order: the same sum on every rank
      at::Tensor part = all.narrow(0, r * payload_, payload_);
      at::Tensor idx = part.narrow(0, scale_bytes_, index_bytes_).view(at::kShort)
                           .to(at::kLong).view({chunks_, k_});
      at::Tensor codes = part.narrow(0, scale_bytes_ + index_bytes_, code_bytes_);
      at::Tensor values;
      if (raw()) {
        values = codes.clone().view(at::kFloat).view({chunks_, k_});  // clone: 4-byte aligned
      } else {
        at::Tensor scale = part.narrow(0, 0, scale_bytes_).view(at::kFloat).view({chunks_, 1});
        values = dequantize(unpack(codes).to(v.scalar_type()).view({chunks_, k_}), scale, top);
      }
      // Indices are distinct within a chunk, so each element receives one value per rank.
      sum.scatter_add_(1, idx, values);
    }
    from_chunks(back(sum), mean);
    div_exact_(mean, world_);
    ctx.stats.add_all_gather(payload_, world_);
  }

 private:
  bool raw() const { return bits_ == 32; }

  // The orthonormal DCT-II matrix of size n: C[k][j] = a_k cos(pi (2j + 1) k / (2n)), a_0 =
  // sqrt(1/n), a_k = sqrt(2/n); computed in double.
  static at::Tensor dct_basis(int64_t n) {
    at::Tensor k = at::arange(n, at::kDouble).unsqueeze(1), j = at::arange(n, at::kDouble).unsqueeze(0);
    at::Tensor c = at::cos(k * (2 * j + 1) * (M_PI / (2.0 * static_cast<double>(n))));
    c.mul_(std::sqrt(2.0 / static_cast<double>(n)));
    c[0].mul_(std::sqrt(0.5));
    return c.to(at::kFloat);
  }

  // [chunks, chunk] -> the same with every chunk's side x side square transformed: C X C^T, or
  // with inverse, C^T X C.
  at::Tensor transform(const at::Tensor& m, bool inverse) const {
    at::Tensor x = m.view({-1, side_, side_});
    const at::Tensor& c = basis_;
    at::Tensor ct = c.t();
    at::Tensor y = inverse ? at::matmul(at::matmul(ct, x), c) : at::matmul(at::matmul(c, x), ct);
    return y.reshape({-1, chunk_});
  }
  at::Tensor back(const at::Tensor& m) const { return dct_ ? transform(m, true) : m; }

  // The k largest magnitudes of every row of m, ties to the lower index: the same choice on
  // every device (at::topk breaks ties one way on the CPU and another on CUDA, so a padded
  // run's zeros, or values of equal magnitude, would make a CUDA run keep other coordinates than
  // a CPU run). NaN is the largest magnitude, as in topk. topk picks the rows' k; a row whose
  // largest left-out magnitude reaches its k-th kept one t had ties at t, and only those rows
  // (usually none, or a few padded runs) are redone by keep_first_ties. One host sync (the rows'
  // count). Indices in no particular order within a row.
  at::Tensor select(const at::Tensor& m) const {
    at::Tensor a = m.abs();
    auto [kept, idx] = a.topk(k_, 1, true, false);
    at::Tensor kept_nan = kept.isnan();  // t is NaN only when all k kept are
    at::Tensor t = at::where(kept_nan.all(1, true), std::numeric_limits<float>::quiet_NaN(),
                             kept.masked_fill(kept_nan, std::numeric_limits<float>::infinity()).amin(1, true));
    at::Tensor rest = a.scatter_(1, idx, -1.0).amax(1, true);  // NaN if a NaN was left out
    at::Tensor rows = rest.ge(t).logical_or_(rest.isnan()).view(-1).nonzero().view(-1);
    if (rows.numel() > 0)
      idx.index_copy_(0, rows, keep_first_ties(m.index_select(0, rows).abs(), t.index_select(0, rows)));
    return idx;
  }

  // For rows of magnitudes a whose k-th largest is t ([rows, 1]): what is above t (NaN above
  // everything) and the first of the ties, k per row, lowest index first. The k positions get
  // distinct positive keys (chunk - j), so a topk of the keys returns exactly them.
  at::Tensor keep_first_ties(const at::Tensor& a, const at::Tensor& t) const {
    at::Tensor t_nan = t.isnan(), a_nan = a.isnan();
    at::Tensor above = at::where(t_nan, at::zeros_like(a_nan), a.gt(t).logical_or_(a_nan));
    at::Tensor tied = at::where(t_nan, a_nan, a.eq(t));
    at::Tensor need = above.sum(1, true).neg_().add_(k_);  // ties each row keeps
    at::Tensor keep = above.logical_or_(tied.logical_and_(tied.cumsum(1).le(need)));
    at::Tensor key = keep.to(at::kInt).mul_(at::arange(chunk_, 0, -1, a.options().dtype(at::kInt)));
    return std::get<1>(key.topk(k_, 1, true, true));
  }

  // (2j - L) / L: the ends exactly +-1. The division by L is a true one on every device
  // (div_exact_: CUDA multiplies by the reciprocal of a host scalar, which rounds otherwise).
  static at::Tensor dequantize(const at::Tensor& code, const at::Tensor& scale, double top) {
    at::Tensor x = code.mul(2.0).sub_(top);
    return div_exact_(x, static_cast<int64_t>(top)).mul_(scale);
  }

  // The bucket as [chunks, chunk]: tiles of tiled tensors, zero-padded runs of the others.
  at::Tensor to_chunks(const at::Tensor& v) const {
    std::vector<at::Tensor> parts;
    for (const ChunkedTensor& t : tensors_) {
      at::Tensor x = v.narrow(0, t.offset, t.numel);
      if (t.rows > 0) {
        parts.push_back(x.view({t.rows / side_, side_, t.cols / side_, side_})
                            .permute({0, 2, 1, 3}).reshape({t.chunks, chunk_}));
      } else {
        at::Tensor padded = at::zeros({t.chunks * chunk_}, v.options());
        padded.narrow(0, 0, t.numel).copy_(x);
        parts.push_back(padded.view({t.chunks, chunk_}));
      }
    }
    return at::cat(parts);
  }

  // Inverse of to_chunks: writes the bucket's elements of m into out.
  void from_chunks(const at::Tensor& m, at::Tensor& out) const {
    int64_t row = 0;
    for (const ChunkedTensor& t : tensors_) {
      at::Tensor c = m.narrow(0, row, t.chunks);
      at::Tensor dst = out.narrow(0, t.offset, t.numel);
      if (t.rows > 0) {
        dst.view({t.rows / side_, side_, t.cols / side_, side_})
            .copy_(c.view({t.rows / side_, t.cols / side_, side_, side_}).permute({0, 2, 1, 3}));
      } else {
        dst.copy_(c.reshape({-1}).narrow(0, 0, t.numel));
      }
      row += t.chunks;
    }
  }

  // Codes (integral floats < 2^bits) into a little-endian bit stream of code_bytes_ bytes.
  at::Tensor pack(const at::Tensor& code) const {
    auto opt = code.options().dtype(at::kLong);
    at::Tensor bits = code.to(at::kLong).unsqueeze(1).bitwise_right_shift(at::arange(bits_, opt))
                          .bitwise_and_(1).reshape({-1});
    at::Tensor padded = at::zeros({code_bytes_ * 8}, opt);
    padded.narrow(0, 0, bits.numel()).copy_(bits);
    at::Tensor weights = at::ones({8}, opt).bitwise_left_shift_(at::arange(8, opt));
    return padded.view({code_bytes_, 8}).mul_(weights).sum(1).to(at::kByte);
  }

  at::Tensor unpack(const at::Tensor& bytes) const {
    auto opt = bytes.options().dtype(at::kLong);
    at::Tensor bits = bytes.to(at::kLong).unsqueeze(1).bitwise_right_shift(at::arange(8, opt))
                          .bitwise_and_(1).reshape({-1}).narrow(0, 0, chunks_ * k_ * bits_);
    at::Tensor weights = at::ones({bits_}, opt).bitwise_left_shift_(at::arange(bits_, opt));
    return bits.view({chunks_ * k_, bits_}).mul_(weights).sum(1);
  }

  int world_;
  int64_t numel_, chunk_, bits_, k_ = 1, side_ = 0, chunks_ = 0;
  bool dct_;
  at::Tensor basis_;  // dct: the side x side DCT-II matrix
  std::vector<ChunkedTensor> tensors_;
  int64_t scale_bytes_ = 0, index_bytes_ = 0, code_bytes_ = 0, payload_ = 0;
};

}  // namespace

std::unique_ptr<Codec> make_sparseloco_codec(const CompressionConfig& config,
                                             const BucketLayout& layout, int world) {
  return std::make_unique<SparseLoCoCodec>(config, layout, world);
}

}  // namespace condense
