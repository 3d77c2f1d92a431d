#include "compressors/kv_budget.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace condense {
namespace {

// Log-probabilities of the next tokens [B, T - 1, vocab] (float32) for each window.
std::vector<at::Tensor> log_probs(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows) {
  at::NoGradGuard no_grad;
  const at::Device device = model->lm_head_weight().device();
  std::vector<at::Tensor> out;
  for (const at::Tensor& w : windows)
    out.push_back(at::log_softmax(model->forward(w.to(device).narrow(1, 0, w.size(1) - 1)).to(at::kFloat), -1));
  return out;
}

// Mean over next-token positions of KL(reference || model): how far the model's predictions
// moved from the reference's (full rank). Never negative, unlike a difference of two
// cross-entropies, whose sampling noise would let the greedy drop units "for free".
double divergence(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows,
                  const std::vector<at::Tensor>& reference) {
  std::vector<at::Tensor> lp = log_probs(model, windows);
  double total = 0;
  int64_t count = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    total += (reference[i].exp() * (reference[i] - lp[i])).sum().item<double>();
    count += lp[i].size(0) * lp[i].size(1);
  }
  return std::max(0.0, total / static_cast<double>(count));  // float rounding can dip below
}

// Mean next-token cross-entropy of log-probabilities on the windows.
double cross_entropy(const std::vector<at::Tensor>& lp, const std::vector<at::Tensor>& windows) {
  double total = 0;
  int64_t count = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    at::Tensor targets = windows[i].narrow(1, 1, windows[i].size(1) - 1).to(lp[i].device()).unsqueeze(-1);
    total -= lp[i].gather(-1, targets).sum().item<double>();
    count += targets.numel();
  }
  return total / static_cast<double>(count);
}

}  // namespace

std::string KVBudgetPlan::describe() const {
  auto list = [](const std::vector<int64_t>& v) {
    return fmt::format("{}", fmt::join(v, ","));
  };
  return fmt::format("{:.1f}% of the full-rank cache; key ranks per layer [{}], value ranks [{}]; "
                     "calibration loss {:.4f} at full rank, predicted KL {:.4f}", 100 * share,
                     list(key_ranks), list(value_ranks), base_loss, predicted_kl);
}

double min_kv_budget(const KVProjection& projection) {
  return static_cast<double>(projection.nested_ranks().front()) / static_cast<double>(projection.head_dim());
}

KVBudgetPlan plan_kv_budget(LlamaForCausalLM& model, KVProjection& proj,
                            const std::vector<at::Tensor>& windows, double budget) {
  const double lowest = min_kv_budget(proj);
  CONDENSE_CHECK(std::isfinite(budget) && budget >= lowest && budget <= 1,
                 "--kv-budget {}: valid is {}..1 (the share of the full-rank KV cache; the "
                 "smallest rank of the nested set is {} of head_dim {})", budget, lowest,
                 proj.nested_ranks().front(), proj.head_dim());
  CONDENSE_CHECK(!windows.empty() && windows[0].dim() == 2 && windows[0].size(1) >= 2,
                 "--kv-budget: calibration needs windows of at least 2 tokens");
  CONDENSE_CHECK(model->kv_hook().get() == &proj, "plan_kv_budget: the projection is not the model's KV hook");
  const bool was_training = model->is_training();
  model->eval();
  const int64_t layers = model->config().num_hidden_layers, d = proj.head_dim();
  const std::vector<int64_t> ranks = proj.nested_ranks();  // ascending, ends at d
  const int64_t steps = static_cast<int64_t>(ranks.size());

  KVBudgetPlan plan;
  std::vector<int64_t> full(layers, d);
  proj.set_layer_ranks(full, full);
  const std::vector<at::Tensor> reference = log_probs(model, windows);
  plan.base_loss = cross_entropy(reference, windows);
  plan.nested = ranks;
  plan.increase.assign(2 * layers, std::vector<double>(steps, 0.0));
  auto& increase = plan.increase;
  for (int64_t u = 0; u < 2 * layers; ++u) {
    for (int64_t i = 0; i + 1 < steps; ++i) {
      std::vector<int64_t> keys = full, values = full;
      (u % 2 == 0 ? keys : values)[u / 2] = ranks[i];
      proj.set_layer_ranks(keys, values);
      increase[u][i] = divergence(model, windows, reference);
    }
    if ((u + 1) % 8 == 0 || u + 1 == 2 * layers)
      spdlog::info("kv budget: sensitivity of {} of {} layer keys/values measured", u + 1, 2 * layers);
  }

  std::vector<int64_t> pick(2 * layers, steps - 1);  // index into ranks per unit
  const double target = budget * static_cast<double>(2 * layers * d);
  double total = static_cast<double>(2 * layers * d);
  while (total > target + 1e-9) {
    int64_t best = -1;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int64_t u = 0; u < 2 * layers; ++u) {
      const int64_t i = pick[u];
      if (i == 0) continue;
      const double cost = (increase[u][i - 1] - increase[u][i]) / static_cast<double>(ranks[i] - ranks[i - 1]);
      if (cost < best_cost) {
        best_cost = cost;
        best = u;
      }
    }
    CONDENSE_CHECK(best >= 0, "kv budget: no unit left to shrink above the budget");  // budget >= lowest
    total -= static_cast<double>(ranks[pick[best]] - ranks[pick[best] - 1]);
    --pick[best];
  }
  plan.key_ranks.resize(layers);
  plan.value_ranks.resize(layers);
  for (int64_t l = 0; l < layers; ++l) {
    plan.key_ranks[l] = ranks[pick[2 * l]];
    plan.value_ranks[l] = ranks[pick[2 * l + 1]];
    plan.predicted_kl += increase[2 * l][pick[2 * l]] + increase[2 * l + 1][pick[2 * l + 1]];
  }
  plan.share = total / static_cast<double>(2 * layers * d);
  proj.set_layer_ranks(plan.key_ranks, plan.value_ranks);
  model->train(was_training);
  return plan;
}

}  // namespace condense
