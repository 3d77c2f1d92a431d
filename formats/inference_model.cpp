#include "formats/inference_model.h"

#include <spdlog/spdlog.h>

#include <cmath>

#include "compressors/cskv.h"
#include "compressors/kv_budget.h"
#include "compressors/kv_project.h"
#include "model/kv_cache.h"
#include "core/hash.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "compressors/lora.h"
#include "core/error.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt) {
  LlamaForCausalLM model(ckpt.config());
  ckpt.load_model(model);
  if (merge_stored_adapters(model, ckpt.file()))
    spdlog::info("{}: merged its recovery adapters into the weights", ckpt.file().path());
  at::Tensor w = model->lm_head_weight();
  if (auto proj = KVProjection::from_file(ckpt.file(), model->config())) {
    proj->to(w.device(), w.scalar_type());
    model->set_kv_hook(proj);
  }
  if (auto low = LowRankKV::from_file(ckpt.file(), model->config())) {
    CONDENSE_CHECK(!model->kv_hook(), "{}: carries both KV projections (kv_proj/*) and CSKV "
                   "factors (cskv/*); a model has one KV-cache compression", ckpt.file().path());
    low->to(w.device(), w.scalar_type());
    model->set_kv_hook(low);
  }
  return model;
}

KVCompressionParts detach_kv_compression(LlamaForCausalLM& model) {
  KVCompressionParts out;
  const LlamaConfig& c = model->config();
  if (auto proj = std::dynamic_pointer_cast<KVProjection>(model->kv_hook())) {
    out.method = "kv_project";
    out.tensors = proj->entries();
    out.config = {{"method", "kv_project"},
                  {"paper", "MatryoshkaKV (Lin et al., ICLR 2025)"},
                  {"layout", "kv_proj/layers.<i>.key|value: [kv_heads, head_dim, head_dim] "
                             "orthonormal columns, most important first, and key_mean|value_mean "
                             "[kv_heads, head_dim]; keys (after RoPE) minus key_mean and queries "
                             "are multiplied by the first r columns, values minus value_mean by "
                             "theirs, and attention's output by their transpose plus value_mean"},
                  {"num_key_value_heads", c.kv_heads()},
                  {"head_dim", c.head_size()}};
  } else if (auto low = std::dynamic_pointer_cast<LowRankKV>(model->kv_hook())) {
    out.method = "cskv";
    out.tensors = low->entries();
    out.config = {{"method", "cskv"},
                  {"paper", "CSKV (Wang et al. 2024)"},
                  {"layout", "cskv/layers.<i>.key_down [hidden, r_k], key_up [r_k, kv_heads * "
                             "head_dim] (likewise value_*): the cache stores x key_down; keys are "
                             "RoPE(latent key_up) (latent key_up in layers config.json's no_rope_layers marks 0), "
                             "values latent value_up"},
                  {"key_rank", low->key_rank()},
                  {"value_rank", low->value_rank()}};
    low->fold_into(model);
  } else {
    CONDENSE_CHECK(!model->kv_hook(), "detach_kv_compression: an unknown KV hook");
    return out;
  }
  model->set_kv_hook(nullptr);
  return out;
}

namespace {

// The model's KV projections for a --kv-rank / --kv-budget `option`; throws naming `source`.
KVProjection& projection_of(LlamaForCausalLM& model, const std::string& option,
                            const std::string& source) {
  CONDENSE_CHECK(!std::dynamic_pointer_cast<LowRankKV>(model->kv_hook()),
                 "{}: {} has a CSKV low-rank cache, whose ranks were fixed when it was made "
                 "(condense prune --method cskv --key-rank/--value-rank)", option, source);
  auto proj = std::dynamic_pointer_cast<KVProjection>(model->kv_hook());
  CONDENSE_CHECK(proj, "{}: {} has no KV-cache projections (make them with `condense prune {} "
                 "--method kv-project --out OUT.h5`)", option, source, source);
  return *proj;
}

}  // namespace

void set_kv_budget(LlamaForCausalLM& model, double budget, const std::string& granularity,
                   const Checkpoint& ckpt, const std::string& source, std::string dataset) {
  const KVBudgetGranularity per = check_kv_granularity(budget, granularity);
  if (budget == 0) return;
  KVProjection& proj = projection_of(model, fmt::format("--kv-budget {}", budget), source);
  const double lowest = min_kv_budget(proj);
  CONDENSE_CHECK(std::isfinite(budget) && budget >= lowest && budget <= 1,
                 "--kv-budget {}: valid is {}..1 (the share of the full-rank KV cache; 0: off)",
                 budget, lowest);
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), source + ":recipe");
  TokenStore store = open_checkpoint_store(ckpt, source, dataset);
  // A few windows of at most 256 tokens: 3 forwards over them per unit (2 x layers units, or
  // 2 x layers x kv_heads per head).
  const int64_t seq = std::min<int64_t>(cfg.data.seq_len, 256), count = 4;
  std::vector<at::Tensor> windows = calibration_windows(store.held_out_ids(), seq, count, count);
  spdlog::info("kv budget {}: sensitivity on the last {} validation windows of {} tokens of {}",
               budget, count, seq, store.path());
  KVBudgetPlan plan = plan_kv_budget(model, proj, windows, budget, per);
  spdlog::info("kv budget {}: {}", budget, plan.describe());
}

KVBudgetGranularity check_kv_granularity(double budget, const std::string& granularity) {
  const KVBudgetGranularity per = parse_kv_granularity(granularity, "--kv-granularity");
  CONDENSE_CHECK(budget != 0 || per == KVBudgetGranularity::kLayer,
                 "--kv-granularity {} applies to --kv-budget; give a budget", granularity);
  return per;
}

void set_kv_window(LlamaForCausalLM& model, int64_t window, const std::string& source) {
  CONDENSE_CHECK(window >= 0, "--kv-window {}: must be >= 0 (0: no window)", window);
  if (window == 0) return;
  auto low = std::dynamic_pointer_cast<LowRankKV>(model->kv_hook());
  CONDENSE_CHECK(low, "--kv-window {}: {} has no CSKV low-rank cache (make one with `condense "
                 "prune {} --method cskv --key-rank R --out OUT.h5`)", window, source, source);
  low->set_window(window);
}

double kv_bytes_per_token(LlamaForCausalLM& model) {
  at::NoGradGuard no_grad;
  at::Tensor w = model->lm_head_weight();
  KVCache probe(model->config(), 1, 1, w.options());
  model->hidden({at::zeros({1, 1}, w.options().dtype(at::kLong)), {}, &probe});
  return probe.bytes_per_token();
}

void set_kv_rank(LlamaForCausalLM& model, int64_t rank, const std::string& source) {
  if (rank == 0) return;
  KVProjection& proj = projection_of(model, fmt::format("--kv-rank {}", rank), source);
  proj.set_rank(rank, rank, "--kv-rank");
}

}  // namespace condense
