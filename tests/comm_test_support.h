// Helpers of the tests that compare compressed exchange on CUDA with the CPU
// (tests/test_cuda_comm.cpp, tests/test_cuda_local_update.cpp): tolerances, bucket layouts,
// one exchange of a codec, the process's one-rank NCCL communicator, and the comparison of two
// runs step by step.
#pragma once
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "comm/codec.h"
#include "comm/communicator.h"
#include "comm/nccl_communicator.h"
#include "tests/test_support.h"

namespace condense::test {

inline Communicator& self() { return self_communicator(); }

// |a - b| <= tol * max(1, max |b|), elementwise.
inline ::testing::AssertionResult close(const at::Tensor& a, const at::Tensor& b, double tol) {
  at::Tensor x = a.cpu().to(at::kDouble), y = b.cpu().to(at::kDouble);
  const double scale = std::max(1.0, y.abs().max().item<double>());
  const double diff = (x - y).abs().max().item<double>();
  if (diff <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| " << diff << " > " << tol << " * " << scale;
}

inline BucketLayout flat_layout(int64_t numel, at::Device device = at::kCPU) {
  return BucketLayout{{0}, {{numel}}, numel, device};
}

// A bucket of three tensors (for topk's tensor scope and powersgd's matrices).
inline BucketLayout three_tensor_layout(at::Device device = at::kCPU) {
  return BucketLayout{{0, 1200, 1230}, {{40, 30}, {30}, {20, 25}}, 1730, device};
}

inline CompressionConfig cfg(const std::string& codec) {
  CompressionConfig c;
  c.codec = codec;
  return c;
}

struct Result {
  at::Tensor local, mean;
};

inline Result run_codec(Codec& codec, const at::Tensor& v, bool force, Communicator& comm, uint64_t shared = 11,
                 uint64_t own = 12) {
  ExchangeStats stats;
  ExchangeContext ctx{comm, shared, own, stats};
  ctx.force_tensor_ops = force;
  at::Tensor local = at::full_like(v, 123.0), mean = at::full_like(v, 456.0);
  codec.exchange(v, &local, mean, ctx);
  return {local, mean};
}

// One NCCL communicator for the process, never destroyed (ncclCommDestroy during static
// destruction could race the CUDA runtime's own teardown).
inline Communicator* nccl() {
  static Communicator* c = [] {
    CommConfig cfg;
    cfg.backend = "nccl";
    cfg.device = "cuda";
    return make_communicator(cfg).release();
  }();
  return c;
}

// The communicators a CUDA run is compared through: self, and one-rank NCCL where built.
inline std::vector<std::pair<std::string, Communicator*>> device_communicators() {
  std::vector<std::pair<std::string, Communicator*>> comms = {{"self", &self()}};
  if (built_with_nccl()) comms.push_back({"nccl", nccl()});
  return comms;
}

#define SKIP_WITHOUT_NCCL()                                      \
  SKIP_WITHOUT_CUDA();                                           \
  if (!built_with_nccl()) GTEST_SKIP() << "built without NCCL"

// Runs of several steps, each a list of tensors: `got` equals `want` at every step, bit for bit
// when tol is 0, else to close(tol). `label` names the run in failures.
inline void expect_runs_match(const std::vector<std::vector<at::Tensor>>& got,
                              const std::vector<std::vector<at::Tensor>>& want, double tol,
                              const std::string& label) {
  ASSERT_EQ(got.size(), want.size()) << label;
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size()) << label << ", step " << s;
    for (size_t t = 0; t < want[s].size(); ++t) {
      const std::string where = label + ", step " + std::to_string(s) + ", tensor " + std::to_string(t);
      if (tol == 0) EXPECT_TRUE(bitwise_equal(got[s][t], want[s][t])) << where;
      else EXPECT_TRUE(close(got[s][t], want[s][t], tol)) << where;
    }
  }
}

}  // namespace condense::test
