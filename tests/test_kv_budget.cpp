// Tests for per-layer KV projection ranks under a budget (compressors/kv_budget.h) on a tiny
// random model with PCA projections:
//   - the sensitivity table holds KL(full rank || the unit alone at each nested rank),
//     recomputed here independently for every unit and rank, and is never negative;
//   - the plan's ranks are the documented greedy rule's, replayed here from the table;
//   - the plan stays within the budget and within one rank step of it, uses nested ranks,
//     predicts the sum of its units' increases, and leaves the projection at its ranks (the
//     cache's bytes per token follow them);
//   - budget 1 keeps full rank, the smallest budget gives d/4 everywhere, and a budget below
//     it or above 1 is refused naming --kv-budget and the valid range;
//   - per KV head: one unit per head's keys or values, its sensitivity recomputed here with
//     only that head reduced; the plan meets the budget in coordinates the cache really holds
//     (ragged heads packed) and predicts the sum of its units' divergences; a bad granularity
//     is refused naming the option.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>

#include "compressors/kv_budget.h"
#include "compressors/kv_project.h"
#include "core/error.h"
#include "model/kv_cache.h"
#include "tests/test_support.h"

namespace condense {
namespace {

// Next-token log-probabilities [windows, B, T - 1, V] in double.
at::Tensor log_probs_of(LlamaForCausalLM& m, const std::vector<at::Tensor>& win) {
  at::NoGradGuard g;
  std::vector<at::Tensor> out;
  for (const at::Tensor& w : win) out.push_back(at::log_softmax(m->forward(w.narrow(1, 0, 15)).to(at::kDouble), -1));
  return at::stack(out);
}

double kl(const at::Tensor& ref, const at::Tensor& lp) {
  return (ref.exp() * (ref - lp)).sum(-1).mean().item<double>();
}

double loss_of(const at::Tensor& lp, const std::vector<at::Tensor>& win) {
  at::Tensor t = at::stack(win).narrow(2, 1, 15).unsqueeze(-1);
  return -lp.gather(-1, t).mean().item<double>();
}

struct Fixture {
  LlamaForCausalLM m{nullptr};
  std::shared_ptr<KVProjection> proj;
  Fixture() {
    at::manual_seed(21);
    m = LlamaForCausalLM(test::tiny_llama(4, 2));
    m->eval();
    proj = KVProjection::from_calibration(m, test::token_windows(2, 5));
    m->set_kv_hook(proj);
  }
};

TEST(KVBudget, SensitivityIsEachUnitsLossIncrease) {
  Fixture f;
  std::vector<at::Tensor> win = test::token_windows(2, 6);
  KVBudgetPlan plan = plan_kv_budget(f.m, *f.proj, win, 0.5);
  ASSERT_EQ(plan.nested, (std::vector<int64_t>{2, 4, 6, 8}));
  ASSERT_EQ(plan.increase.size(), 4u);
  f.proj->set_rank(8, 8);
  at::Tensor ref = log_probs_of(f.m, win);
  EXPECT_NEAR(plan.base_loss, loss_of(ref, win), 1e-5);
  // Every unit (2l: keys of layer l, 2l + 1: its values) alone at every smaller nested rank.
  for (int64_t u = 0; u < 4; ++u) {
    for (int64_t i = 0; i < 3; ++i) {
      std::vector<int64_t> keys{8, 8}, values{8, 8};
      (u % 2 == 0 ? keys : values)[u / 2] = plan.nested[i];
      f.proj->set_layer_ranks(keys, values);
      EXPECT_NEAR(plan.increase[u][i], kl(ref, log_probs_of(f.m, win)), 1e-6) << u << " " << i;
    }
  }
  for (const auto& row : plan.increase) {
    EXPECT_EQ(row.back(), 0.0);
    for (double x : row) EXPECT_GE(x, 0.0);
  }
}

// The allocation rule of kv_budget.h, written again from its description: from full rank, step
// down the unit with the least divergence added per cached coordinate saved (the first such
// unit on a tie) until the cached coordinates fit the budget. Returns each unit's nested index.
std::vector<int64_t> replay_greedy(const KVBudgetPlan& plan, int64_t width, double budget) {
  const int64_t units = static_cast<int64_t>(plan.increase.size());
  const int64_t top = static_cast<int64_t>(plan.nested.size()) - 1;
  std::vector<int64_t> pick(units, top);
  const double full = static_cast<double>(units * width * plan.nested.back());
  double total = full;
  while (total > budget * full + 1e-9) {
    int64_t best = -1;
    double best_cost = 0;
    for (int64_t u = 0; u < units; ++u) {
      const int64_t i = pick[u];
      if (i == 0) continue;
      const double saved = static_cast<double>((plan.nested[i] - plan.nested[i - 1]) * width);
      const double cost = (plan.increase[u][i - 1] - plan.increase[u][i]) / saved;
      if (best < 0 || cost < best_cost) best = u, best_cost = cost;
    }
    total -= static_cast<double>((plan.nested[pick[best]] - plan.nested[pick[best] - 1]) * width);
    --pick[best];
  }
  return pick;
}

TEST(KVBudget, PlanMeetsTheBudgetAndSetsTheRanks) {
  for (double budget : {0.25, 0.4, 0.5, 0.8, 1.0}) {
    Fixture f;
    KVBudgetPlan plan = plan_kv_budget(f.m, *f.proj, test::token_windows(2, 6), budget);
    double cached = 0, predicted = 0;
    for (int64_t l = 0; l < 2; ++l) {
      for (int64_t part = 0; part < 2; ++part) {
        const std::vector<int64_t>& heads = part == 0 ? plan.key_ranks[l] : plan.value_ranks[l];
        ASSERT_EQ(heads.size(), 2u);
        ASSERT_EQ(heads[0], heads[1]);  // layer granularity: every KV head of a layer alike
        const int64_t r = heads[0];
        auto it = std::find(plan.nested.begin(), plan.nested.end(), r);
        ASSERT_NE(it, plan.nested.end()) << r;
        predicted += plan.increase[2 * l + part][it - plan.nested.begin()];
        cached += static_cast<double>(r);
      }
    }
    EXPECT_NEAR(plan.share, cached / 32.0, 1e-12);
    EXPECT_LE(plan.share, budget + 1e-12) << budget;
    EXPECT_GT(plan.share, budget - 2.0 / 32.0) << budget;  // within one step of 2 coordinates
    EXPECT_NEAR(plan.predicted_kl, predicted, 1e-12);
    // Which units shrink is the documented rule's choice (a planner shrinking the most
    // sensitive unit first meets the budget just as well).
    const std::vector<int64_t> pick = replay_greedy(plan, 2, budget);
    for (int64_t u = 0; u < 4; ++u) {
      const int64_t r = (u % 2 == 0 ? plan.key_ranks : plan.value_ranks)[u / 2][0];
      EXPECT_EQ(r, plan.nested[pick[u]]) << "budget " << budget << " unit " << u;
    }
    using Ranks = std::vector<std::vector<int64_t>>;
    if (budget == 1.0) EXPECT_EQ(plan.key_ranks, (Ranks{{8, 8}, {8, 8}}));
    if (budget == 0.25) EXPECT_EQ(plan.value_ranks, (Ranks{{2, 2}, {2, 2}}));
    // The projection now caches the planned widths: 2 KV heads x (key + value rank) floats.
    at::NoGradGuard g;
    KVCache cache(f.m->config(), 1, 4, at::TensorOptions().dtype(at::kFloat));
    f.m->hidden({at::randint(0, 61, {1, 4}, at::kLong), {}, &cache});
    EXPECT_EQ(cache.bytes_per_token(), 2 * cached * 4) << budget;
  }
}

TEST(KVBudget, BudgetsOutsideTheNestedRangeAreRefused) {
  Fixture f;
  EXPECT_DOUBLE_EQ(min_kv_budget(*f.proj), 0.25);
  for (double bad : {0.2, 1.5, 0.0}) {
    try {
      plan_kv_budget(f.m, *f.proj, test::token_windows(2, 6), bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("valid is 0.25..1"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--kv-budget"), std::string::npos) << e.what();
    }
  }
}

TEST(KVBudget, PerHeadUnitsMeetTheBudgetInPackedCoordinates) {
  Fixture f;
  std::vector<at::Tensor> win = test::token_windows(2, 6);
  using Ranks = std::vector<std::vector<int64_t>>;
  bool ragged = false;  // some plan keeps a layer's KV heads at different ranks
  for (double budget : {0.3, 0.5, 0.7}) {
    KVBudgetPlan plan = plan_kv_budget(f.m, *f.proj, win, budget, KVBudgetGranularity::kHead);
    ASSERT_EQ(plan.increase.size(), 8u);  // 2 layers x {keys, values} x 2 KV heads
    // Unit (2l + part) x 2 + h. Layer 1's values of KV head 0 (unit 6) at rank 4, alone.
    f.proj->set_rank(8, 8);
    at::Tensor ref = log_probs_of(f.m, win);
    f.proj->set_head_ranks(Ranks{{8, 8}, {8, 8}}, Ranks{{8, 8}, {4, 8}});
    EXPECT_NEAR(plan.increase[6][1], kl(ref, log_probs_of(f.m, win)), 1e-6);
    f.proj->set_head_ranks(Ranks{{8, 2}, {8, 8}}, Ranks{{8, 8}, {8, 8}});  // unit 1 at rank 2
    EXPECT_NEAR(plan.increase[1][0], kl(ref, log_probs_of(f.m, win)), 1e-6);

    f.proj->set_head_ranks(plan.key_ranks, plan.value_ranks);
    double cached = 0, predicted = 0;
    for (int64_t l = 0; l < 2; ++l)
      for (int64_t part = 0; part < 2; ++part)
        for (int64_t h = 0; h < 2; ++h) {
          const int64_t r = (part == 0 ? plan.key_ranks : plan.value_ranks)[l][h];
          auto it = std::find(plan.nested.begin(), plan.nested.end(), r);
          ASSERT_NE(it, plan.nested.end()) << r;
          predicted += plan.increase[(2 * l + part) * 2 + h][it - plan.nested.begin()];
          cached += static_cast<double>(r);
          if (h == 1) ragged = ragged || r != (part == 0 ? plan.key_ranks : plan.value_ranks)[l][0];
        }
    EXPECT_NEAR(plan.share, cached / 64.0, 1e-12);  // of 2 x 2 x 2 x 8 coordinates
    EXPECT_LE(plan.share, budget + 1e-12) << budget;
    EXPECT_GT(plan.share, budget - 2.0 / 64.0) << budget;
    EXPECT_NEAR(plan.predicted_kl, predicted, 1e-12);
    const std::vector<int64_t> pick = replay_greedy(plan, 1, budget);
    for (int64_t u = 0; u < 8; ++u) {
      const int64_t r = ((u / 2) % 2 == 0 ? plan.key_ranks : plan.value_ranks)[u / 4][u % 2];
      EXPECT_EQ(r, plan.nested[pick[u]]) << "budget " << budget << " unit " << u;
    }
    EXPECT_NE(plan.describe().find("head granularity"), std::string::npos) << plan.describe();
    at::NoGradGuard g;
    KVCache cache(f.m->config(), 1, 4, at::TensorOptions().dtype(at::kFloat));
    f.m->hidden({at::randint(0, 61, {1, 4}, at::kLong), {}, &cache});
    EXPECT_EQ(cache.bytes_per_token(), cached * 4) << budget;
  }
  EXPECT_TRUE(ragged);
  EXPECT_EQ(parse_kv_granularity("head", "--kv-granularity"), KVBudgetGranularity::kHead);
  try {
    parse_kv_granularity("token", "--kv-granularity");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-granularity 'token': valid is layer"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace condense
