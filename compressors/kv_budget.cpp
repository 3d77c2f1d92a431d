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

KVBudgetGranularity parse_kv_granularity(const std::string& text, const std::string& option) {
  if (text == "layer") return KVBudgetGranularity::kLayer;
  if (text == "head") return KVBudgetGranularity::kHead;
  fail("{} '{}': valid is layer (one key and one value rank per layer) or head (per KV head)",
       option, text);
}

std::string KVBudgetPlan::describe() const {
  // Per layer: one rank, or the heads' ranks joined by '/' where they differ.
  auto list = [](const std::vector<std::vector<int64_t>>& ranks) {
    std::vector<std::string> layers;
    for (const auto& heads : ranks) {
      const bool same = std::all_of(heads.begin(), heads.end(), [&](int64_t r) { return r == heads[0]; });
      layers.push_back(same ? std::to_string(heads[0]) : fmt::format("{}", fmt::join(heads, "/")));
    }
    return fmt::format("{}", fmt::join(layers, ","));
  };
  return fmt::format("{:.1f}% of the full-rank cache; key ranks per layer [{}], value ranks [{}] "
                     "({} granularity); calibration loss {:.4f} at full rank, predicted KL {:.4f}",
                     100 * share, list(key_ranks), list(value_ranks),
                     granularity == KVBudgetGranularity::kHead ? "head" : "layer", base_loss,
                     predicted_kl);
}

double min_kv_budget(const KVProjection& projection) {
  return static_cast<double>(projection.nested_ranks().front()) / static_cast<double>(projection.head_dim());
}

KVBudgetPlan plan_kv_budget(LlamaForCausalLM& model, KVProjection& proj,
                            const std::vector<at::Tensor>& windows, double budget,
                            KVBudgetGranularity granularity) {
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
  const int64_t kv_heads = proj.kv_heads();
  const bool per_head = granularity == KVBudgetGranularity::kHead;
  // A unit covers `width` KV heads of one layer's keys or values, from head `first`.
  const int64_t width = per_head ? 1 : kv_heads, per_part = kv_heads / width;
  const int64_t units = 2 * layers * per_part;
  auto layer_of = [&](int64_t u) { return u / per_part / 2; };
  auto is_value = [&](int64_t u) { return (u / per_part) % 2 == 1; };
  auto first_of = [&](int64_t u) { return (u % per_part) * width; };
  const std::vector<int64_t> ranks = proj.nested_ranks();  // ascending, ends at d
  const int64_t steps = static_cast<int64_t>(ranks.size());
  using Ranks = std::vector<std::vector<int64_t>>;
  const Ranks full(layers, std::vector<int64_t>(kv_heads, d));
  // Both parts' ranks with unit u at `rank` and every other unit at pick's.
  auto assign = [&](Ranks& keys, Ranks& values, int64_t u, int64_t rank) {
    Ranks& part = is_value(u) ? values : keys;
    for (int64_t h = first_of(u); h < first_of(u) + width; ++h) part[layer_of(u)][h] = rank;
  };

  KVBudgetPlan plan;
  plan.granularity = granularity;
  proj.set_head_ranks(full, full);
  const std::vector<at::Tensor> reference = log_probs(model, windows);
  plan.base_loss = cross_entropy(reference, windows);
  plan.nested = ranks;
  plan.increase.assign(units, std::vector<double>(steps, 0.0));
  auto& increase = plan.increase;
  for (int64_t u = 0; u < units; ++u) {
    for (int64_t i = 0; i + 1 < steps; ++i) {
      Ranks keys = full, values = full;
      assign(keys, values, u, ranks[i]);
      proj.set_head_ranks(keys, values);
      increase[u][i] = divergence(model, windows, reference);
    }
    if ((u + 1) % 8 == 0 || u + 1 == units)
      spdlog::info("kv budget: sensitivity of {} of {} units ({} granularity) measured", u + 1,
                   units, per_head ? "head" : "layer");
  }

  std::vector<int64_t> pick(units, steps - 1);  // index into ranks per unit
  const double full_total = static_cast<double>(2 * layers * kv_heads * d);
  const double target = budget * full_total;
  double total = full_total;
  while (total > target + 1e-9) {
    int64_t best = -1;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int64_t u = 0; u < units; ++u) {
      const int64_t i = pick[u];
      if (i == 0) continue;
      const double saved = static_cast<double>((ranks[i] - ranks[i - 1]) * width);
      const double cost = (increase[u][i - 1] - increase[u][i]) / saved;
      if (cost < best_cost) {
        best_cost = cost;
        best = u;
      }
    }
    CONDENSE_CHECK(best >= 0, "kv budget: no unit left to shrink above the budget");  // budget >= lowest
    total -= static_cast<double>((ranks[pick[best]] - ranks[pick[best] - 1]) * width);
    --pick[best];
  }
  plan.key_ranks = full;
  plan.value_ranks = full;
  for (int64_t u = 0; u < units; ++u) {
    assign(plan.key_ranks, plan.value_ranks, u, ranks[pick[u]]);
    plan.predicted_kl += increase[u][pick[u]];
  }
  plan.share = total / full_total;
  proj.set_head_ranks(plan.key_ranks, plan.value_ranks);
  model->train(was_training);
  return plan;
}

}  // namespace condense
