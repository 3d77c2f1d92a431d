// The model, memory policies and mixed precision on CUDA (skipped without a GPU; run on a GPU
// machine by scripts/device_check.sh): the forward/backward on CUDA matches the CPU's,
// recomputation restores the CUDA RNG (bitwise gradients with dropout), offload to pinned host
// memory is bitwise and releases device memory, the memory meter reads the caching allocator,
// and bf16 autocast keeps fp32 gradients within a stated distance of fp32.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>

#include "memory/memory_meter.h"
#include "memory/memory_policy.h"
#include "memory/saved_tensor_hooks.h"
#include "trainer/device.h"
#include "tests/test_support.h"

namespace condense {
namespace {

using test::expect_bitwise;
using test::rel_error;

LlamaConfig small_config(double dropout) {
  LlamaConfig c;
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 352;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 512;
  c.attention_dropout = dropout;
  return c;
}

int64_t cuda_allocated() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
}

struct CudaFixture {
  LlamaForCausalLM model{nullptr};
  at::Tensor inputs, targets;
  explicit CudaFixture(double dropout = 0.1, int64_t b = 4, int64_t t = 256) {
    torch::manual_seed(1);
    model = LlamaForCausalLM(small_config(dropout));
    model->to(at::kCUDA);
    model->train();
    auto o = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
    inputs = at::randint(256, {b, t}, o);
    targets = at::randint(256, {b, t}, o);
  }
  void reset_hooks() {
    model->set_block_hook(nullptr);
    model->set_mlp_linear(nullptr);
  }
  std::vector<at::Tensor> grads(const MemoryConfig& cfg, double* loss_out = nullptr,
                                const std::string& precision = "fp32") {
    reset_hooks();
    MemoryPolicy policy(cfg, model);
    for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
    torch::manual_seed(42);  // seeds the CUDA generator too
    at::Tensor loss;
    {
      PrecisionScope scope(precision, at::Device(at::kCUDA, 0));
      loss = policy.loss(model, inputs, targets);
    }
    loss.backward();
    if (loss_out) *loss_out = loss.item<double>();
    std::vector<at::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    reset_hooks();
    return g;
  }
};

class PassThroughHooks final : public SavedTensorHooks {
 public:
  std::any pack(const at::Tensor& t) override { return t; }
  at::Tensor unpack(const std::any& p) override { return std::any_cast<at::Tensor>(p); }
};

// condense's saved-tensor hooks run through its own autograd engine (memory/saved_tensor_hooks.h),
// which must be the default before the first CUDA backward (LibTorch 2.11 gives a later engine no
// device queues; MemoryPolicy installs it up front). Every test below runs after this one or
// constructs a MemoryPolicy before its first backward.
TEST(CudaEngine, HookedEngineRunsACudaBackward) {
  SKIP_WITHOUT_CUDA();
  std::printf("devices: torch %d, CUDA guard %d\n", static_cast<int>(torch::cuda::device_count()),
              static_cast<int>(c10::impl::getDeviceGuardImpl(c10::kCUDA)->deviceCount()));
  at::Tensor x = torch::randn({64}, at::TensorOptions(at::kCUDA).requires_grad(true));
  {
    HooksScope scope(std::make_shared<PassThroughHooks>());
    at::Tensor y = (x * x).sum();
    y.backward();
  }
  EXPECT_TRUE(at::allclose(x.grad(), 2 * x));
}

TEST(CudaModel, ForwardAndBackwardMatchTheCpu) {
  SKIP_WITHOUT_CUDA();
  CudaFixture f(/*dropout=*/0.0);
  double lc = 0;
  auto gc = f.grads(MemoryConfig{}, &lc);
  // The same weights and batch on the CPU.
  torch::manual_seed(1);
  LlamaForCausalLM cpu(small_config(0.0));
  {
    at::NoGradGuard no_grad;
    auto src = f.model->parameters();
    auto dst = cpu->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i].cpu());
  }
  MemoryPolicy policy(MemoryConfig{}, cpu);
  at::Tensor loss = policy.loss(cpu, f.inputs.cpu(), f.targets.cpu());
  loss.backward();
  std::vector<at::Tensor> g;
  for (auto& p : cpu->parameters()) g.push_back(p.grad());
  EXPECT_NEAR(lc, loss.item<double>(), 1e-4 * std::abs(lc));
  // TF32 is off by default for matmuls in LibTorch; fp32 reduction order differs.
  EXPECT_LT(rel_error(gc, g), 1e-4);
}

TEST(CudaRecompute, GradientsEqualToRoundingWithDropout) {
  SKIP_WITHOUT_CUDA();
  CudaFixture f;
  double l0 = 0, l1 = 0;
  auto ref = f.grads(MemoryConfig{}, &l0);
  for (const char* mode : {"full", "every_k", "selective", "attention"}) {
    MemoryConfig c;
    c.recompute = mode;
    auto g = f.grads(c, &l1);
    EXPECT_EQ(l0, l1) << mode;
    // Deterministic kernels replay identically when the CUDA generator state is restored;
    // allow atomics-ordered reductions a last-bit difference.
    EXPECT_LT(rel_error(g, ref), 1e-6) << mode;
  }
  // Dropout really draws from the CUDA generator: another seed changes the loss.
  f.reset_hooks();
  MemoryPolicy plain(MemoryConfig{}, f.model);
  torch::manual_seed(43);
  EXPECT_NE(plain.loss(f.model, f.inputs, f.targets).item<double>(), l0);
}

TEST(CudaOffload, PinnedHostOffloadEqualToRoundingAndReleasesDeviceMemory) {
  SKIP_WITHOUT_CUDA();
  CudaFixture f(/*dropout=*/0.0, /*b=*/8, /*t=*/512);
  MemoryConfig base;
  base.loss = "chunked";
  MemoryConfig host = base;
  host.offload = "host";
  auto ref = f.grads(base);
  // Not bitwise: on CUDA the chunked loss's index_add_ (and embedding backward) accumulate with
  // atomics, so two identical steps already differ in the last bits (measured on an H200: the
  // lm_head gradient); the offloaded tensors themselves come back bit for bit (test_memory's
  // disk tier test covers the contract on CPU).
  EXPECT_LT(rel_error(f.grads(host), ref), 1e-6);
  // Device bytes held between forward and backward.
  auto held = [&](const MemoryConfig& cfg) {
    f.reset_hooks();
    MemoryPolicy policy(cfg, f.model);
    for (auto& p : f.model->parameters()) p.mutable_grad() = at::Tensor();
    torch::cuda::synchronize();
    int64_t before = cuda_allocated();
    at::Tensor loss = policy.loss(f.model, f.inputs, f.targets);
    torch::cuda::synchronize();  // the offload copies have finished; device copies released
    int64_t after = cuda_allocated();
    loss.backward();
    f.reset_hooks();
    return after - before;
  };
  int64_t resident = held(base), offloaded = held(host);
  std::printf("held on device: resident %.2f MB, offloaded %.2f MB\n", resident / 1048576.0,
              offloaded / 1048576.0);
  EXPECT_LT(offloaded * 3, resident);
  // Checkpoint offload: under full recomputation the layer inputs (all it keeps) leave too.
  MemoryConfig full = base;
  full.recompute = "full";
  MemoryConfig full_host = full;
  full_host.offload = "host";
  EXPECT_LT(rel_error(f.grads(full_host), f.grads(full)), 1e-6);
  int64_t checkpoints = held(full), checkpoints_offloaded = held(full_host);
  std::printf("held on device under full recomputation: %.2f MB, offloaded %.2f MB\n",
              checkpoints / 1048576.0, checkpoints_offloaded / 1048576.0);
  EXPECT_LT(checkpoints_offloaded * 3, checkpoints);
}

TEST(CudaMemoryMeter, ReadsTheCachingAllocator) {
  SKIP_WITHOUT_CUDA();
  MemoryMeter meter(at::Device(at::kCUDA, 0));
  meter.begin("alloc");
  at::Tensor t = at::empty({64 << 20}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  t.fill_(1);
  t = at::Tensor();
  meter.end();
  const PhaseMemory& p = meter.phases().at("alloc");
  EXPECT_GE(p.peak_mb - p.start_mb, 64.0);
  EXPECT_LT(p.peak_mb - p.start_mb, 66.0);
  EXPECT_NEAR(p.end_mb, p.start_mb, 0.01);
}

TEST(CudaPrecision, Bf16AutocastKeepsFp32GradientsNearFp32) {
  SKIP_WITHOUT_CUDA();
  CudaFixture f(/*dropout=*/0.0);
  double l32 = 0, l16 = 0;
  auto g32 = f.grads(MemoryConfig{}, &l32, "fp32");
  auto g16 = f.grads(MemoryConfig{}, &l16, "bf16");
  for (const auto& g : g16) EXPECT_EQ(g.scalar_type(), at::kFloat);
  EXPECT_NEAR(l16, l32, 0.01 * l32);
  double e = rel_error(g16, g32);
  std::printf("bf16 vs fp32: loss %.6f vs %.6f, gradient relative error %.2e\n", l16, l32, e);
  EXPECT_GT(e, 0.0);   // autocast really ran in bf16
  EXPECT_LT(e, 5e-2);  // bf16 has 8 significant bits; products accumulate in fp32
  // Every recompute mode under bf16: the reruns re-enter the forward's autocast state (they
  // threw before, having saved fp32 tensors in place of bf16 ones). Not bitwise: atomics-ordered
  // reductions may differ in the last bits, which a later bf16 rounding can widen.
  for (const char* mode : {"full", "every_k", "selective", "attention"}) {
    MemoryConfig c;
    c.recompute = mode;
    double lr = 0;
    auto gr = f.grads(c, &lr, "bf16");
    EXPECT_EQ(lr, l16) << mode;
    EXPECT_LT(rel_error(gr, g16), 1e-3) << mode;
  }
}

}  // namespace
}  // namespace condense
