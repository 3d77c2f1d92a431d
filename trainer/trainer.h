// The training loop: micro-steps with gradient accumulation, global-norm clipping, AdamW with
// a warm-up + cosine schedule, periodic validation, metrics (JSONL + TensorBoard, rank 0),
// a progress bar, atomic checkpoints, exact resume, and a graceful stop on SIGINT/SIGTERM.
// It trains a Trainable (trainer/trainable.h): a part of a model plus added modules and a loss,
// so each recipe kind decides what trains and what a step optimizes.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/grad_sync.h"
#include "data/loader.h"
#include "model/llama.h"
#include "trainer/checkpoint.h"
#include "trainer/trainable.h"
#include "trainer/train_config.h"

namespace condense {

struct TrainerSetup {
  TrainConfig train;
  CheckpointConfig checkpoint;  // dir must be resolved (non-empty)
  std::string out_dir;          // metrics.jsonl and tensorboard/ go here
  std::string recipe_yaml;      // stored in checkpoints
  std::string tokenizer_bytes;  // stored in checkpoints
  int64_t tokens_per_micro_batch = 0;  // batch_size * seq_len (per rank)
  // Data parallelism: with a communicator of more than one rank, gradients are averaged over
  // ranks (GradientSync), metrics are reduced, and only rank 0 writes metrics and checkpoints.
  // The communicator must outlive the Trainer; null means a single process.
  Communicator* comm = nullptr;
  GradSyncConfig sync;
  // Where the model and optimizer live (train.device, resolved); batches are moved here.
  c10::Device device = c10::kCPU;
  bool memory_meter = false;  // memory.meter: per-phase peaks in metrics (CUDA; CPU needs the
                              // counting allocator installed before the model)
  // comm.sync: "ddp" exchanges gradients every step through `sync`; "diloco" trains each rank
  // locally and exchanges pseudo-gradients every inner_steps steps (comm/local_update.h), with
  // sync.compression and sync.bucket_cap_mb applied to them. Needs `comm` (any size).
  SyncConfig local_update;
  // Recorded in every checkpoint (TrainingState::data_split): the token store's split the
  // training text comes from; empty when it comes from elsewhere (xRAG's documents).
  std::string data_split;
  // Called on every rank once everything has been restored and checked (the resumed
  // checkpoint included), before the first write to out_dir (metrics, checkpoints); the run
  // writes its recipe.yaml here. Nothing in the run directory changes before it.
  std::function<void()> before_writing;
};

struct TrainResult {
  int64_t step = 0;
  double train_loss = 0;       // loss of the last step (NaN when a resumed run ran none)
  double val_loss = -1;        // last validation loss; -1 if never evaluated
  int64_t val_step = 0;        // the step it was measured at
  bool interrupted = false;    // stopped by a signal
  std::string checkpoint;      // last checkpoint written (or resumed from)
};

class Trainer {
 public:
  Trainer(TrainerSetup setup, Trainable trainable, BatchLoader loader,
          std::vector<Batch> validation);
  // Trains from scratch, or from `resume_from` (a checkpoint path), until train.steps.
  TrainResult run(const std::optional<std::string>& resume_from);
  // Mean of the trainable's eval_loss (else loss) over the validation batches (of all ranks),
  // in eval mode without gradients. Collective when data parallel.
  double validate();

 private:
  TrainerSetup setup_;
  Trainable t_;
  LlamaForCausalLM model_;
  BatchLoader loader_;
  std::vector<Batch> validation_;
};

}  // namespace condense
