// Internal to comm/: constructors of the codecs (one file each) and helpers they share.
#pragma once
#include <chrono>

#include "comm/codec.h"

namespace condense {

std::unique_ptr<Codec> make_dense_codec(const std::string& name, int64_t numel, int world);
std::unique_ptr<Codec> make_topk_codec(const CompressionConfig& config, const BucketLayout& layout, int world);
std::unique_ptr<Codec> make_randk_codec(int64_t numel, int64_t k, bool unbiased);
std::unique_ptr<Codec> make_qsgd_codec(int64_t numel, int64_t levels, int64_t block);
std::unique_ptr<Codec> make_sign_codec(int64_t numel, int64_t block);
std::unique_ptr<Codec> make_powersgd_codec(const BucketLayout& layout, int64_t rank, uint64_t seed);
std::unique_ptr<Codec> make_int8_codec(const BucketLayout& layout, int world);
std::unique_ptr<Codec> make_compressed_all_reduce_codec(const CompressionConfig& config,
                                                        const BucketLayout& layout, int world);
std::unique_ptr<Codec> make_sparseloco_codec(const CompressionConfig& config, const BucketLayout& layout,
                                             int world);

// The non-empty tensors of a bucket as (offset, numel, shape); a layout that names no tensors is
// one 1-D tensor over the whole bucket. For codecs that work per tensor (int8, sparseloco).
struct TensorSegment {
  int64_t offset, numel;
  std::vector<int64_t> shape;
};
std::vector<TensorSegment> tensor_segments(const BucketLayout& layout);

// Adds the wall time of its scope to a counter.
class ScopedSeconds {
 public:
  explicit ScopedSeconds(double& sink) : sink_(sink), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedSeconds() {
    sink_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  double& sink_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace condense
