// TrainConfig and CheckpointConfig: the optimizer, schedule and loop settings of a run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace condense {

struct TrainConfig {
  int64_t steps = 300;            // optimizer steps
  double lr = 3e-3;               // peak learning rate
  double min_lr = 3e-4;           // cosine floor
  int64_t warmup_steps = 30;      // linear warm-up from 0
  std::string optimizer = "adamw"; // adamw | sgd (heavy-ball momentum) | sign (DeMo's update)
  double weight_decay = 0.1;      // decoupled (both optimizers); not applied to norms and biases
  double beta1 = 0.9;             // adamw
  double beta2 = 0.95;            // adamw
  double eps = 1e-8;              // adamw
  double momentum = 0.9;          // sgd
  double grad_clip = 1.0;         // global-norm clip; 0 disables
  int64_t grad_accum = 1;         // micro-steps per optimizer step
  int64_t seed = 1234;
  int64_t threads = 0;            // intra-op threads; 0: all cores
  std::string device = "cpu";     // cpu | cuda (this rank's GPU) | cuda:N (trainer/device.h)
  std::string precision = "fp32"; // fp32 | bf16 (autocast forward, fp32 weights and optimizer)
  int64_t eval_every = 100;       // steps between validations; 0 disables
  int64_t eval_batches = 8;       // validation batches per evaluation
  int64_t log_every = 10;         // steps between log lines / progress updates
  // A step whose loss or gradients are non-finite on any rank: stop the run (with the step and
  // the ranks named), or skip: drop the step on every rank (no optimizer update; compression
  // error state restarts) and stop only after max_consecutive_skips skipped steps in a row.
  std::string nonfinite = "stop";  // stop | skip
  int64_t max_consecutive_skips = 10;
  // Regexes (full match) over Hugging Face parameter names: only matching parameters train,
  // the rest are frozen. Empty: the recipe kind decides (pretrain and full recovery: all).
  std::vector<std::string> trainable;
};

struct CheckpointConfig {
  std::string dir;                // empty: <out_dir>/checkpoints
  int64_t every = 100;            // steps between checkpoints; 0: only at the end
  int64_t keep = 3;               // most recent checkpoints kept
};

}  // namespace condense
