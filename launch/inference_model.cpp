#include "launch/inference_model.h"

#include <spdlog/spdlog.h>

#include "compressors/kv_project.h"
#include "compressors/lora.h"
#include "core/error.h"

namespace condense {

LlamaForCausalLM load_inference_model(const Checkpoint& ckpt) {
  LlamaForCausalLM model(ckpt.config());
  ckpt.load_model(model);
  if (merge_stored_adapters(model, ckpt.file()))
    spdlog::info("{}: merged its recovery adapters into the weights", ckpt.file().path());
  if (auto proj = KVProjection::from_file(ckpt.file(), model->config())) {
    at::Tensor w = model->lm_head_weight();
    proj->to(w.device(), w.scalar_type());
    model->set_kv_hook(proj);
  }
  return model;
}

void set_kv_rank(LlamaForCausalLM& model, int64_t rank, const std::string& source) {
  if (rank == 0) return;
  auto proj = std::dynamic_pointer_cast<KVProjection>(model->kv_hook());
  CONDENSE_CHECK(proj, "--kv-rank {}: {} has no KV-cache projections (make them with `condense "
                 "prune {} --method kv-project --out OUT.h5`)", rank, source, source);
  proj->set_rank(rank, rank, "--kv-rank");
}

}  // namespace condense
