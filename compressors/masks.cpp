#include "compressors/masks.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "core/error.h"
#include "core/shape.h"
#include "io/hdf5_file.h"

namespace condense {

std::map<std::string, at::Tensor> parameter_map(LlamaForCausalLM& model) {
  std::map<std::string, at::Tensor> out;
  for (auto& p : model->named_parameters()) out.emplace(p.key(), p.value());
  return out;
}

void WeightMasks::set(const std::string& name, at::Tensor mask) {
  CONDENSE_CHECK(mask.scalar_type() == at::kBool, "mask for '{}' must be bool", name);
  masks_[name] = mask.contiguous();
}

const at::Tensor* WeightMasks::find(const std::string& name) const {
  auto it = masks_.find(name);
  return it == masks_.end() ? nullptr : &it->second;
}

void WeightMasks::apply(LlamaForCausalLM& model) const {
  if (masks_.empty()) return;
  at::NoGradGuard no_grad;
  auto params = parameter_map(model);
  for (const auto& [name, mask] : masks_) {
    auto it = params.find(name);
    CONDENSE_CHECK(it != params.end(), "a mask names '{}', which this model does not have", name);
    CONDENSE_CHECK(it->second.sizes() == mask.sizes(), "mask '{}' has shape {}, the weight {}",
                   name, shape_str(mask.sizes()), shape_str(it->second.sizes()));
    it->second.mul_(mask);
  }
}

void WeightMasks::mask_gradients(LlamaForCausalLM& model) const {
  if (masks_.empty()) return;
  auto params = parameter_map(model);
  for (const auto& [name, mask] : masks_) {
    auto it = params.find(name);
    if (it == params.end() || !it->second.grad().defined()) continue;
    it->second.mutable_grad().mul_(mask);
  }
}

void WeightMasks::mask_state(const std::map<std::string, at::Tensor>& state) const {
  at::NoGradGuard no_grad;
  for (const auto& [key, t] : state) {
    size_t slash = key.rfind('/');
    if (slash == std::string::npos) continue;
    const at::Tensor* mask = find(key.substr(0, slash));
    if (mask && t.sizes() == mask->sizes()) const_cast<at::Tensor&>(t).mul_(*mask);
  }
}

std::map<std::string, at::Tensor> WeightMasks::entries() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, mask] : masks_) out[kPrefix + name] = mask;
  return out;
}

WeightMasks WeightMasks::from_file(const H5File& file) {
  WeightMasks masks;
  if (!file.has("mask")) return masks;
  for (const std::string& name : file.datasets("mask")) {
    at::Tensor m = file.read_tensor(kPrefix + name);
    CONDENSE_CHECK(m.scalar_type() == at::kBool, "{}: '{}{}' is not a bool mask", file.path(),
                   kPrefix, name);
    masks.set(name, m);
  }
  return masks;
}

int64_t WeightMasks::masked_weights() const {
  int64_t n = 0;
  for (const auto& kv : masks_) n += kv.second.numel();
  return n;
}

int64_t WeightMasks::pruned_weights() const {
  int64_t n = 0;
  for (const auto& kv : masks_) n += kv.second.numel() - kv.second.sum().item<int64_t>();
  return n;
}

std::string WeightMasks::describe() const {
  if (masks_.empty()) return "no masks";
  int64_t total = masked_weights();
  return fmt::format("masks on {} matrices: {:.2f}% of {:.3f}M weights pruned", masks_.size(),
                     100.0 * pruned_weights() / std::max<int64_t>(total, 1), total / 1e6);
}

void WeightMasks::to(c10::Device device) {
  for (auto& [name, m] : masks_) m = m.to(device);
}

}  // namespace condense
