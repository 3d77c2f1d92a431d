// 1-bit Adam (Tang et al., "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
// Convergence Speed", ICML 2021): AdamW with dense gradient exchange for `freeze_steps` steps,
// then Adam's second moment v is frozen, and what the ranks exchange is the momentum instead of
// the gradient: each rank forms m_r = beta1 m + (1 - beta1) g_r from its own gradient, the ranks
// exchange it through comm.compression (1-bit Adam: sign with a scale per block and error
// feedback; any codec and error control work), and every rank takes m = the exchanged mean and
// the step p -= lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^T)) + eps), T the freeze step,
// after the decoupled weight decay p *= 1 - lr wd. With v fixed the update is linear in m, so
// error feedback's assumption holds again (DESIGN.md "Compressing what is linear in the
// gradient"). The paper's second compression on the server side of its all-reduce has no
// counterpart here: payloads are all-gathered and every rank decodes all of them.
//
// Before the freeze it is exactly AdamW (it delegates to trainer/adamw.h); its checkpoint state
// is AdamW's, plus the error buffers of every rank, which the trainer gathers from compression().
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "comm/flat_buckets.h"
#include "comm/gradient_compression.h"
#include "trainer/adamw.h"

namespace condense {

class OneBitAdam final : public Optimizer {
 public:
  // Collective (builds the compression). freeze_steps >= 1: AdamW steps before v freezes.
  OneBitAdam(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt,
             int64_t freeze_steps, Communicator& comm, CompressionConfig compression,
             double bucket_cap_mb);

  // Whether step number `step` (1-based) is a compressed-momentum step: then the trainer must
  // leave gradients local, and step() exchanges (collective).
  bool compressed(int64_t step) const { return step > freeze_steps_; }
  void step(double lr) override;
  std::map<std::string, at::Tensor> state() const override { return adam_.state(); }
  void load_state(const std::map<std::string, at::Tensor>& state) override;
  GradientCompression& compression() { return *compression_; }

 private:
  AdamW adam_;
  AdamWOptions opt_;
  int64_t freeze_steps_;
  int64_t steps_ = 0;                   // steps taken (from AdamW's step count on resume)
  std::vector<at::Tensor> m_, v_, t_;   // AdamW's own tensors, per parameter
  std::vector<double> decay_;           // weight decay per parameter
  FlatBuckets buckets_;
  std::vector<at::Tensor> flat_;        // one scratch vector per bucket
  std::unique_ptr<GradientCompression> compression_;
};

}  // namespace condense
