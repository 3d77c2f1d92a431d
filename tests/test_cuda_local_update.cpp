// Local-update training (comm.sync.mode diloco) and momentum compression (onebit_adam,
// zero_one_adam) on CUDA tensors against the same runs on the CPU, over the self and the
// one-rank NCCL communicator (Cuda.*, skipped without a GPU), and the CPU harness they rely on
// (DevicePath.*). The inner loops are simulated (moves and gradients generated on the CPU), so
// what is compared is the modes' own arithmetic on each device. The codecs themselves are in
// test_cuda_comm.cpp.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <string>
#include <utility>
#include <vector>

#include "comm/codec.h"
#include "comm/local_update.h"
#include "tests/comm_test_support.h"
#include "tests/test_support.h"
#include "trainer/onebit_adam.h"

namespace condense {
namespace {

using test::bitwise_equal;
using test::cfg;
using test::device_communicators;
using test::kCuda;
using test::Result;
using test::run_codec;
using test::self;
using test::test_vector;
using test::three_tensor_layout;

// The shapes of test_cuda_comm.cpp's IntegerMlp, small integers, on `device`.
std::vector<std::pair<std::string, at::Tensor>> integer_params(at::Device device, bool requires_grad) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"w1", {32, 16}}, {"b1", {32}}, {"w2", {8, 32}}, {"b2", {8}}})
    out.push_back({name, at::randint(-2, 3, shape, g, at::kFloat).to(device).requires_grad_(requires_grad)});
  return out;
}

struct LocalCase {
  std::string label;
  SyncConfig sync;
  CompressionConfig c;
  double tol;  // CUDA against CPU; 0: bitwise
};

std::vector<LocalCase> local_cases() {
  SyncConfig nesterov;
  nesterov.mode = "diloco";
  nesterov.inner_steps = 4;
  nesterov.outer_lr = 0.5;  // powers of two: the outer steps are exact
  nesterov.outer_momentum = 0.5;
  SyncConfig sgd = nesterov;
  sgd.outer_optimizer = "sgd";
  sgd.outer_lr = 1.0;
  sgd.outer_momentum = 0;
  SyncConfig streamed = nesterov;
  streamed.fragments = 2;
  auto sparseloco = [](int64_t bits, double decay) {
    CompressionConfig c = cfg("sparseloco");
    c.chunk = 64;  // 8 x 8 tiles of w1 and w2, runs of the biases (padded)
    c.k = 4;
    c.bits = bits;
    c.error_control = "ef";
    c.decay = decay;
    return c;
  };
  CompressionConfig qsgd = cfg("qsgd");
  qsgd.block = 64;
  qsgd.error_control = "ef";
  // The inner moves are multiples of 1/4, so pseudo-gradients tie everywhere (SparseLoCo's tie
  // rule decides) and every value stays exact except where noted.
  return {
      {"none/nesterov", nesterov, cfg("none"), 0},
      {"none/nesterov, 2 fragments", streamed, cfg("none"), 0},
      {"sparseloco fp32/ef/sgd", sgd, sparseloco(32, 1.0), 0},
      {"sparseloco 2-bit/ef/nesterov", nesterov, sparseloco(2, 1.0), 0},
      {"qsgd/ef/sgd", sgd, qsgd, 0},
      // g + 0.95 e is one fused multiply-add in one device's kernel and two roundings in the
      // other's.
      {"sparseloco 2-bit/ef decay 0.95/sgd", sgd, sparseloco(2, 0.95), 1e-5},
  };
}

// The parameters (on the CPU) after each outer step of `rounds` rounds.
std::vector<std::vector<at::Tensor>> diloco_run(Communicator& comm, at::Device device,
                                                const LocalCase& k, int rounds) {
  auto params = integer_params(device, false);
  LocalUpdate local(comm, params, k.sync, k.c, /*bucket_cap_mb=*/0.0015);
  const int64_t total = rounds * k.sync.inner_steps;
  std::vector<std::vector<at::Tensor>> out;
  for (int64_t step = 1; step <= total; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1000 * step + i);
      at::Tensor& p = params[i].second;
      p.sub_(at::randint(-2, 3, p.sizes(), g, at::kFloat).div_(4).to(device));
    }
    std::vector<int64_t> due = local.fragments_due(step, total);
    if (due.empty()) continue;
    local.outer_step(due);
    std::vector<at::Tensor> now;
    for (const auto& [name, p] : params) now.push_back(p.cpu().clone());
    for (const auto& [name, a] : local.shared_state()) {
      EXPECT_EQ(a.device().type(), device.type()) << name;
      now.push_back(a.cpu());
    }
    at::Tensor errors = local.compression().state();
    if (errors.defined()) {
      EXPECT_EQ(errors.device().type(), device.type());
      now.push_back(errors.cpu());
    }
    out.push_back(std::move(now));
  }
  return out;
}

// The harness on the CPU: the runs repeat, and where only sums of the moves are exchanged every
// value stays a multiple of 2^-20 (no rounding at all, on any device). The other bitwise cases
// round, but only in elementwise operations, which every device rounds alike.
TEST(DevicePath, LocalUpdateHarnessIsExactOnCpu) {
  for (const LocalCase& k : local_cases()) {
    // Exchanged values that are sums of the moves (no levels, no decay) stay dyadic.
    const bool dyadic = k.c.codec == "none" || (k.c.codec == "sparseloco" && k.c.bits == 32 && k.c.decay == 1.0);
    auto a = diloco_run(self(), at::kCPU, k, 3), b = diloco_run(self(), at::kCPU, k, 3);
    ASSERT_EQ(a.size(), k.sync.fragments > 1 ? 6u : 3u) << k.label;
    test::expect_runs_match(a, b, 0, k.label + " run twice");
    if (!dyadic) continue;
    for (size_t r = 0; r < a.size(); ++r) {
      for (size_t t = 0; t < a[r].size(); ++t) {
        at::Tensor scaled = a[r][t].mul(1 << 20);
        EXPECT_TRUE(at::equal(scaled, scaled.round())) << k.label << " round " << r << " tensor " << t;
      }
    }
  }
}

TEST(Cuda, LocalUpdateOnCudaMatchesTheCpu) {
  SKIP_WITHOUT_CUDA();
  const auto comms = device_communicators();
  for (const LocalCase& k : local_cases()) {
    auto cpu = diloco_run(self(), at::kCPU, k, 3);
    for (const auto& [comm_name, comm] : comms)
      test::expect_runs_match(diloco_run(*comm, kCuda, k, 3), cpu, k.tol, k.label + " on " + comm_name);
  }
}

struct MomentumCase {
  std::string label;
  VarianceSchedule schedule;
  CompressionConfig c;
};

std::vector<MomentumCase> momentum_cases() {
  CompressionConfig sign = cfg("sign");
  sign.block = 64;
  sign.error_control = "ef";
  CompressionConfig sign_car = sign;
  sign_car.collective = "compressed_all_reduce";
  CompressionConfig topk = cfg("topk");
  topk.ratio = 0.1;
  topk.error_control = "ef";
  return {{"onebit_adam sign/ef", {3, 0}, sign},
          {"onebit_adam sign/ef compressed_all_reduce", {3, 0}, sign_car},
          {"zero_one_adam topk/ef", {8, 2}, topk}};
}

// The parameters, m and v (on the CPU) after each of `steps` steps of 1-bit / 0/1 Adam on
// gradients drawn on the CPU.
std::vector<std::vector<at::Tensor>> momentum_run(Communicator& comm, at::Device device,
                                                  const MomentumCase& k, int steps) {
  auto params = integer_params(device, true);
  OneBitAdam opt(params, AdamWOptions{0.9, 0.95, 1e-8, 0.1}, k.schedule, comm, k.c,
                 /*bucket_cap_mb=*/0.0015);
  std::vector<std::vector<at::Tensor>> out;
  for (int64_t t = 1; t <= steps; ++t) {
    for (size_t i = 0; i < params.size(); ++i) {
      at::Generator g = at::make_generator<at::CPUGeneratorImpl>(2000 * t + i);
      params[i].second.mutable_grad() = at::randn(params[i].second.sizes(), g, at::kFloat).to(device);
    }
    opt.step(0.01);  // a world of one: the dense exchange of a variance step is the identity
    std::vector<at::Tensor> now;
    for (const auto& [name, p] : params) now.push_back(p.detach().cpu().clone());
    for (const auto& [name, s] : opt.state()) {
      EXPECT_EQ(s.device().type(), device.type()) << name;
      now.push_back(s.cpu().clone());
    }
    out.push_back(std::move(now));
  }
  EXPECT_EQ(opt.compression().state().device().type(), device.type());
  return out;
}

TEST(Cuda, MomentumCompressionOnCudaMatchesTheCpu) {
  SKIP_WITHOUT_CUDA();
  // AdamW's kernels may fuse multiply-adds differently on the two devices, and sign's block
  // scale is a sum: close, not bitwise.
  const auto comms = device_communicators();
  for (const MomentumCase& k : momentum_cases()) {
    auto cpu = momentum_run(self(), at::kCPU, k, 10);
    for (const auto& [comm_name, comm] : comms)
      test::expect_runs_match(momentum_run(*comm, kCuda, k, 10), cpu, 1e-5, k.label + " on " + comm_name);
  }
}

// The two local-update codecs that are not bit for bit across devices: int8 (its shift, scale
// and bin means are reductions, summed in another order on CUDA) and SparseLoCo with the DCT
// (matrix products). Codes may differ where a value sits on a rounding boundary; everything
// else agrees to float rounding.
TEST(Cuda, ReducingLocalUpdateCodecsOnCudaAgreeWithTheCpu) {
  SKIP_WITHOUT_CUDA();
  const BucketLayout layout = three_tensor_layout();
  BucketLayout cuda_layout = layout;
  cuda_layout.device = kCuda;
  at::Tensor v = test_vector(layout.numel, 61, false);
  CompressionConfig int8 = cfg("int8");
  CompressionConfig dct = cfg("sparseloco");
  dct.chunk = 64;
  dct.k = 6;
  dct.bits = 32;
  dct.transform = "dct";
  for (const CompressionConfig& c : {int8, dct}) {
    auto cpu_codec = make_codec(c, layout, 1, true);
    auto cuda_codec = make_codec(c, cuda_layout, 1, true);
    Result cpu = run_codec(*cpu_codec, v, false, self());
    Result gpu = run_codec(*cuda_codec, v.to(kCuda), false, self());
    at::Tensor diff = (gpu.local.cpu() - cpu.local).abs();
    const double scale = v.abs().max().item<double>();
    const int64_t off = diff.gt(1e-5 * scale).sum().item<int64_t>();
    EXPECT_LE(off, layout.numel / 200) << c.codec << ": " << off << " of " << layout.numel
                                       << " elements differ by more than rounding";
    EXPECT_TRUE(bitwise_equal(gpu.mean, gpu.local)) << c.codec;  // a world of one
    EXPECT_NEAR((gpu.local.cpu() - v).norm().item<double>(), (cpu.local - v).norm().item<double>(),
                1e-3 * v.norm().item<double>()) << c.codec;
  }
}

}  // namespace
}  // namespace condense
