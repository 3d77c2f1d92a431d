// A whole file mapped read-only (private mapping), unmapped when the last holder lets go. For
// readers of large model files (safetensors, GGUF) that touch a small part of them or copy out
// of them once: the pages come from the page cache instead of a second copy in memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace condense {

class MappedFile {
 public:
  // Errors name the path: missing, a directory or other non-regular file, unreadable, mmap failure.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }  // nullptr for an empty file
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace condense
