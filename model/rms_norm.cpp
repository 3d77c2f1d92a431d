#include "model/rms_norm.h"

#include <ATen/ATen.h>

#include "model/fused_ops.h"
#include "model/rebuildable.h"

namespace condense {
namespace {

// x / rms(x) in fp32, cast back to x's dtype.
at::Tensor normalized(const at::Tensor& x, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (xf * at::rsqrt(variance + eps)).to(x.scalar_type());
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  RebuildSink* sink = rebuild_sink();
  if (fused_ops_apply(x) && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat) {
    // One pass, saving only x and a scale per row; its output (saved by the projections that
    // read it) rebuilds bitwise from x by the same kernel. Under bf16 autocast the output is
    // bf16, as the projections would cast it (the rebuild keeps that dtype outside autocast).
    const at::ScalarType dtype = cpu_autocast_bf16() ? at::kBFloat16 : at::kFloat;
    at::Tensor out = fused_rms_norm(x, weight, eps_, dtype);
    if (sink) {
      sink->mark(out, [xd = x.detach(), w = weight.detach(), eps = eps_, dtype] {
        return fused_rms_norm(xd, w, eps, dtype);
      });
    }
    return out;
  }
  at::Tensor xn = normalized(x, eps_);
  // Both the normalized input (saved for the weight's gradient) and the output (saved by the
  // projections that read it) are elementwise functions of x, which autograd keeps anyway.
  if (sink) sink->mark(xn, [xd = x.detach(), eps = eps_] { return normalized(xd, eps); });
  at::Tensor out = weight * xn;
  if (sink) {
    sink->mark(out, [xd = x.detach(), w = weight.detach(), eps = eps_] {
      return w * normalized(xd, eps);
    });
  }
  return out;
}

}  // namespace condense
