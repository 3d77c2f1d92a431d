// Low-rank adapters around the model's projections (a ProjectionHook, model/projection_hook.h).
// For a frozen weight W [out, in] with B [out, r] (zeros at start) and A [r, in] (random), s =
// alpha / r, the layer applies
//   lora       W + s B A                     (Hu et al. 2021)
//   masklora   W + s (B A) * M               (PERP, Zimmer et al.: keeps the pruning mask M)
//   scalelora  W * (1 + B A)                 (PERP's multiplicative variant; 1 + B A is a
//                                             rank r + 1 product pinned to start at 1, so zeros
//                                             of W stay zero and A's random start breaks the
//                                             symmetry a constant start would keep)
// The stored weight never changes; autograd reaches A and B only. merge() writes the effective
// weights into the model for export, where masklora and scalelora keep every zero of W.
// Adapter parameters are named "lora.<layer>.A" / ".B" ("lora.model.layers.3.self_attn.q_proj.A");
// the kind and alpha are checkpoint tensors too ("lora/kind", "lora/alpha"; the rank is A's),
// so export and eval merge them without the recipe.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compressors/compressor_config.h"
#include "compressors/masks.h"
#include "model/llama.h"

namespace condense {

class H5File;

struct LoraSpec {
  std::string kind = "lora";  // lora | masklora | scalelora
  int64_t rank = 8;
  double alpha = 16;
};

class LoraAdapters : public ProjectionHook {
 public:
  // Creates adapters for `weight_names` (matrices of `model`); masklora needs masks (a matrix
  // without one gets a plain adapter: nothing of it was pruned). A draws from the global torch generator (seed it first for reproducibility).
  LoraAdapters(LlamaForCausalLM& model, const std::vector<std::string>& weight_names,
               LoraSpec spec, const WeightMasks* masks);

  at::Tensor weight(const std::string& name, const at::Tensor& w) override;
  // Moves the adapters (and their masks) to `device`, still trainable leaves; call before
  // parameters() is handed to an optimizer.
  void to(c10::Device device);
  // ("lora.<layer>.A", A), ("lora.<layer>.B", B), in model order.
  std::vector<std::pair<std::string, at::Tensor>> parameters() const;
  const LoraSpec& spec() const { return spec_; }
  int64_t num_parameters() const;

  // Effective weights written into the model (no grad); the model should then drop this hook.
  void merge(LlamaForCausalLM& model) const;
  // "lora/kind" (int64: 0 lora, 1 masklora, 2 scalelora) and "lora/alpha" (float64), for
  // checkpoints (a Trainable's state).
  std::map<std::string, at::Tensor> state() const;

 private:
  at::Tensor effective(const std::string& name, const at::Tensor& w) const;
  struct Adapter {
    at::Tensor a, b, mask;  // mask undefined unless masklora
  };
  LoraSpec spec_;
  std::vector<std::string> order_;
  std::map<std::string, Adapter> adapters_;
};

// The weight names a `recovery:` section puts adapters on: its targets, else the masked
// matrices (perp) or every projection (lora). Throws naming a target that matches nothing.
std::vector<std::string> adapter_targets(LlamaForCausalLM& model, const RecoveryConfig& rc,
                                         const WeightMasks& masks);

// Merges adapters stored in a checkpoint ("lora.*" tensors, "lora/kind", "lora/alpha", and
// "mask/*" for masklora) into `model`, which
// holds the checkpoint's base weights; returns false when the file has none. For export, eval,
// generate and score, which see the model a recovery run produced.
bool merge_stored_adapters(LlamaForCausalLM& model, const H5File& file);

}  // namespace condense
