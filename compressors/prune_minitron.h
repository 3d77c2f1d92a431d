// Minitron structured pruning (Muralidharan et al. 2024, "Compact Language Models via Pruning
// and Knowledge Distillation"): removes whole MLP neurons, query heads, embedding channels and
// layers, ranked by activation importance from one calibration pass, and slices the weights
// into a physically smaller plain Llama (exportable as HF / GGUF with an explicit head_dim).
//   neuron n of layer i   sqrt(input_sq_norms[layers.i.mlp.down_proj][n])
//   query head h          sqrt(sum of o_proj's input_sq_norms over h's head_dim channels),
//                         ranked inside its KV group; every group loses the same number and
//                         the KV heads stay (k/v_proj unchanged, q_proj rows and o_proj
//                         columns go)
//   embedding channel c   sum over kept layers of sqrt(sq_norms[q_proj][c]) +
//                         sqrt(sq_norms[gate_proj][c]) (the two RMSNorm outputs); sliced from
//                         the embedding, every norm, every projection and the LM head
//   layer i               block_influence[i]; the lowest are dropped
// Ranking is by importance, ties keep the lower index. The plan is computed and checked
// completely before any weight is touched.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compressors/calibration.h"
#include "model/llama.h"
#include "model/llama_config.h"

namespace condense {

struct MinitronTarget {            // 0 / empty = keep as is
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_attention_heads = 0;  // a multiple of num_key_value_heads (equal removal per group)
  int64_t num_hidden_layers = 0;    // drop the layers with the lowest block influence
  std::vector<int64_t> drop_layers; // explicit layers to drop instead (exclusive with the above)
  // A total parameter count: hidden_size and intermediate_size (those not given explicitly)
  // shrink by one common factor to the size whose count is closest to this; heads and layers
  // change only when named. Minitron found width pruning of MLP and embedding channels better
  // than depth, and attention heads the most sensitive width axis (its 8B model kept them all).
  double num_parameters = 0;
};

struct MinitronPlan {              // what is kept, in the original model's indices, sorted ascending
  LlamaConfig original;            // the config the plan was made for (checked by apply_minitron)
  LlamaConfig config;              // the pruned config; head_dim written explicitly
  std::vector<int64_t> layers;     // kept layers
  std::vector<std::vector<int64_t>> neurons;  // per kept layer: kept MLP neurons
  std::vector<std::vector<int64_t>> heads;    // per kept layer: kept query heads
  std::vector<int64_t> channels;   // kept embedding (hidden) channels
  std::string describe() const;    // one human line: sizes before -> after, parameter counts
};

// Every target check that needs no calibration (ranges, head multiples, drop_layers,
// num_parameters reachability): call before an expensive calibration pass. plan_minitron runs
// it too.
void check_minitron_target(const LlamaConfig& config, const MinitronTarget& target);

// Throws condense::Error naming the target key, its value and the valid range, or the missing
// calibration statistic, for anything it cannot do.
MinitronPlan plan_minitron(const LlamaConfig& config, const CalibrationStats& stats,
                           const MinitronTarget& target);

// A new model with the plan's config and the kept slices of `model`'s weights (layers
// renumbered), on the same device and dtype, in the same training mode. `model` is unchanged.
LlamaForCausalLM apply_minitron(LlamaForCausalLM& model, const MinitronPlan& plan);

}  // namespace condense
