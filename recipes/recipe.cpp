#include "recipes/recipe.h"

#include "core/error.h"
#include "recipes/context_compressor.h"
#include "recipes/finetune.h"
#include "recipes/kv_compress.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"

namespace condense {

const std::vector<RecipeKind>& recipe_kinds() {
  static const std::vector<RecipeKind> kinds = {
      {"pretrain", "next-token training of a Llama model on a corpus", run_pretrain},
      {"finetune", "recovery training of a (pruned) init checkpoint: full, LoRA or PERP", run_finetune},
      {"distill", "finetune against a frozen teacher's logits (and hidden states)", run_distill},
      {"kv_heads", "merge the init's KV heads (kv.heads), then heal by distillation from it",
       run_kv_heads},
      {"kv_project", "KV-cache projections of the init (MatryoshkaKV, or CSKV with recovery.method "
       "cskv) built from calibration, then trained by distillation from it", run_kv_project},
      {"context_compressor", "a context encoder (context.method) trained against the frozen decoder init",
       run_context_compressor},
  };
  return kinds;
}

int run_recipe(const RunConfig& cfg_in, const RunOptions& options) {
  // init= and distill.teacher= take what eval and generate take: a checkpoint file, or a run /
  // checkpoint directory meaning its latest checkpoint (recorded resolved in recipe.yaml).
  RunConfig cfg = cfg_in;
  if (!cfg.init.empty()) cfg.init = resolve_checkpoint_path(cfg.init);
  if (!cfg.distill.teacher.empty()) cfg.distill.teacher = resolve_checkpoint_path(cfg.distill.teacher);
  // kv: and context: are read by their kinds only; elsewhere a value there is a mistake, not a
  // no-op. A section is set when resetting it to the defaults changes the resolved recipe.
  auto set = [&cfg](auto RunConfig::*section) {
    RunConfig probe = cfg;
    probe.*section = {};
    return to_yaml(probe) != to_yaml(cfg);
  };
  CONDENSE_CHECK(cfg.kind == "kv_heads" || cfg.kind == "kv_project" || !set(&RunConfig::kv),
                 "the kv: section applies to kinds kv_heads and kv_project; this recipe's kind is "
                 "'{}' (for a checkpoint compressed already, use kind distill with init=it)", cfg.kind);
  CONDENSE_CHECK(cfg.kind == "context_compressor" || !set(&RunConfig::context),
                 "the context: section applies to kind context_compressor; this recipe's kind is "
                 "'{}'", cfg.kind);
  // distill: and recovery: are read by the kinds that train part of a model from an init
  // (finetune keeps a recipe's distill: values, so that one recipe serves with and without a
  // teacher; it refuses distill.teacher itself).
  const bool reads_neither = cfg.kind == "pretrain" || cfg.kind == "context_compressor";
  CONDENSE_CHECK(!reads_neither || !set(&RunConfig::distill),
                 "the distill: section applies to kinds distill, kv_heads and kv_project (finetune "
                 "keeps it for the recipe's distill variant); this recipe's kind is '{}'", cfg.kind);
  CONDENSE_CHECK(!reads_neither || !set(&RunConfig::recovery),
                 "the recovery: section applies to kinds finetune, distill, kv_heads and "
                 "kv_project; this recipe's kind is '{}'", cfg.kind);
  std::string valid;
  for (const RecipeKind& k : recipe_kinds()) {
    if (cfg.kind == k.name) return k.run(cfg, options);
    valid += (valid.empty() ? "" : ", ") + std::string(k.name);
  }
  fail("unknown recipe kind '{}'; valid kinds: {}", cfg.kind, valid);
}

}  // namespace condense
