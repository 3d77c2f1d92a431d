// A validating GGUF reader (v2 and v3), without LibTorch so libFuzzer builds it alone. It reads
// what io/gguf_writer.h writes, and what llama.cpp's tools write in the types of kGgmlTypes
// (io/gguf_format.h: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K; decoded by
// io/gguf_quants.h). Metadata values come back as JSON (numbers, bools, strings, arrays) with
// their GGUF type kept beside them, so callers can check that a count is a u32. Every
// malformed input (truncation, lengths past the end, unknown value or tensor types, ne[0] not
// a multiple of the block size, misaligned, out-of-range or overlapping tensor data) is a
// condense::Error naming the source and the key or tensor; nothing is read out of bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/gguf_format.h"

namespace condense {

struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  GgufValueType array_type = GgufValueType::kU8;  // element type when type == kArray
  nlohmann::json value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] varies fastest (PyTorch shape reversed)
  uint32_t type = 0;        // GgmlType (one of kGgmlTypes)
  uint64_t offset = 0;      // within the data section
  uint64_t nbytes = 0;      // of the raw (possibly quantized) data at GgufReader::data_of
  int64_t numel() const;
  std::vector<int64_t> torch_shape() const;  // ne reversed
};

class GgufReader {
 public:
  // Parses the image data[0, size), which must outlive the reader; `source` names it in errors.
  GgufReader(const uint8_t* data, size_t size, std::string source);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  bool has(const std::string& key) const { return kv_.count(key) > 0; }
  const GgufValue& get(const std::string& key) const;  // throws naming the missing key
  // A scalar integer value of one of the u32/i32/u64... types, range-checked.
  uint64_t get_uint(const std::string& key) const;
  const GgufTensorInfo& tensor(const std::string& name) const;
  bool has_tensor(const std::string& name) const { return index_.count(name) > 0; }
  // The tensor's values as float32 in ggml order, decoded by io/gguf_quants.h
  // (dequantize_into); at::Tensor callers use condense::dequantize(reader, info).
  std::vector<float> dequantize(const GgufTensorInfo& t) const;
  // The raw bytes of a tensor of this reader: data_of(t)[0, t.nbytes), in ggml type t.type.
  const uint8_t* data_of(const GgufTensorInfo& t) const { return data_ + data_start_ + t.offset; }
  const std::string& source() const { return source_; }

 private:
  const uint8_t* data_;
  size_t size_;
  std::string source_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_start_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace condense
