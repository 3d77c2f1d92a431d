// PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019): each matrix-shaped gradient M (m x n,
// parameters of 2+ dims flattened after the first) is approximated by one step of subspace
// iteration with a warm-started Q (n x r):
//   P = M Q ; all-reduce P ; P <- orthonormal columns of P ; Q = M^T P ; all-reduce Q / n
//   mean M ~= P Q^T            this rank's own C(M) = P (M^T P)^T (what error feedback subtracts)
// The all-reduced Q is kept as the next step's start (the same on every rank). Since P is
// shared, the mean of the ranks' C(M_r) is exactly P Q^T: the codec is linear given P.
// Parameters of one dimension, and matrices where r (m + n) >= m n, travel dense in the first
// all-reduce, so a bucket costs two all-reduces in all.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "comm/codec_impl.h"

namespace condense {
namespace {

struct Matrix {
  int64_t offset, rows, cols, rank;
  int64_t p_offset, q_offset;  // in the P and Q exchange buffers
  at::Tensor q;                // warm-start Q, cols x rank
};

struct Dense {
  int64_t offset, numel, buf_offset;  // in the bucket, in the P buffer (after all P's)
};

// Orthonormalizes the columns of p (rows x r) in place: modified Gram-Schmidt applied twice
// ("twice is enough", Giraud et al. 2005), so the result stays orthogonal to float precision
// even when columns are nearly dependent. A column that is (numerically) in the span of the
// previous ones is set to zero instead of normalizing rounding noise into a spurious
// direction; the caller re-seeds such columns of Q.
void orthonormalize(at::Tensor p) {
  for (int64_t j = 0; j < p.size(1); ++j) {
    at::Tensor col = p.select(1, j);
    const double before = col.norm().item<double>();
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < j; ++i) {
        at::Tensor prev = p.select(1, i);
        col.sub_(prev * at::dot(prev, col));
      }
    }
    const double norm = col.norm().item<double>();
    if (norm > 1e-5 * before && norm > 0) col.div_(norm);
    else col.zero_();
  }
}

// The same in tensor ops without reading norms back to the host (on CUDA each item() would
// wait for the stream): the keep-or-zero choice is a where(). Equal to orthonormalize up to
// rounding (the 1e-5 threshold is compared in float here, in double there).
void orthonormalize_tensor_ops(at::Tensor p) {
  for (int64_t j = 0; j < p.size(1); ++j) {
    at::Tensor col = p.select(1, j);
    const at::Tensor before = col.norm();
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < j; ++i) {
        at::Tensor prev = p.select(1, i);
        col.sub_(prev * at::dot(prev, col));
      }
    }
    const at::Tensor norm = col.norm();
    const at::Tensor keep = norm.gt(before * 1e-5).logical_and_(norm.gt(0));
    col.copy_(at::where(keep, col / norm, 0.0));
  }
}

class PowerSgdCodec : public Codec {
 public:
  // Q starts from a CPU generator and is then moved to the bucket's device: the same start on
  // every device.
  PowerSgdCodec(const BucketLayout& layout, int64_t rank, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (size_t j = 0; j < layout.shapes.size(); ++j) {
      const auto& shape = layout.shapes[j];
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      if (shape.size() >= 2) {
        int64_t rows = shape[0], cols = numel / rows;
        int64_t r = std::min({rank, rows, cols});
        if (r * (rows + cols) < rows * cols) {
          matrices_.push_back({layout.offsets[j], rows, cols, r, p_numel_, q_numel_,
                               at::randn({cols, r}, gen, at::kFloat).to(layout.device)});
          p_numel_ += rows * r;
          q_numel_ += cols * r;
          continue;
        }
      }
      dense_.push_back({layout.offsets[j], numel, 0});
    }
    for (Dense& d : dense_) {
      d.buf_offset = p_numel_;
      p_numel_ += d.numel;
    }
  }
  std::string name() const override { return "powersgd"; }
  int64_t payload_bytes() const override { return 4 * (p_numel_ + q_numel_); }
  bool summable() const override { return true; }

  std::vector<at::Tensor> state() override {
    std::vector<at::Tensor> out;
    for (auto& m : matrices_) out.push_back(m.q);
    return out;
  }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    const int world = ctx.comm.size();
    const bool ops = use_tensor_ops(v, ctx);
    at::Tensor pbuf = at::empty({p_numel_}, v.options());
    at::Tensor qbuf = at::empty({q_numel_}, v.options());
    auto mat = [&](const at::Tensor& flat, const Matrix& m) {
      return flat.narrow(0, m.offset, m.rows * m.cols).view({m.rows, m.cols});
    };
    auto pview = [&](const Matrix& m) { return pbuf.narrow(0, m.p_offset, m.rows * m.rank).view({m.rows, m.rank}); };
    auto qview = [&](const Matrix& m) { return qbuf.narrow(0, m.q_offset, m.cols * m.rank).view({m.cols, m.rank}); };
    {
      ScopedSeconds t(ctx.stats.compress_s);
      for (const Matrix& m : matrices_) {
        at::Tensor p = pview(m);
        at::mm_out(p, mat(v, m), m.q);
      }
      for (const Dense& d : dense_) pbuf.narrow(0, d.buf_offset, d.numel).copy_(v.narrow(0, d.offset, d.numel));
    }
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_reduce_sum(pbuf);
    }
    at::Tensor q_local;
    {
      ScopedSeconds t(ctx.stats.compress_s);
      for (const Matrix& m : matrices_) {
        at::Tensor p = pview(m), q = qview(m);
        if (ops) orthonormalize_tensor_ops(p);
        else orthonormalize(p);
        at::mm_out(q, mat(v, m).t(), p);
      }
      if (local) q_local = qbuf.clone();
    }
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_reduce_sum(qbuf);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    div_exact_(qbuf, world);
    for (size_t j = 0; j < matrices_.size(); ++j) {
      Matrix& m = matrices_[j];
      at::Tensor p = pview(m), q = qview(m), out = mat(mean, m);
      m.q.copy_(q);
      // A zero column of Q (the gradient had lower rank than r) would stay zero forever under
      // warm starts; re-seed it from the shared seed, identically on every rank (and device:
      // drawn on the CPU). On CUDA the test waits for the stream once per matrix.
      at::Tensor dead = m.q.abs().amax(0).eq(0);
      if (dead.any().item<bool>()) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(ctx.shared_seed + j);
        m.q.copy_(at::where(dead, at::randn(m.q.sizes(), gen, at::kFloat).to(m.q.device()), m.q));
      }
      at::mm_out(out, p, q.t());
      if (local) {
        at::Tensor ql = q_local.narrow(0, m.q_offset, m.cols * m.rank).view({m.cols, m.rank});
        at::Tensor lout = mat(*local, m);
        at::mm_out(lout, p, ql.t());
      }
    }
    for (const Dense& d : dense_) {
      at::Tensor part = mean.narrow(0, d.offset, d.numel);
      div_exact_(part.copy_(pbuf.narrow(0, d.buf_offset, d.numel)), world);
      if (local) local->narrow(0, d.offset, d.numel).copy_(v.narrow(0, d.offset, d.numel));
    }
    ctx.stats.add_all_reduce(4 * p_numel_, world);
    ctx.stats.add_all_reduce(4 * q_numel_, world);
  }

 private:
  std::vector<Matrix> matrices_;
  std::vector<Dense> dense_;
  int64_t p_numel_ = 0, q_numel_ = 0;
};

}  // namespace

std::unique_ptr<Codec> make_powersgd_codec(const BucketLayout& layout, int64_t rank, uint64_t seed) {
  return std::make_unique<PowerSgdCodec>(layout, rank, seed);
}

}  // namespace condense
