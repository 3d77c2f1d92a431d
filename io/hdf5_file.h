// HDF5 file access for checkpoints and token stores: named tensors, strings, byte blobs and
// scalar attributes. Names may contain '/' (intermediate groups are created) and '.' (kept:
// model tensors use Hugging Face names such as "model.layers.3.mlp.up_proj.weight").
//
// HDF5 1.10 has no bfloat16 type: bf16 tensors are stored as raw uint16 with the attribute
// dtype="bfloat16" and come back as bf16. Every failure throws condense::Error naming the file
// and the object. Not thread-safe (the Debian HDF5 build is not thread-safe); use one thread.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace condense {

class H5File {
 public:
  static H5File open_read(const std::string& path);  // fails if missing or not HDF5
  static H5File create(const std::string& path);     // truncates an existing file
  static H5File open_write(const std::string& path);  // an existing file, read-write
  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;
  ~H5File();

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const;
  // Names of the datasets directly under a group ("" = root), sorted.
  std::vector<std::string> datasets(const std::string& group = "") const;
  std::vector<int64_t> shape(const std::string& name) const;

  // Tensors: CPU, any layout (made contiguous). dtypes: f32 f64 f16 bf16 i64 i32 i16 u8 bool.
  void write_tensor(const std::string& name, const at::Tensor& t);
  void remove(const std::string& name);  // a dataset or group; nothing if absent
  at::Tensor read_tensor(const std::string& name) const;
  // Elements [offset, offset+count) of a 1-D dataset.
  at::Tensor read_slice(const std::string& name, int64_t offset, int64_t count) const;

  void write_string(const std::string& name, const std::string& value);  // UTF-8 text
  std::string read_string(const std::string& name) const;
  void write_bytes(const std::string& name, const std::string& bytes);  // uint8 dataset
  std::string read_bytes(const std::string& name) const;

  // Scalar attributes on an object ("" = the file's root group).
  void set_attr(const std::string& object, const std::string& key, const std::string& value);
  void set_attr(const std::string& object, const std::string& key, int64_t value);
  void set_attr(const std::string& object, const std::string& key, double value);
  bool has_attr(const std::string& object, const std::string& key) const;
  std::string attr_string(const std::string& object, const std::string& key) const;
  int64_t attr_int(const std::string& object, const std::string& key) const;
  double attr_double(const std::string& object, const std::string& key) const;
  void remove_attr(const std::string& object, const std::string& key);  // nothing if absent

  // Flushes HDF5's buffers and closes the file; the handle is unusable afterwards.
  void close();

 private:
  H5File(std::string path, int64_t id) : path_(std::move(path)), id_(id) {}
  std::string path_;
  int64_t id_ = -1;  // hid_t
};

}  // namespace condense
