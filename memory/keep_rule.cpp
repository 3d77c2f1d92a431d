#include "memory/keep_rule.h"

namespace condense {

int64_t tensor_bytes(const at::Tensor& t) {
  return static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
}

void KeepRule::add_parameters(const std::vector<at::Tensor>& params) {
  for (const auto& p : params) parameter_storages.insert(p.storage().data());
}

bool KeepRule::is_parameter(const at::Tensor& t) const {
  return t.has_storage() && parameter_storages.count(t.storage().data()) > 0;
}

bool KeepRule::keep(const at::Tensor& t) const {
  if (!t.defined() || !t.has_storage() || t.is_sparse()) return true;
  if (tensor_bytes(t) < min_bytes) return true;
  return is_parameter(t);
}

}  // namespace condense
