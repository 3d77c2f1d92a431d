// Compressed saved activations: floating tensors autograd saves are stored as bf16 or as
// blockwise int8 (absmax scale per block of `block` elements, round to nearest) and expanded to
// their original dtype and layout when backward unpacks them. Lossy: gradients change; the
// error is measured in tests/test_memory.cpp and bench/RESULTS.md (memory: 2x for bf16, ~3.9x
// for int8 at block 256 versus fp32).
//
// Contract: tensors matched by KeepRule (parameters, small tensors) and non-floating tensors
// are kept as `t.detach()`. Thread-safe (no mutable state).
#pragma once
#include <memory>
#include <string>

#include "memory/keep_rule.h"
#include "memory/saved_tensor_hooks.h"

namespace condense {

enum class ActivationFormat { kFp32, kBf16, kInt8 };
ActivationFormat activation_format_from_name(const std::string& name);  // fp32 | bf16 | int8

// Blockwise absmax int8 quantization of a float tensor, flattened; exposed for tests.
struct Int8Blocks {
  at::Tensor q;       // int8 [blocks * block]
  at::Tensor scales;  // float [blocks]
  int64_t numel = 0;
};
Int8Blocks quantize_int8(const at::Tensor& t, int64_t block);
at::Tensor dequantize_int8(const Int8Blocks& q, at::ScalarType dtype);

class CompressedActivationHooks final : public SavedTensorHooks {
 public:
  CompressedActivationHooks(ActivationFormat format, KeepRule rule, int64_t int8_block = 256);
  std::any pack(const at::Tensor& t) override;
  at::Tensor unpack(const std::any& packed) override;

 private:
  ActivationFormat format_;
  KeepRule rule_;
  int64_t block_;
};

}  // namespace condense
