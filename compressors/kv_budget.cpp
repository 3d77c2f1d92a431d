#include "compressors/kv_budget.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace condense {
namespace {

// Mean next-token loss over the windows (each [B, T]), without gradients.
double calibration_loss(LlamaForCausalLM& model, const std::vector<at::Tensor>& windows) {
  at::NoGradGuard no_grad;
  const at::Device device = model->lm_head_weight().device();
  double total = 0;
  int64_t count = 0;
  for (const at::Tensor& w : windows) {
    const int64_t t = w.size(1);
    at::Tensor ids = w.to(device);
    at::Tensor logits = model->forward(ids.narrow(1, 0, t - 1));
    at::Tensor targets = ids.narrow(1, 1, t - 1).flatten();
    total += at::cross_entropy_loss(logits.flatten(0, 1).to(at::kFloat), targets, {},
                                    at::Reduction::Sum).item<double>();
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
                     "calibration loss {:.4f} at full rank, predicted +{:.4f}", 100 * share,
                     list(key_ranks), list(value_ranks), base_loss, predicted_increase);
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
  plan.base_loss = calibration_loss(model, windows);
  plan.nested = ranks;
  plan.increase.assign(2 * layers, std::vector<double>(steps, 0.0));
  auto& increase = plan.increase;
  for (int64_t u = 0; u < 2 * layers; ++u) {
    for (int64_t i = 0; i + 1 < steps; ++i) {
      std::vector<int64_t> keys = full, values = full;
      (u % 2 == 0 ? keys : values)[u / 2] = ranks[i];
      proj.set_layer_ranks(keys, values);
      increase[u][i] = calibration_loss(model, windows) - plan.base_loss;
    }
    if ((u + 1) % 8 == 0 || u + 1 == 2 * layers)
      spdlog::info("kv budget: sensitivity of {} of {} layer keys/values measured", u + 1, 2 * layers);
  }

  std::vector<int64_t> at(2 * layers, steps - 1);  // index into ranks per unit
  const double target = budget * static_cast<double>(2 * layers * d);
  double total = static_cast<double>(2 * layers * d);
  while (total > target + 1e-9) {
    int64_t best = -1;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int64_t u = 0; u < 2 * layers; ++u) {
      const int64_t i = at[u];
      if (i == 0) continue;
      const double cost = (increase[u][i - 1] - increase[u][i]) / static_cast<double>(ranks[i] - ranks[i - 1]);
      if (cost < best_cost) {
        best_cost = cost;
        best = u;
      }
    }
    CONDENSE_CHECK(best >= 0, "kv budget: no unit left to shrink above the budget");  // budget >= lowest
    total -= static_cast<double>(ranks[at[best]] - ranks[at[best] - 1]);
    --at[best];
  }
  plan.key_ranks.resize(layers);
  plan.value_ranks.resize(layers);
  for (int64_t l = 0; l < layers; ++l) {
    plan.key_ranks[l] = ranks[at[2 * l]];
    plan.value_ranks[l] = ranks[at[2 * l + 1]];
    plan.predicted_increase += increase[2 * l][at[2 * l]] + increase[2 * l + 1][at[2 * l + 1]];
  }
  plan.share = total / static_cast<double>(2 * layers * d);
  proj.set_layer_ranks(plan.key_ranks, plan.value_ranks);
  model->train(was_training);
  return plan;
}

}  // namespace condense
