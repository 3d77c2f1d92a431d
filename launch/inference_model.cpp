#include "launch/inference_model.h"

#include <spdlog/spdlog.h>

#include "compressors/cskv.h"
#include "compressors/kv_project.h"
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
                             "orthonormal columns, most important first; keys (after RoPE) and "
                             "queries are multiplied by the first r columns, values by theirs "
                             "and attention's output by their transpose"},
                  {"num_key_value_heads", c.kv_heads()},
                  {"head_dim", c.head_size()}};
  } else if (auto low = std::dynamic_pointer_cast<LowRankKV>(model->kv_hook())) {
    out.method = "cskv";
    out.tensors = low->entries();
    out.config = {{"method", "cskv"},
                  {"paper", "CSKV (Wang et al. 2024)"},
                  {"layout", "cskv/layers.<i>.key_down [hidden, r_k], key_up [r_k, kv_heads * "
                             "head_dim] (likewise value_*): the cache stores x key_down; keys are "
                             "RoPE(latent key_up), values latent value_up"},
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

void set_kv_rank(LlamaForCausalLM& model, int64_t rank, const std::string& source) {
  if (rank == 0) return;
  CONDENSE_CHECK(!std::dynamic_pointer_cast<LowRankKV>(model->kv_hook()),
                 "--kv-rank {}: {} has a CSKV low-rank cache, whose ranks were fixed when it was "
                 "made (condense prune --method cskv --key-rank/--value-rank)", rank, source);
  auto proj = std::dynamic_pointer_cast<KVProjection>(model->kv_hook());
  CONDENSE_CHECK(proj, "--kv-rank {}: {} has no KV-cache projections (make them with `condense "
                 "prune {} --method kv-project --out OUT.h5`)", rank, source, source);
  proj->set_rank(rank, rank, "--kv-rank");
}

}  // namespace condense
