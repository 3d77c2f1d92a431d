// 1-bit Adam (Tang et al., "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
// Convergence Speed", ICML 2021) and the variance schedule of 0/1 Adam (Lu et al., "Maximizing
// Communication Efficiency for Large-scale Training via 0/1 Adam", ICLR 2023).
//
// Steps are of two kinds. A *variance step* is an AdamW step on the densely exchanged mean
// gradient: m and v both move. A *momentum step* leaves gradients local: each rank forms
// m_r = beta1 m + (1 - beta1) g_r from its own gradient, the ranks exchange it through
// comm.compression (1-bit Adam: sign with a scale per block and error feedback; any codec and
// error control work), every rank takes m = the exchanged mean, and the step is
// p -= lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^n)) + eps) with v as the last variance step
// left it (n = the number of variance steps so far), after the decoupled weight decay
// p *= 1 - lr wd. With v fixed the update is linear in m, so error feedback's assumption holds
// again (DESIGN.md "Compressing what is linear in the gradient").
//
// Which steps are variance steps (VarianceSchedule):
//   1-bit Adam  (update_scaler 0): steps 1..freeze_steps, then none.
//   0/1 Adam    (update_scaler S): step s <= freeze_steps is one when s is a multiple of the
//               current interval; the interval starts at 1 and doubles after every S variance
//               steps (DeepSpeed's var_update_scaler / var_freeze_step), so v is refreshed at
//               exponentially sparser steps; the steps between exchange the momentum (the
//               first is S + 1).
// 0/1 Adam's other half, local steps between 1-bit synchronizations, is not built.
//
// Momentum mask: coordinates whose v is exactly 0 never had a gradient in a variance step
// (embedding rows of tokens never seen, say); compressors such as sign give them a nonzero
// decoded momentum, which divided by sqrt(0) + eps would throw the weight far away. Their
// momentum is set to 0 after every exchange, as DeepSpeed's exp_avg_mask does by hand.
//
// The exchange is whatever comm.compression says; the paper's compressed all-reduce (chunks
// all-to-all, re-compressed with a server error, all-gathered) is comm.compression.collective:
// compressed_all_reduce (comm/codec_compressed_allreduce.cpp).
//
// While every step so far was a variance step it is exactly AdamW (it delegates to
// trainer/adamw.h); its checkpoint state is AdamW's (the variance-step count follows from the
// step count and the schedule), plus the error buffers of every rank, which the trainer gathers
// from compression().
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "comm/flat_buckets.h"
#include "comm/gradient_compression.h"
#include "trainer/adamw.h"

namespace condense {

struct VarianceSchedule {
  int64_t freeze_steps = 100;  // no variance step after this one (>= 1)
  int64_t update_scaler = 0;   // 0: 1-bit Adam (every step up to the freeze); > 0: 0/1 Adam

  // The variance steps in increasing order (all of them are <= freeze_steps).
  std::vector<int64_t> steps() const;
};

class OneBitAdam final : public Optimizer {
 public:
  // Collective (builds the compression).
  OneBitAdam(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt,
             VarianceSchedule schedule, Communicator& comm, CompressionConfig compression,
             double bucket_cap_mb);

  // Whether step number `step` (1-based) is a momentum step: then the trainer must leave
  // gradients local, and step() exchanges (collective). Otherwise the trainer exchanges the
  // gradients densely before step().
  bool compressed(int64_t step) const { return !is_variance_step(step); }
  void step(double lr) override;
  std::map<std::string, at::Tensor> state() const override { return adam_.state(); }
  void load_state(const std::map<std::string, at::Tensor>& state) override;
  GradientCompression& compression() { return *compression_; }

 private:
  bool is_variance_step(int64_t step) const;
  int64_t variance_steps_until(int64_t step) const;  // how many variance steps are <= step
  void dense_step(double lr);                        // an AdamW step after a momentum step
  void apply(size_t i, double lr, double bc2);       // decay, p -= lr m^ / (sqrt(v / bc2) + eps)
  void refresh_masks();

  AdamW adam_;
  AdamWOptions opt_;
  std::vector<int64_t> variance_steps_;
  int64_t steps_ = 0;                   // steps taken (from AdamW's step count on resume)
  std::vector<at::Tensor> m_, v_, t_;   // AdamW's own tensors, per parameter
  std::vector<at::Tensor> mask_;        // per parameter: v > 0, or undefined where all of v is
  std::vector<double> decay_;           // weight decay per parameter
  FlatBuckets buckets_;
  std::vector<at::Tensor> flat_;        // one scratch vector per bucket
  std::unique_ptr<GradientCompression> compression_;
};

}  // namespace condense
