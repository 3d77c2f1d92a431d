#include "memory/chunked_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <limits>

#include "core/error.h"
#include "model/softcap.h"

namespace condense {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& targets, int64_t tc,
                            int64_t vc, double filter_eps, int64_t ignore_index, double cap) {
    int64_t n = hidden.size(0), v = weight.size(0);
    at::Tensor valid = targets.ne(ignore_index);
    at::Tensor safe_targets = targets.masked_fill(valid.logical_not(), 0);
    at::Tensor lse = at::empty({n}, hidden.options().dtype(at::kFloat));
    for (int64_t r0 = 0; r0 < n; r0 += tc) {
      int64_t rows = std::min(tc, n - r0);
      at::Tensor h = hidden.narrow(0, r0, rows);
      at::Tensor m = at::full({rows}, -std::numeric_limits<float>::infinity(), lse.options());
      at::Tensor s = at::zeros({rows}, lse.options());
      for (int64_t v0 = 0; v0 < v; v0 += vc) {
        at::Tensor logits = at::matmul(h, weight.narrow(0, v0, std::min(vc, v - v0)).t()).to(at::kFloat);
        softcap_(logits, cap);
        at::Tensor new_m = at::maximum(m, std::get<0>(logits.max(1)));
        s = s * (m - new_m).exp() + (logits - new_m.unsqueeze(1)).exp().sum(1);
        m = new_m;
      }
      lse.narrow(0, r0, rows).copy_(m + s.log());
    }
    // Target logits as row dot products: no [N, V] tensor needed. Summed in float and rounded
    // to the tiles' dtype, as the matmul's float accumulation is, so that the target's logit is
    // the one the log-sum-exp saw.
    at::Tensor target_logit = (hidden.to(at::kFloat) * weight.index_select(0, safe_targets).to(at::kFloat))
                                  .sum(1)
                                  .to(hidden.scalar_type())
                                  .to(at::kFloat);
    softcap_(target_logit, cap);
    at::Tensor count = valid.sum().to(at::kFloat).clamp_min(1);
    at::Tensor loss = ((lse - target_logit) * valid).sum() / count;
    ctx->save_for_backward({hidden, weight, safe_targets, valid, lse, count, target_logit});
    ctx->saved_data["tc"] = tc;
    ctx->saved_data["vc"] = vc;
    ctx->saved_data["eps"] = filter_eps;
    ctx->saved_data["cap"] = cap;
    return hidden.scalar_type() == at::kDouble ? loss.to(at::kDouble) : loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &targets = saved[2],
                     &valid = saved[3], &lse = saved[4], &count = saved[5], &target_logit = saved[6];
    int64_t tc = ctx->saved_data["tc"].toInt(), vc = ctx->saved_data["vc"].toInt();
    double eps = ctx->saved_data["eps"].toDouble(), cap = ctx->saved_data["cap"].toDouble();
    int64_t n = hidden.size(0), v = weight.size(0);
    // d loss / d logit[i, j] = scale_i * (softmax[i, j] - [j == target_i]), times the cap's slope
    // at logit[i, j] when soft-capped (model/softcap.h).
    at::Tensor scale = (grads[0].to(at::kFloat) / count) * valid.to(at::kFloat);  // [N]
    at::Tensor dh = at::zeros(hidden.sizes(), hidden.options().dtype(at::kFloat));
    at::Tensor dw = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
    at::Tensor hf = hidden.to(at::kFloat), wf = weight.to(at::kFloat);
    // The one-hot target terms, exact and outside the tiles (so filtering never drops them).
    at::Tensor st = (cap > 0 ? scale * softcap_slope(target_logit, cap) : scale).unsqueeze(1);
    dh.sub_(wf.index_select(0, targets) * st);
    dw.index_add_(0, targets, hf * -st);
    for (int64_t r0 = 0; r0 < n; r0 += tc) {
      int64_t rows = std::min(tc, n - r0);
      at::Tensor h = hidden.narrow(0, r0, rows);
      at::Tensor hr = hf.narrow(0, r0, rows);
      at::Tensor l = lse.narrow(0, r0, rows).unsqueeze(1);
      at::Tensor sc = scale.narrow(0, r0, rows).unsqueeze(1);
      at::Tensor dh_rows = dh.narrow(0, r0, rows);
      for (int64_t v0 = 0; v0 < v; v0 += vc) {
        int64_t cols = std::min(vc, v - v0);
        at::Tensor w = weight.narrow(0, v0, cols);
        at::Tensor y = at::matmul(h, w.t()).to(at::kFloat);
        softcap_(y, cap);
        at::Tensor p = (y - l).exp_();
        if (eps > 0 && p.max().item<double>() < eps) continue;
        p.mul_(sc);
        if (cap > 0) p.mul_(softcap_slope(y, cap));
        dh_rows.add_(at::matmul(p, wf.narrow(0, v0, cols)));
        dw.narrow(0, v0, cols).add_(at::matmul(p.t(), hr));
      }
    }
    return {dh.to(hidden.scalar_type()), dw.to(weight.scalar_type()), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::ScalarType lm_head_compute_type(const at::Tensor& hidden, const at::Tensor& weight) {
  const at::ScalarType promoted = at::promote_types(hidden.scalar_type(), weight.scalar_type());
  const at::DeviceType device = hidden.device().type();
  if (promoted != at::kDouble && at::autocast::is_autocast_enabled(device))
    return at::autocast::get_autocast_dtype(device);
  return promoted;
}

at::Tensor chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                 const at::Tensor& targets, const ChunkedLossOptions& o) {
  CONDENSE_CHECK(o.token_chunk > 0 && o.vocab_chunk > 0,
                 "chunked loss tiles must be positive, got {} x {}", o.token_chunk, o.vocab_chunk);
  at::Tensor h = hidden.reshape({-1, hidden.size(-1)});
  at::Tensor t = targets.reshape({-1});
  CONDENSE_CHECK(weight.dim() == 2 && weight.size(1) == h.size(1) && t.size(0) == h.size(0),
                 "chunked_cross_entropy: hidden [N, {}], weight [V, {}] and targets [N] do not match",
                 h.size(1), weight.dim() == 2 ? weight.size(1) : -1);
  const at::ScalarType compute = lm_head_compute_type(h, weight);
  return ChunkedCrossEntropy::apply(h.to(compute), weight.to(compute), t, o.token_chunk,
                                    o.vocab_chunk, o.filter_eps, o.ignore_index, o.softcap);
}

}  // namespace condense
