// Device-generic compression (comm/codec.h "Devices"):
//  - DevicePath.*: on CPU, every codec's tensor-op path (the path CUDA buckets take, forced
//    with ExchangeContext::force_tensor_ops) against its CPU path, bit for bit (powersgd to a
//    tight tolerance). These run everywhere, so CI without a GPU covers the CUDA logic.
//  - Cuda.*: the same codecs and error control on CUDA against the CPU, the one-rank NCCL
//    communicator (no mpirun) and its watchdog, and GradientSync with compression on CUDA
//    buckets against the same run on the CPU. Each test skips itself when no CUDA device is
//    visible. The local-update and momentum-compression modes are in test_cuda_local_update.cpp.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/Sleep.h>
#include <c10/core/StreamGuard.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <thread>

#include "comm/codec.h"
#include "comm/codec_kernels.h"
#include "comm/communicator.h"
#include "comm/error_control.h"
#include "comm/grad_sync.h"
#include "comm/nccl_communicator.h"
#include "comm/quantized_element.h"
#include "comm/topk_select.h"
#include "core/random.h"
#include "tests/comm_test_support.h"
#include "tests/test_support.h"

namespace condense {
namespace {

using test::bitwise_equal;
using test::cfg;
using test::close;
using test::device_communicators;
using test::flat_layout;
using test::kCuda;
using test::nccl;
using test::Result;
using test::run_codec;
using test::self;
using test::test_vector;
using test::three_tensor_layout;

struct Named {
  std::string label;
  CompressionConfig config;
  bool three_tensors = false;
};

// Every codec setting the tests sweep (powersgd is separate: not bitwise).
std::vector<Named> bitwise_codecs() {
  std::vector<Named> out;
  out.push_back({"none", cfg("none")});
  out.push_back({"fp16", cfg("fp16")});
  out.push_back({"bf16", cfg("bf16")});
  CompressionConfig topk = cfg("topk");
  topk.ratio = 0.03;
  out.push_back({"topk", topk});
  topk.scope = "tensor";
  out.push_back({"topk/tensor", topk, true});
  CompressionConfig randk = cfg("randk");
  randk.ratio = 0.1;
  out.push_back({"randk", randk});
  for (int64_t levels : {1, 3, 7, 127}) {
    CompressionConfig q = cfg("qsgd");
    q.levels = levels;
    q.block = 100;  // does not divide the bucket sizes below: a short last block
    out.push_back({"qsgd/s" + std::to_string(levels), q});
  }
  CompressionConfig sign = cfg("sign");
  sign.block = 64;
  out.push_back({"sign", sign});
  // 1-bit Adam's compressed all-reduce (a world of one: all-to-all, server re-compression,
  // all-gather).
  sign.collective = "compressed_all_reduce";
  out.push_back({"sign/compressed_all_reduce", sign});
  CompressionConfig qsgd = cfg("qsgd");
  qsgd.block = 100;
  qsgd.collective = "compressed_all_reduce";
  out.push_back({"qsgd/compressed_all_reduce", qsgd});
  // SparseLoCo without the DCT: tensor ops on every device, its selection's ties to the lower
  // index, the levels elementwise with true divisions, so CUDA gives the CPU's bits (at 4 bits, 6
  // of the 16 levels (2j - 15) / 15 differ in their last bit when divided by a reciprocal).
  for (int64_t bits : {2, 4, 32}) {
    CompressionConfig sl = cfg("sparseloco");
    sl.chunk = 256;
    sl.ratio = 0.05;
    sl.bits = bits;
    out.push_back({"sparseloco/" + std::to_string(bits) + "bit", sl, true});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// CPU: the tensor-op path against the CPU path.

TEST(DevicePath, TopKSelectionMatchesTheCpuSelection) {
  std::vector<at::Tensor> inputs;
  for (int64_t n : {1, 17, 1000, 70000}) {
    inputs.push_back(test_vector(n, 100 + n, false));
    inputs.push_back(test_vector(n, 200 + n, true));
  }
  inputs.push_back(at::zeros({5000}));  // everything tied
  // Special values: NaN of both signs (the largest magnitude), inf, -0, denormals.
  at::Tensor special = test_vector(3000, 7, true);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  special[10] = nan;
  special[20] = -nan;
  special[30] = inf;
  special[40] = -inf;
  special[50] = std::numeric_limits<float>::denorm_min();
  special[60] = -std::numeric_limits<float>::denorm_min();
  inputs.push_back(special);
  for (const at::Tensor& x : inputs) {
    const int64_t n = x.numel();
    for (int64_t k : {int64_t{0}, int64_t{1}, n / 100, n / 10, n / 2, n - 1, n}) {
      if (k < 0 || k > n) continue;
      at::Tensor expected = topk_abs_indices(x, k);
      at::Tensor got = topk_abs_indices_tensor_ops(x, k);
      ASSERT_TRUE(bitwise_equal(got, expected)) << "n " << n << " k " << k;
    }
  }
}

TEST(DevicePath, EveryCodecMatchesItsCpuPathBitForBit) {
  for (const Named& c : bitwise_codecs()) {
    for (bool ties : {false, true}) {
      BucketLayout layout = c.three_tensors ? three_tensor_layout() : flat_layout(5003);
      at::Tensor v = test_vector(layout.numel, 31, ties);
      // One codec per path: some keep state (the compressed all-reduce's server error).
      auto cpu_codec = make_codec(c.config, layout, 1, /*error_control=*/false);
      auto ops_codec = make_codec(c.config, layout, 1, /*error_control=*/false);
      Result cpu = run_codec(*cpu_codec, v, false, self());
      Result ops = run_codec(*ops_codec, v, true, self());
      EXPECT_TRUE(bitwise_equal(ops.local, cpu.local)) << c.label << " ties " << ties;
      EXPECT_TRUE(bitwise_equal(ops.mean, cpu.mean)) << c.label << " ties " << ties;
    }
  }
}

TEST(DevicePath, QuantizedPayloadsAreTheSameBytes) {
  // The payloads themselves (scales and packed codes), including an all-zero block, a short
  // last block and values of both signs of zero; and decoding one path's payload with the
  // other path. Blocks below, at and above the 64 partial sums of the scales' order, and not
  // multiples of them.
  for (int64_t levels : {0, 1, 3, 7, 127}) {
    for (int64_t block : {1, 12, 63, 64, 100, 512}) {
      for (int64_t numel : {1, 9, 1000, 4097}) {
        QuantizedFormat f(numel, levels, block);
        at::Tensor v = test_vector(numel, 5 + numel, true).mul_(3);
        v.narrow(0, 0, std::min<int64_t>(numel, block)).zero_();
        if (numel > 100) v[70] = -0.0f;
        at::Tensor a = at::empty({f.payload_bytes()}, at::kByte), b = at::empty_like(a);
        quantized_encode(f, v, 99, a, false);
        quantized_encode(f, v, 99, b, true);
        const std::string what = "levels " + std::to_string(levels) + " block " + std::to_string(block) +
                                 " numel " + std::to_string(numel);
        ASSERT_TRUE(bitwise_equal(b, a)) << what;
        at::Tensor x = at::full({numel}, 0.5f), y = x.clone();
        quantized_decode_add(f, a, x, false);
        quantized_decode_add(f, a, y, true);
        ASSERT_TRUE(bitwise_equal(y, x)) << what;
      }
    }
  }
}

TEST(DevicePath, CounterUniformIsTheLoopsRandomStream) {
  const uint64_t seed = 0xDEADBEEFCAFEull;
  at::Tensor u = counter_uniform(seed, 5000, at::kCPU);
  // An independent statement of the formula: lowbias32 of key ^ golden * (i + 1) in 64-bit
  // arithmetic reduced mod 2^32, key the low half of splitmix64's finalizer of the seed.
  const uint64_t key = mix64(seed) & 0xffffffffull;
  auto reference = [&](int64_t i) {
    uint64_t x = key ^ ((0x9E3779B9ull * static_cast<uint64_t>(i + 1)) % (1ull << 32));
    x ^= x >> 16;
    x = (x * 0x7feb352dull) % (1ull << 32);
    x ^= x >> 15;
    x = (x * 0x846ca68bull) % (1ull << 32);
    x ^= x >> 16;
    return static_cast<float>(x >> 8) / 16777216.0f;
  };
  // Up to the top of the index range (no tensor that long here: uniform_at alone there).
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{100}, int64_t{4999}, int64_t{1} << 30,
                    (int64_t{1} << 31) - 2}) {
    if (i < u.numel()) EXPECT_EQ(u[i].item<float>(), reference(i)) << i;
    EXPECT_EQ(quantized::uniform_at(quantized::uniform_key(seed), i), reference(i)) << i;
  }
  // Every element of the tensor-op stream is the loops' uniform_at.
  for (int64_t i = 0; i < 5000; ++i)
    ASSERT_EQ(u[i].item<float>(), quantized::uniform_at(quantized::uniform_key(seed), i)) << i;
  EXPECT_GE(u.min().item<float>(), 0.0f);
  EXPECT_LT(u.max().item<float>(), 1.0f);
  EXPECT_NEAR(u.mean().item<double>(), 0.5, 0.02);
}

TEST(DevicePath, PowerSgdMatchesItsCpuPathClosely) {
  // A full-rank matrix, a rank-1 one (dead columns of Q get re-seeded), and a vector; several
  // steps, so the warm-started Q of each path carries over.
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(8);
  at::Tensor m1 = at::randn({40, 30}, g);
  at::Tensor m2 = at::mm(at::randn({20, 1}, g), at::randn({1, 25}, g));
  at::Tensor v = at::cat({m1.reshape(-1), at::randn({30}, g), m2.reshape(-1)});
  CompressionConfig c = cfg("powersgd");
  c.rank = 3;
  auto cpu_codec = make_codec(c, three_tensor_layout(), 1, false);
  auto ops_codec = make_codec(c, three_tensor_layout(), 1, false);
  for (int step = 0; step < 4; ++step) {
    at::Tensor x = v + 0.1 * step;
    Result cpu = run_codec(*cpu_codec, x, false, self(), 20 + step);
    Result ops = run_codec(*ops_codec, x, true, self(), 20 + step);
    EXPECT_TRUE(close(ops.mean, cpu.mean, 1e-5)) << "step " << step;
    EXPECT_TRUE(close(ops.local, cpu.local, 1e-5)) << "step " << step;
  }
  for (size_t i = 0; i < cpu_codec->state().size(); ++i)
    EXPECT_TRUE(close(ops_codec->state()[i], cpu_codec->state()[i], 1e-5)) << i;
}

TEST(DevicePath, ErrorControlMatchesTheCpuPathBitForBit) {
  // Error control is tensor ops on both paths; what differs is the codec's path.
  for (const std::string kind : {"ef", "ef21", "econtrol"}) {
    CompressionConfig c = cfg("topk");
    c.ratio = 0.05;
    auto codec = make_codec(c, flat_layout(3000), 1, true);
    ErrorControl a(kind, 0.3, 3000), b(kind, 0.3, 3000);
    for (int step = 0; step < 5; ++step) {
      at::Tensor g = test_vector(3000, 40 + step, step % 2 == 1);
      at::Tensor ga = g.clone(), gb = g.clone();
      ExchangeStats stats;
      ExchangeContext ca{self(), 1, 2, stats}, cb{self(), 1, 2, stats};
      cb.force_tensor_ops = true;
      a.step(ga, *codec, ca);
      b.step(gb, *codec, cb);
      ASSERT_TRUE(bitwise_equal(gb, ga)) << kind << " step " << step;
    }
    for (size_t i = 0; i < a.state().size(); ++i) EXPECT_TRUE(bitwise_equal(b.state()[i], a.state()[i])) << kind;
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA.

TEST(Cuda, EveryCodecOnCudaMatchesTheCpuBitForBit) {
  SKIP_WITHOUT_CUDA();
  for (const Named& c : bitwise_codecs()) {
    for (bool ties : {false, true}) {
      BucketLayout cpu_layout = c.three_tensors ? three_tensor_layout() : flat_layout(100003);
      BucketLayout cuda_layout = cpu_layout;
      cuda_layout.device = kCuda;
      at::Tensor v = test_vector(cpu_layout.numel, 32, ties);
      auto cpu_codec = make_codec(c.config, cpu_layout, 1, false);
      auto cuda_codec = make_codec(c.config, cuda_layout, 1, false);
      Result cpu = run_codec(*cpu_codec, v, false, self());
      Result gpu = run_codec(*cuda_codec, v.to(kCuda), false, self());
      ASSERT_TRUE(gpu.mean.is_cuda() && gpu.local.is_cuda()) << c.label;
      EXPECT_TRUE(bitwise_equal(gpu.local, cpu.local)) << c.label << " ties " << ties;
      EXPECT_TRUE(bitwise_equal(gpu.mean, cpu.mean)) << c.label << " ties " << ties;
    }
  }
  // The selection alone on a larger input with many ties (several topk passes on the GPU).
  at::Tensor x = test_vector(3000000, 33, true);
  for (int64_t k : {int64_t{1}, int64_t{30000}, int64_t{1500000}})
    EXPECT_TRUE(bitwise_equal(topk_abs_indices_tensor_ops(x.to(kCuda), k), topk_abs_indices(x, k))) << k;
}

TEST(Cuda, PowerSgdOnCudaMatchesTheCpuClosely) {
  SKIP_WITHOUT_CUDA();
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(9);
  at::Tensor v = at::randn({1730}, g);
  CompressionConfig c = cfg("powersgd");
  c.rank = 3;
  BucketLayout cuda_layout = three_tensor_layout(kCuda);
  auto cpu_codec = make_codec(c, three_tensor_layout(), 1, false);
  auto cuda_codec = make_codec(c, cuda_layout, 1, false);
  ASSERT_TRUE(cuda_codec->state().front().is_cuda());
  for (int step = 0; step < 4; ++step) {
    at::Tensor x = v + 0.1 * step;
    Result cpu = run_codec(*cpu_codec, x, false, self(), 20 + step);
    Result gpu = run_codec(*cuda_codec, x.to(kCuda), false, self(), 20 + step);
    EXPECT_TRUE(close(gpu.mean, cpu.mean, 1e-4)) << "step " << step;
    EXPECT_TRUE(close(gpu.local, cpu.local, 1e-4)) << "step " << step;
  }
}

TEST(Cuda, ErrorControlOnCudaMatchesTheCpu) {
  SKIP_WITHOUT_CUDA();
  // EF and EF21 are exactly rounded adds and subtractions around a deterministic codec: bitwise.
  // EControl's eta e + (g - h_i) may be fused (one rounding) by one device's kernel and not the
  // other's, so it is held to a tolerance (and reports whether it was bitwise).
  const int64_t n = 20000;
  for (const std::string codec_name : {"topk", "qsgd", "sign"}) {
    for (const std::string kind : {"ef", "ef21", "econtrol"}) {
      CompressionConfig c = cfg(codec_name);
      c.ratio = 0.02;
      auto cpu_codec = make_codec(c, flat_layout(n), 1, true);
      auto cuda_codec = make_codec(c, flat_layout(n, kCuda), 1, true);
      ErrorControl cpu(kind, 0.3, n), gpu(kind, 0.3, n, kCuda);
      for (int step = 0; step < 5; ++step) {
        at::Tensor g = test_vector(n, 50 + step, step % 2 == 1);
        at::Tensor gc = g.clone(), gg = g.to(kCuda);
        ExchangeStats stats;
        ExchangeContext ctx{self(), 100 + static_cast<uint64_t>(step), 200, stats};
        cpu.step(gc, *cpu_codec, ctx);
        gpu.step(gg, *cuda_codec, ctx);
        const std::string where = codec_name + "/" + kind + " step " + std::to_string(step);
        if (kind == "econtrol") {
          EXPECT_TRUE(close(gg, gc, 1e-5)) << where;
          if (!bitwise_equal(gg, gc)) std::cout << "note: " << where << " is close, not bitwise\n";
        } else {
          ASSERT_TRUE(bitwise_equal(gg, gc)) << where;
        }
      }
      for (size_t i = 0; i < cpu.state().size(); ++i) {
        ASSERT_TRUE(gpu.state()[i].is_cuda());
        EXPECT_TRUE(close(gpu.state()[i], cpu.state()[i], 1e-5)) << codec_name << "/" << kind;
      }
    }
  }
}

TEST(Cuda, NcclStagesCpuTensorsThroughTheDevice) {
  SKIP_WITHOUT_NCCL();
  // The trainer reduces its loss and stop flag and gathers RNG states as CPU tensors.
  Communicator& comm = *nccl();
  at::Tensor mean = at::tensor(std::vector<double>{1.5, -2.0, 7.0}, at::kDouble);
  comm.all_reduce_sum(mean);
  EXPECT_TRUE(mean.device().is_cpu());
  EXPECT_TRUE(at::equal(mean, at::tensor(std::vector<double>{1.5, -2.0, 7.0}, at::kDouble)));
  std::vector<double> r = all_reduce_mean(comm, {0.25, 3.0});
  EXPECT_EQ(r, (std::vector<double>{0.25, 3.0}));
  at::Tensor state = at::arange(100, at::kByte);
  std::vector<at::Tensor> parts = comm.gather_v(state, 0);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_TRUE(parts[0].device().is_cpu());
  EXPECT_TRUE(at::equal(parts[0], state));
  at::Tensor b = at::arange(5, at::kLong);
  comm.broadcast(b, 0);
  EXPECT_TRUE(at::equal(b, at::arange(5, at::kLong)));
  at::Tensor out = at::empty({4}, at::kFloat);
  comm.all_gather(at::arange(4, at::kFloat), out);
  EXPECT_TRUE(at::equal(out, at::arange(4, at::kFloat)));
  check_same_on_all_ranks(comm, "recipe", "the resolved recipe");
}

TEST(Cuda, OneRankNcclCommunicatorWithoutMpirun) {
  SKIP_WITHOUT_NCCL();
  Communicator& comm = *nccl();
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.backend(), "nccl");
  ASSERT_TRUE(comm.stream().has_value());
  EXPECT_TRUE(comm.stream()->device().is_cuda());
  auto opts = at::TensorOptions(kCuda);
  // Work queued on the caller's stream before a collective is seen by it, and the collective's
  // result by work queued after it (the communicator orders its stream with the caller's).
  for (at::ScalarType type : {at::kFloat, at::kHalf, at::kBFloat16, at::kLong, at::kInt, at::kByte}) {
    at::Tensor t = at::zeros({1 << 20}, opts.dtype(type));
    t.add_(3);
    comm.all_reduce_sum(t);
    EXPECT_TRUE(at::equal(t.cpu(), at::full({1 << 20}, 3, at::TensorOptions(type)))) << type;
  }
  at::Tensor in = at::arange(1000, opts.dtype(at::kFloat));
  at::Tensor out = at::empty({1000}, opts);
  comm.all_gather(in.mul(2), out);
  EXPECT_TRUE(at::equal(out.cpu(), at::arange(1000, at::kFloat).mul(2)));
  // The same orderings made observable (a one-rank in-place all-reduce is a no-op in NCCL, and
  // the copies above finish too fast to race): the caller's stream spins ~50 ms before it writes
  // the input, so a collective that did not wait for it would copy the -1s; the communicator's
  // stream spins before the collective, so work the caller queues after it that did not wait
  // would run first and be overwritten.
  {
    const int64_t n = 1 << 22;
    at::Tensor expect = at::arange(n, opts.dtype(at::kFloat));
    at::Tensor src = at::full({n}, -1.0f, opts), dst = at::full({n}, -1.0f, opts);
    torch::cuda::synchronize();
    at::cuda::sleep(100'000'000);  // on the caller's stream, at ~2 GHz
    src.copy_(expect);
    {
      c10::StreamGuard on_comm(*comm.stream());
      at::cuda::sleep(100'000'000);
    }
    comm.all_gather(src, dst);
    dst.add_(1);
    EXPECT_TRUE(at::equal(dst.cpu(), expect.add(1).cpu()));
  }
  std::vector<at::Tensor> parts = comm.all_gather_v(at::arange(7, opts.dtype(at::kLong)));
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_TRUE(at::equal(parts[0].cpu(), at::arange(7, at::kLong)));
  at::Tensor b = at::arange(5, opts.dtype(at::kInt));
  comm.broadcast(b, 0);
  EXPECT_TRUE(at::equal(b.cpu(), at::arange(5, at::kInt)));
  at::Tensor rs = at::empty({6}, opts);
  comm.reduce_scatter_sum(at::arange(6, opts.dtype(at::kFloat)).add(1), rs);
  EXPECT_TRUE(at::equal(rs.cpu(), at::arange(6, at::kFloat).add(1))) << rs.cpu();
  // all_to_all (grouped ncclSend/ncclRecv; the compressed all-reduce's first round), bytes as
  // its payloads are, and a CPU tensor staged through the device.
  at::Tensor a2a = at::empty({1001}, opts.dtype(at::kByte));
  comm.all_to_all(at::arange(1001, opts.dtype(at::kInt)).remainder(251).to(at::kByte), a2a);
  EXPECT_TRUE(at::equal(a2a.cpu(), at::arange(1001, at::kInt).remainder(251).to(at::kByte)));
  at::Tensor a2a_cpu = at::empty({5}, at::kFloat);
  comm.all_to_all(at::arange(5, at::kFloat), a2a_cpu);
  EXPECT_TRUE(at::equal(a2a_cpu, at::arange(5, at::kFloat)));
  comm.barrier();
  // Work queued on the communicator's own stream runs in order with its collectives.
  {
    c10::StreamGuard on_comm(*comm.stream());
    at::Tensor t = at::ones({4096}, opts);
    comm.all_reduce_sum(t);
    t.mul_(5);
    comm.all_reduce_sum(t);
    EXPECT_TRUE(at::equal(t.cpu(), at::full({4096}, 5.0f)));
  }
}

// The watchdog on NCCL (comm/watchdog.h): a collective queued behind a kernel that spins for
// about 20 s is reported after the 1 s timeout and the process ends (a death test: the child
// re-runs this test in a fresh process, CUDA included); one behind 0.1 s of spinning is not.
TEST(CudaDeathTest, NcclWatchdogEndsAStalledCollective) {
  SKIP_WITHOUT_NCCL();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string dir = (std::filesystem::temp_directory_path() / "condense_nccl_watchdog_test").string();
  auto stalled_all_reduce = [&](int64_t spin_cycles) {
    CommConfig cfg;
    cfg.backend = "nccl";
    cfg.device = "cuda";
    std::unique_ptr<Communicator> comm = make_communicator(cfg);
    comm->arm_watchdog(1.0, dir);
    c10::StreamGuard on_comm(*comm->stream());
    at::cuda::sleep(spin_cycles);  // at ~2 GHz
    at::Tensor t = at::ones({16}, at::TensorOptions(kCuda));
    comm->all_reduce_sum(t);
    std::this_thread::sleep_for(std::chrono::seconds(3));
    EXPECT_TRUE(at::equal(t.cpu(), at::ones({16})));
  };
  EXPECT_EXIT({ stalled_all_reduce(int64_t{1} << 35); std::exit(0); }, ::testing::ExitedWithCode(1),
              "collective ncclAllReduce #[0-9]+ \\(64 bytes\\) has not finished after [0-9]+ s "
              "\\(comm.timeout_s = 1\\); a single rank: its device never finished it");
  EXPECT_EXIT({ stalled_all_reduce(int64_t{200} << 20); std::exit(::testing::Test::HasFailure() ? 2 : 0); },
              ::testing::ExitedWithCode(0), "");
  std::filesystem::remove_all(dir);
}

// A two-layer MLP whose weights, inputs and loss weights are small integers, so that every
// gradient is an exact small integer on any device (no rounding in matmuls or sums): the
// compressed exchanges then see identical inputs on the CPU and on CUDA.
struct IntegerMlp {
  at::Tensor w1, b1, w2, b2;
  explicit IntegerMlp(at::Device device) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
    auto make = [&](std::vector<int64_t> shape) {
      return at::randint(-2, 3, shape, g, at::kFloat).to(device).requires_grad_(true);
    };
    w1 = make({32, 16});
    b1 = make({32});
    w2 = make({8, 32});
    b2 = make({8});
  }
  std::vector<std::pair<std::string, at::Tensor>> params() const {
    return {{"w1", w1}, {"b1", b1}, {"w2", w2}, {"b2", b2}};
  }
  at::Tensor loss(int step) const {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(100 + step);
    at::Tensor x = at::randint(-2, 3, {6, 16}, g, at::kFloat).to(w1.device());
    at::Tensor c = at::randint(-2, 3, {6, 8}, g, at::kFloat).to(w1.device());
    at::Tensor h = at::relu(at::addmm(b1, x, w1.t()));
    return (at::addmm(b2, h, w2.t()) * c).sum();
  }
};

// Gradients after each of `steps` synchronized steps (GradientSync with `config`).
std::vector<std::vector<at::Tensor>> train_grads(Communicator& comm, at::Device device,
                                                 const GradSyncConfig& config, int steps) {
  IntegerMlp mlp(device);
  GradientSync sync(comm, mlp.params(), config);
  EXPECT_EQ(sync.buckets().size(), 2u);
  std::vector<std::vector<at::Tensor>> out;
  for (int step = 0; step < steps; ++step) {
    sync.begin_backward(true);
    mlp.loss(step).backward();
    sync.finish();
    std::vector<at::Tensor> grads;
    for (const auto& [name, p] : mlp.params()) grads.push_back(p.grad().cpu().clone());
    out.push_back(std::move(grads));
    if (sync.compression()) EXPECT_EQ(sync.compression()->state().device().type(), device.type());
  }
  return out;
}

struct SyncCase {
  std::string label;
  CompressionConfig c;
  double tol;  // CUDA against CPU; 0: bitwise
};

std::vector<SyncCase> sync_cases() {
  std::vector<SyncCase> cases;
  auto add = [&](std::string label, std::string codec, std::string ec, double tol,
                 std::function<void(CompressionConfig&)> tweak = nullptr) {
    CompressionConfig c = cfg(codec);
    c.error_control = ec;
    c.ratio = 0.1;
    c.block = 64;
    c.rank = 2;
    if (tweak) tweak(c);
    cases.push_back({std::move(label), c, tol});
  };
  add("none/none", "none", "none", 0);
  add("topk/ef", "topk", "ef", 0);
  add("topk-tensor/ef21", "topk", "ef21", 0, [](CompressionConfig& c) { c.scope = "tensor"; });
  add("randk/ef", "randk", "ef", 0);
  add("qsgd/none", "qsgd", "none", 0);
  add("sign/ef warm-up 1", "sign", "ef", 0, [](CompressionConfig& c) { c.warmup_steps = 1; });
  add("fp16/none", "fp16", "none", 0);
  add("bf16/ef21", "bf16", "ef21", 0);
  add("topk/econtrol", "topk", "econtrol", 1e-5, [](CompressionConfig& c) { c.eta = 0.3; });
  add("powersgd/ef", "powersgd", "ef", 1e-4);
  return cases;
}

GradSyncConfig sync_config(const CompressionConfig& c, bool overlap) {
  GradSyncConfig config;
  config.bucket_cap_mb = 0.0015;  // two buckets: {b2, w2, b1} and {w1}
  config.overlap = overlap;
  config.compression = c;
  return config;
}

// The harness of the CUDA test below, on the CPU: gradients are exact integers before the
// exchange, the runs are deterministic, and overlapping does not change them.
TEST(DevicePath, CompressedGradientSyncHarnessOnCpu) {
  IntegerMlp mlp(at::kCPU);
  mlp.loss(0).backward();
  for (const auto& [name, p] : mlp.params()) {
    EXPECT_TRUE(at::equal(p.grad(), p.grad().round())) << name;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << name;
  }
  for (const SyncCase& k : sync_cases()) {
    test::expect_runs_match(train_grads(self(), at::kCPU, sync_config(k.c, true), 4),
                            train_grads(self(), at::kCPU, sync_config(k.c, false), 4), 0,
                            k.label + " overlapped vs not");
  }
}

TEST(Cuda, CompressedGradientSyncOnCudaMatchesTheCpu) {
  SKIP_WITHOUT_CUDA();
  const std::vector<SyncCase> cases = sync_cases();
  const auto comms = device_communicators();
  for (const SyncCase& k : cases) {
    for (bool overlap : {true, false}) {
      const GradSyncConfig config = sync_config(k.c, overlap);
      auto cpu = train_grads(self(), at::kCPU, config, 4);
      for (const auto& [comm_name, comm] : comms)
        test::expect_runs_match(train_grads(*comm, kCuda, config, 4), cpu, k.tol,
                                k.label + " on " + comm_name + (overlap ? " overlapped" : ""));
    }
  }
}

}  // namespace
}  // namespace condense
