#include "memory/wta_crs_linear.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>

#include "core/error.h"

namespace condense {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class WtaCrsLinear : public torch::autograd::Function<WtaCrsLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double ratio) {
    at::Tensor flat = x.reshape({-1, x.size(-1)});
    int64_t n = flat.size(0);
    int64_t k = std::max<int64_t>(1, std::min<int64_t>(n, static_cast<int64_t>(std::ceil(ratio * n))));
    at::Tensor y = at::linear(x, weight);
    WtaCrsSample s = wta_crs_sample(flat.detach().to(at::kFloat).norm(2, {1}), k);
    at::Tensor kept = flat.index_select(0, s.rows) * s.scales.to(flat.scalar_type()).unsqueeze(1);
    ctx->save_for_backward({weight, kept, s.rows});
    ctx->saved_data["in_shape"] = x.sizes().vec();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &weight = saved[0], &kept = saved[1], &rows = saved[2];
    at::Tensor dy = grads[0].reshape({-1, weight.size(0)});
    auto in_shape = ctx->saved_data["in_shape"].toIntVector();
    at::Tensor dx = at::matmul(dy, weight).view(in_shape);
    at::Tensor dw = at::matmul(dy.index_select(0, rows).t(), kept);
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

WtaCrsSample wta_crs_sample(const at::Tensor& row_norms, int64_t k) {
  int64_t n = row_norms.numel();
  CONDENSE_CHECK(k >= 1 && k <= n, "WTA-CRS keeps 1..{} rows, asked for {}", n, k);
  at::Tensor p = row_norms.to(at::kDouble);
  double total = p.sum().item<double>();
  if (!(total > 0)) p = at::ones_like(p), total = static_cast<double>(n);
  p = p / total;
  if (k == n) {
    return {at::arange(n, row_norms.options().dtype(at::kLong)),
            at::ones({n}, row_norms.options().dtype(at::kFloat))};
  }
  int64_t winners = (k + 1) / 2;
  int64_t draws = k - winners;
  at::Tensor order = std::get<1>(p.sort(/*dim=*/0, /*descending=*/true));
  at::Tensor win = order.narrow(0, 0, winners);
  at::Tensor rest = order.narrow(0, winners, n - winners);
  at::Tensor q = p.index_select(0, rest);
  double rest_mass = q.sum().item<double>();
  if (!(rest_mass > 0)) q = at::ones_like(q), rest_mass = static_cast<double>(q.numel());
  q = q / rest_mass;
  at::Tensor rows = win, scales = at::ones({winners}, at::kDouble);
  if (draws > 0) {
    at::Tensor pick = at::multinomial(q.to(at::kFloat), draws, /*replacement=*/true);
    at::Tensor drawn = rest.index_select(0, pick);
    at::Tensor w = 1.0 / (q.index_select(0, pick) * static_cast<double>(draws));
    rows = at::cat({win, drawn});
    scales = at::cat({scales, w});
  }
  return {rows.to(row_norms.device()), scales.to(at::kFloat).to(row_norms.device())};
}

at::Tensor wta_crs_linear(const at::Tensor& x, const at::Tensor& weight, double ratio) {
  CONDENSE_CHECK(ratio > 0 && ratio <= 1, "WTA-CRS ratio must be in (0, 1], got {}", ratio);
  return WtaCrsLinear::apply(x, weight, ratio);
}

}  // namespace condense
