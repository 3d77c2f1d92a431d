// CommConfig: how ranks talk (recipe section `comm`, with `comm.compression`).
#pragma once
#include <cstdint>
#include <string>

namespace condense {

// Gradient compression with error control (recipe section `comm.compression`; see
// comm/gradient_compression.h for the algorithms and comm/codec.h for the codecs).
struct CompressionConfig {
  // none | fp16 | bf16 | topk | randk | qsgd | sign | powersgd | int8 | sparseloco
  std::string codec = "none";
  double ratio = 0.01;                 // topk, randk: fraction of each bucket's elements sent
  int64_t k = 0;                       // topk, randk: elements per bucket (> 0 overrides ratio)
  std::string scope = "bucket";        // topk: select over the whole bucket | per tensor
  int64_t levels = 7;                  // qsgd: s quantization levels per sign (7 = 4 bits/element)
  int64_t block = 512;                 // qsgd, sign: elements sharing one fp32 scale
  // qsgd, sign: all_gather (every rank decodes every payload) | compressed_all_reduce (1-bit
  // Adam's: chunks all-to-all, re-compressed with a server error, all-gathered)
  std::string collective = "all_gather";
  int64_t rank = 4;                    // powersgd: rank of the approximation
  int64_t bits = 2;                    // sparseloco: bits per kept value (2..8)
  int64_t chunk = 4096;                // sparseloco: elements per chunk (a square: 2-D tiles)
  std::string transform = "none";      // sparseloco: none | dct (DeMo's 2-D DCT-II per chunk)
  std::string error_control = "none";  // none | ef | ef21 | econtrol
  double eta = 0.1;                    // econtrol: weight of the error term
  double decay = 1.0;                  // ef: v = g + decay * e (SparseLoCo: 0.95)
  int64_t warmup_steps = 0;            // first steps exchange dense fp32 (state still updated)
  int64_t min_bucket_numel = 0;        // buckets with fewer elements always go dense
  int64_t seed = 0;                    // randk indices, qsgd rounding, powersgd initial Q

  bool enabled() const { return codec != "none" || error_control != "none"; }
};

// What ranks exchange (recipe section `comm.sync`; comm/local_update.h). "ddp": the gradient
// of every step (GradientSync, with comm.compression); "diloco": each rank takes inner_steps
// optimizer steps on its own shard, then the ranks exchange the pseudo-gradient (anchor minus
// local weights; comm.compression applies to it) and take one outer step on the anchor
// (Douillard et al., DiLoCo, 2023). "onebit_adam": dense AdamW for freeze_steps, then Adam's
// momentum exchanged through comm.compression with v frozen (Tang et al., 1-bit Adam, 2021).
// "zero_one_adam": the momentum is exchanged compressed from the start, and v is refreshed by a
// dense AdamW step at exponentially sparser steps until freeze_steps (Lu et al., 0/1 Adam, 2022;
// trainer/onebit_adam.h has the schedule).
struct SyncConfig {
  std::string mode = "ddp";              // ddp | diloco | onebit_adam | zero_one_adam
  int64_t inner_steps = 16;              // diloco: H, optimizer steps between exchanges
  int64_t fragments = 1;                 // diloco: P > 1 streams P fragments, one every H/P steps
  std::string outer_optimizer = "nesterov";  // diloco: nesterov | sgd (heavy ball when momentum > 0)
  double outer_lr = 0.7;                 // diloco: outer learning rate
  double outer_momentum = 0.9;           // diloco: outer momentum
  int64_t freeze_steps = 100;            // onebit_adam: dense AdamW steps before v freezes;
                                         // zero_one_adam: the last step that may refresh v
  int64_t var_update_scaler = 16;        // zero_one_adam: refreshes per interval before it doubles

  bool local_update() const { return mode == "diloco"; }
  // AdamW whose second moment is frozen between dense steps (trainer/onebit_adam.h).
  bool frozen_variance() const { return mode == "onebit_adam" || mode == "zero_one_adam"; }
};

struct CommConfig {
  std::string backend = "auto";  // auto | mpi | nccl | self (auto: self alone; under mpirun nccl on cuda, else mpi)
  std::string device = "cpu";    // where tensors live; follows train.device, not a recipe key
  double bucket_cap_mb = 25.0;   // gradient bucket size
  bool overlap = true;           // exchange buckets while backward runs
  // A collective in flight longer than this ends the job, naming the stalled ranks
  // (comm/watchdog.h; mpi backend). 0: wait forever.
  double timeout_s = 600;
  CompressionConfig compression;
  SyncConfig sync;
};

}  // namespace condense
