// The `kv_heads` and `kv_project` recipe kinds: compress the KV cache of the checkpoint named
// by `init`, then heal it by distillation from that same checkpoint, in one run.
//   kv_heads    merge KV heads to kv.heads (kv.init svd | mean; compressors/kv_merge.h), then
//               train what recovery:/train.trainable name (recipes/kv_heads.yaml: the
//               attention projections) against the original: the result is a plain GQA Llama
//   kv_project  recovery.method kv_project: MatryoshkaKV's PCA bases per KV head
//               (compressors/kv_project.h), trained orthogonal with ranks sampled per head;
//               recovery.method cskv: CSKV's low-rank K/V factors (kv.key_rank, kv.value_rank,
//               kv.init whiten | asvd | svd; compressors/cskv.h) trained end to end
// Calibration reads the last kv.calib_windows windows of the run's own validation split
// (validation reads the first ones). The compressed model is written once, as
// <out_dir>/compressed_init.h5, and is the run's init from then on: --resume reuses it, and a
// run refused before its first checkpoint removes it again (a refused command changes nothing
// on disk). The two-step form (`condense prune --method kv-heads | kv-project | cskv`, then a
// distill recipe with init=the pruned file) remains for compressing once and training often.
#pragma once
#include "recipes/recipe.h"

namespace condense {

int run_kv_heads(const RunConfig& cfg, const RunOptions& options);
int run_kv_project(const RunConfig& cfg, const RunOptions& options);

}  // namespace condense
