// Local-update training's outer loop (DiLoCo: Douillard et al., "DiLoCo: Distributed
// Low-Communication Training of Language Models", 2023): between exchanges every rank trains
// its own copy with its own inner optimizer on its own shard; every `inner_steps` steps the
// ranks exchange the pseudo-gradient D_r = anchor - w_r (what the rank's inner steps moved),
// compressed through comm.compression with its error control (comm/gradient_compression.h:
// EF with SparseLoCo's decay, EControl, ...), and take one outer step on the anchor with the
// mean D, identically on every rank; every rank then continues from the new anchor.
//
// What is exchanged is linear in the gradients (the sum of the inner updates), so error
// feedback's assumption holds, and the nonlinear inner optimizer (AdamW) runs after no
// exchange at all; DESIGN.md "Compressing what is linear in the gradient".
//
// Outer optimizers (on the anchor a, with D the exchanged mean):
//   sgd      : m = mu m + D ; a -= lr m            (mu 0: a -= lr D; lr 1, mu 0: a = mean w_r)
//   nesterov : m = mu m + D ; a -= lr (D + mu m)   (PyTorch's SGD(nesterov=True); DiLoCo's
//                                                   outer optimizer at lr 0.7, mu 0.9)
// SparseLoCo uses sgd at lr 1 without momentum and a decayed EF buffer instead (ef, decay 0.95).
//
// Streaming (Douillard et al., "Streaming DiLoCo with overlapping communication", 2025):
// with comm.sync.fragments P > 1 the trained tensors are cut, in order, into P fragments of about
// equal size, and fragment f takes its outer step at the steps s with s mod H = (f + 1) H / P mod
// H: every fragment still every H steps, but one exchange moves 1/P of the model every H / P
// steps, so the peak bandwidth drops P-fold. The last step of a run synchronizes every fragment.
// The paper's overlap of an exchange with the next inner steps (tau > 0) and its mixing of local
// and global weights (alpha) are not built: the exchange blocks, and the fragment's weights are
// replaced by the new anchor.
//
// State: the anchor and the outer momentum are identical on every rank (shared_state); the
// compression state (error buffers) is per rank. The trainer also keeps each rank's local
// weights and inner optimizer state, which differ between exchanges (trainer/trainer.cpp).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "comm/comm_config.h"
#include "comm/communicator.h"
#include "comm/gradient_compression.h"

namespace condense {

class LocalUpdate {
 public:
  // Collective (every rank with the same parameter list and configs). params: the trained
  // tensors (fp32, one device), grouped in order into buckets of at most bucket_cap_mb; their
  // current values become the anchor. Logs the plan on rank 0.
  LocalUpdate(Communicator& comm, std::vector<std::pair<std::string, at::Tensor>> params,
              SyncConfig sync, CompressionConfig compression, double bucket_cap_mb);

  // The fragments whose round the optimizer step that just completed (1-based `step`, of
  // `total`) ends, in increasing order (empty on inner steps; all of them at `total`).
  std::vector<int64_t> fragments_due(int64_t step, int64_t total) const;
  bool due(int64_t step, int64_t total) const { return !fragments_due(step, total).empty(); }
  // Collective: exchanges the pseudo-gradients of these fragments (all of them when empty),
  // steps their anchor and copies it into their params.
  void outer_step(const std::vector<int64_t>& fragments = {});
  // Bytes and seconds of the last outer_step (zeros before the first).
  const ExchangeStats& last_stats() const { return compression_->stats(); }
  int64_t outer_steps() const { return compression_->step(); }
  GradientCompression& compression() { return *compression_; }

  // Copies of the anchor and outer momentum, by name ("local_update/anchor<b>",
  // "local_update/momentum<b>"), the same on every rank; load_shared_state restores them (checking names and shapes, naming
  // `source` in errors).
  std::map<std::string, at::Tensor> shared_state() const;
  void load_shared_state(const std::map<std::string, at::Tensor>& state, const std::string& source);
  // Swaps the params' values with the anchor's (twice: back), e.g. to evaluate or save the global
  // model in the middle of a round. Not collective.
  void swap_anchor();

 private:
  struct Bucket {
    int64_t fragment = 0;
    std::vector<size_t> params;
    std::vector<int64_t> offsets;
    at::Tensor anchor, momentum, delta;  // fp32 flat; momentum undefined without momentum
  };

  Communicator& comm_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  SyncConfig sync_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<GradientCompression> compression_;
};

// Valid comm.sync.mode / comm.sync.outer.optimizer values, for recipe validation.
const std::vector<std::string>& sync_modes();
const std::vector<std::string>& outer_optimizers();

}  // namespace condense
