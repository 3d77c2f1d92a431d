#include "compressors/lora.h"

#include <ATen/ATen.h>

#include <cmath>
#include <regex>

#include "compressors/prune_masked.h"
#include "core/error.h"
#include "core/shape.h"
#include "io/hdf5_file.h"

namespace condense {
namespace {

const std::vector<std::string> kKinds = {"lora", "masklora", "scalelora"};

// "model.layers.3.self_attn.q_proj.weight" -> "lora.model.layers.3.self_attn.q_proj.A"
std::string adapter_key(const std::string& weight, const char* part) {
  const std::string suffix = ".weight";
  std::string base = weight;
  if (base.size() > suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0)
    base.resize(base.size() - suffix.size());
  return "lora." + base + "." + part;
}

int64_t kind_id(const std::string& kind) {
  for (size_t i = 0; i < kKinds.size(); ++i)
    if (kKinds[i] == kind) return static_cast<int64_t>(i);
  fail("unknown adapter kind '{}'; valid: lora, masklora, scalelora", kind);
}

}  // namespace

LoraAdapters::LoraAdapters(LlamaForCausalLM& model, const std::vector<std::string>& weight_names,
                           LoraSpec spec, const WeightMasks* masks)
    : spec_(std::move(spec)) {
  kind_id(spec_.kind);
  CONDENSE_CHECK(spec_.rank >= 1, "recovery.rank must be >= 1, got {}", spec_.rank);
  CONDENSE_CHECK(spec_.alpha > 0, "recovery.alpha must be > 0, got {}", spec_.alpha);
  CONDENSE_CHECK(!weight_names.empty(), "no weight was selected for adapters");
  auto params = parameter_map(model);
  at::NoGradGuard no_grad;
  for (const std::string& name : weight_names) {
    auto it = params.find(name);
    CONDENSE_CHECK(it != params.end() && it->second.dim() == 2,
                   "adapter target '{}' is not a weight matrix of this model", name);
    const at::Tensor& w = it->second;
    CONDENSE_CHECK(spec_.rank <= std::min(w.size(0), w.size(1)),
                   "recovery.rank {} exceeds the smaller side of '{}' {}", spec_.rank, name,
                   shape_str(w.sizes()));
    Adapter ad;
    // Kaiming-uniform A as in Hu et al.'s reference code (bound 1/sqrt(in)), zero B: the
    // adapted layer starts exactly at W.
    double bound = 1.0 / std::sqrt(static_cast<double>(w.size(1)));
    ad.a = at::empty({spec_.rank, w.size(1)}, w.options()).uniform_(-bound, bound).requires_grad_(true);
    ad.b = at::zeros({w.size(0), spec_.rank}, w.options()).requires_grad_(true);
    if (spec_.kind == "masklora") {
      // A matrix without a mask was not pruned: its adapter is a plain LoRA one.
      CONDENSE_CHECK(masks && !masks->empty(), "masklora keeps pruning masks, but the model has "
                     "none (prune it first, or use lora / scalelora)");
      const at::Tensor* m = masks->find(name);
      if (m) ad.mask = m->to(w.scalar_type());
    }
    order_.push_back(name);
    adapters_.emplace(name, std::move(ad));
  }
}

at::Tensor LoraAdapters::effective(const std::string& name, const at::Tensor& w) const {
  auto it = adapters_.find(name);
  if (it == adapters_.end()) return w;
  const Adapter& ad = it->second;
  at::Tensor ba = at::matmul(ad.b, ad.a);
  if (spec_.kind == "scalelora") return w * (ba + 1.0);
  const double s = spec_.alpha / static_cast<double>(spec_.rank);
  if (ad.mask.defined()) return w + (ba * ad.mask) * s;
  return w + ba * s;
}

at::Tensor LoraAdapters::weight(const std::string& name, const at::Tensor& w) {
  return effective(name, w);
}

std::vector<std::pair<std::string, at::Tensor>> LoraAdapters::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const std::string& name : order_) {
    const Adapter& ad = adapters_.at(name);
    out.emplace_back(adapter_key(name, "A"), ad.a);
    out.emplace_back(adapter_key(name, "B"), ad.b);
  }
  return out;
}

int64_t LoraAdapters::num_parameters() const {
  int64_t n = 0;
  for (const auto& kv : adapters_) n += kv.second.a.numel() + kv.second.b.numel();
  return n;
}

void LoraAdapters::merge(LlamaForCausalLM& model) const {
  at::NoGradGuard no_grad;
  auto params = parameter_map(model);
  for (const std::string& name : order_) {
    at::Tensor& w = params.at(name);
    w.copy_(effective(name, w));
  }
}

std::map<std::string, at::Tensor> LoraAdapters::state() const {
  return {{"lora/kind", at::full({1}, kind_id(spec_.kind), at::kLong)},
          {"lora/alpha", at::full({1}, spec_.alpha, at::kDouble)}};
}

std::vector<std::string> adapter_targets(LlamaForCausalLM& model, const RecoveryConfig& rc,
                                         const WeightMasks& masks) {
  if (rc.targets.empty() && rc.method == "perp") {
    std::vector<std::string> names;
    for (const auto& kv : masks.masks()) names.push_back(kv.first);
    CONDENSE_CHECK(!names.empty(), "recovery.method perp puts adapters on the pruned matrices, "
                   "but the init checkpoint has no masks; prune it first or name recovery.targets");
    return names;
  }
  MaskPruneOptions select;  // the same target selection (and errors) as pruning
  select.targets = rc.targets;
  return mask_prune_targets(model, select);
}

bool merge_stored_adapters(LlamaForCausalLM& model, const H5File& file) {
  if (!file.has("lora/kind")) return false;
  int64_t id = file.read_tensor("lora/kind").item<int64_t>();
  CONDENSE_CHECK(id >= 0 && id < static_cast<int64_t>(kKinds.size()), "{}: 'lora/kind' is {}, "
                 "expected 0 (lora), 1 (masklora) or 2 (scalelora)", file.path(), id);
  LoraSpec spec;
  spec.kind = kKinds[id];
  spec.alpha = file.read_tensor("lora/alpha").item<double>();
  WeightMasks masks = WeightMasks::from_file(file);
  std::vector<std::string> names;
  for (auto& p : model->named_parameters()) {
    if (file.has(adapter_key(p.key(), "A"))) names.push_back(p.key());
  }
  CONDENSE_CHECK(!names.empty(), "{}: 'lora/kind' is set but no 'lora.<layer>.A' tensor matches "
                 "this model", file.path());
  spec.rank = file.shape(adapter_key(names.front(), "A")).at(0);
  LoraAdapters adapters(model, names, spec, &masks);
  {
    at::NoGradGuard no_grad;
    for (auto& [key, t] : adapters.parameters()) {
      at::Tensor src = file.read_tensor(key);
      CONDENSE_CHECK(src.sizes() == t.sizes(), "{}: '{}' has shape {}, expected {}", file.path(),
                     key, shape_str(src.sizes()), shape_str(t.sizes()));
      t.copy_(src);
    }
  }
  adapters.merge(model);
  return true;
}

void LoraAdapters::to(c10::Device device) {
  for (auto& [name, ad] : adapters_) {
    ad.a = ad.a.detach().to(device).requires_grad_(ad.a.requires_grad());
    ad.b = ad.b.detach().to(device).requires_grad_(ad.b.requires_grad());
    if (ad.mask.defined()) ad.mask = ad.mask.to(device);
  }
}

}  // namespace condense
