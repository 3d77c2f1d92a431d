// GGUF v3 writer (layout in io/gguf_format.h). Metadata is written in the order it is added;
// tensors are converted from float tensors to F32, F16 (round to nearest even), BF16 or Q8_0
// (ggml's reference quantizer) while the file is written, each padded to the alignment.
// Shapes are given in PyTorch order and stored reversed as ggml's ne. The file is written
// atomically (temporary sibling, fsync, rename).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io/gguf_format.h"

namespace condense {

class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // `t`: a CPU floating tensor with 1 to 4 dimensions; for Q8_0 its last dimension must be a
  // multiple of 32. The tensor is kept (not copied) until write().
  void add_tensor(const std::string& name, const at::Tensor& t, GgmlType type);

  void write(const std::string& path) const;
  uint64_t tensor_data_bytes() const;  // the data section's size, padding included

 private:
  struct Pending {
    std::string name;
    at::Tensor tensor;
    GgmlType type;
    uint64_t nbytes;
  };
  void key(const std::string& k, GgufValueType t);
  std::vector<uint8_t> kv_;  // encoded metadata entries
  uint64_t n_kv_ = 0;
  std::vector<Pending> tensors_;
  uint32_t alignment_ = kGgufDefaultAlignment;
};

}  // namespace condense
