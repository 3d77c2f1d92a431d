// KeepRule: which saved tensors a storage policy (offload, compression) leaves untouched.
// Parameters and views of parameters are never moved or compressed (they stay resident for the
// optimizer anyway, so moving them saves nothing and costs I/O); neither are tensors below a
// size threshold (their I/O and bookkeeping cost more than they free) nor non-floating tensors
// for compression (indices, masks).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <unordered_set>
#include <vector>

namespace condense {

struct KeepRule {
  std::unordered_set<const void*> parameter_storages;  // storage data pointers
  int64_t min_bytes = 65536;

  void add_parameters(const std::vector<at::Tensor>& params);
  bool is_parameter(const at::Tensor& t) const;
  // True when t must stay as it is.
  bool keep(const at::Tensor& t) const;
};

int64_t tensor_bytes(const at::Tensor& t);

}  // namespace condense
