// The start-up and finish every recipe kind shares, in one place: threads, the communicator
// (and per-rank logging, the same-recipe check across ranks), the run directory (an existing
// run is refused without --resume), the token store (rank 0 prepares it on first use), the
// resolved recipe (written to <out_dir>/recipe.yaml), the loader and validation batches, and
// the TrainerSetup. A kind builds its Trainable between start_run() and train_run().
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "comm/communicator.h"
#include "data/token_store.h"
#include "io/run_lock.h"
#include "recipes/recipe.h"
#include "trainer/trainer.h"

namespace condense {

struct RunSetup {
  RunConfig cfg;                       // resolved: model sizes from the store / init filled in
  std::unique_ptr<Communicator> comm;
  int rank = 0, world = 1, threads = 1;
  c10::Device device = c10::kCPU;      // train.device resolved for this rank (trainer/device.h)
  std::string out_dir, dataset, yaml;  // yaml: the resolved recipe
  std::optional<std::string> resume;   // the checkpoint to resume from
  std::optional<TokenStore> store;
  std::unique_ptr<RunLock> lock;       // rank 0's hold on out_dir while it trains (io/run_lock.h)
  std::unique_ptr<RunLock> checkpoint_lock;  // and on checkpoint.dir when it lies elsewhere
};

// `adjust` runs after the token store is open and before the model config is finalized and
// the recipe resolved (finetune takes the model config of its init checkpoint there).
RunSetup start_run(const RunConfig& cfg, const RunOptions& options,
                   const std::function<void(RunSetup&)>& adjust = {});

// Token streams that replace the token store's splits for a kind whose records are not the
// corpus (xRAG: one document per window, compressors/context_documents.h).
struct DataStreams {
  at::Tensor train, val;  // 1-D integer tokens
  std::string name;       // for the log: where they come from
};

// Builds the loader (over `train_windows` only, when given; over `streams` instead of the
// store's splits, when given) and validation batches, trains, and logs the outcome.
TrainResult train_run(RunSetup& run, Trainable trainable, std::vector<int64_t> train_windows = {},
                      const DataStreams* streams = nullptr);

}  // namespace condense
