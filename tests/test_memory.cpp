// Tests for memory/: saved-tensor hooks through the subclassed autograd engine (pack/unpack
// counts), recomputation (bitwise-equal gradients with dropout on; saved-activation bytes cut
// by the counting allocator), offload to spill files (bitwise), compressed activations (stated
// gradient-error bounds), the WTA-CRS estimator
// (unbiased within a statistical tolerance, exact input gradients), the memory meter, and flat
// live bytes over repeated steps (no leaks). The chunked loss: test_chunked_loss.cpp.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>

#include "memory/compressed_activations.h"
#include "memory/counting_allocator.h"
#include "memory/disk_tier.h"
#include "memory/memory_meter.h"
#include "memory/memory_policy.h"
#include "memory/offload.h"
#include "memory/pointwise_rebuild.h"
#include "memory/recompute_policy.h"
#include "memory/saved_tensor_hooks.h"
#include "memory/wta_crs_linear.h"
#include "model/fused_ops.h"
#include "tests/memory_fixture.h"
#include "tests/test_support.h"
#include "trainer/device.h"

namespace condense {
namespace {

using test::expect_bitwise;
using test::Fixture;
using test::small_config;
using test::rel_error;

class CountingHooks final : public SavedTensorHooks {
 public:
  std::any pack(const at::Tensor& t) override {
    ++packs;
    return t.detach();
  }
  at::Tensor unpack(const std::any& p) override {
    ++unpacks;
    return std::any_cast<const at::Tensor&>(p);
  }
  std::atomic<int> packs{0}, unpacks{0};
};

MemoryConfig with_recompute(const std::string& mode) {
  MemoryConfig c;
  c.recompute = mode;
  return c;
}

// Composite (unfused) model ops for one scope.
struct FusedOpsOff {
  FusedOpsOff() { set_fused_ops_enabled(false); }
  ~FusedOpsOff() { set_fused_ops_enabled(true); }
};

TEST(SavedTensorHooks, EngineRoutesEveryPackAndUnpack) {
  at::Tensor w = torch::randn({8, 8}, torch::requires_grad());
  auto hooks = std::make_shared<CountingHooks>();
  at::Tensor y;
  {
    HooksScope scope(hooks);
    y = (at::tanh(at::matmul(at::randn({4, 8}), w)) * 2).sum();
  }
  EXPECT_TRUE(hooked_engine_active());
  EXPECT_GE(hooks->packs.load(), 2);  // matmul saves its input (w's grad), tanh its output
  EXPECT_EQ(hooks->unpacks.load(), 0);
  y.backward();
  EXPECT_EQ(hooks->unpacks.load(), hooks->packs.load());
  // Outside a scope nothing goes through the hooks; nested scopes: the innermost wins.
  int before = hooks->packs;
  (at::tanh(w) * 2).sum().backward();
  EXPECT_EQ(hooks->packs.load(), before);
  auto inner = std::make_shared<CountingHooks>();
  {
    HooksScope outer(hooks);
    HooksScope nested(inner);
    at::tanh(w).sum();
  }
  EXPECT_EQ(hooks->packs.load(), before);
  EXPECT_EQ(inner->packs.load(), 1);
}

TEST(PointwiseRebuild, DropsMarkedTensorsAndReplaysViews) {
  auto registry = std::make_shared<RebuildRegistry>();
  RebuildHooks hooks(registry, nullptr);
  at::Tensor x = at::randn({8, 16});
  int calls = 0;
  at::Tensor y = at::tanh(x);
  registry->mark(y, [xd = x.detach(), &calls] { ++calls; return at::tanh(xd); });
  // A transposed view of the marked tensor is dropped and comes back as the same view.
  std::any packed = hooks.pack(y.t());
  std::any again = hooks.pack(y);
  y = at::Tensor();  // nothing else holds it: the tensor is really gone
  EXPECT_TRUE(at::equal(hooks.unpack(packed), at::tanh(x).t()));
  EXPECT_TRUE(at::equal(hooks.unpack(again), at::tanh(x)));
  EXPECT_EQ(calls, 1);  // rebuilt once, shared by both saved variables
  // Unmarked tensors are kept as they are.
  at::Tensor z = at::randn({4});
  EXPECT_TRUE(at::equal(hooks.unpack(hooks.pack(z)), z));
  // A freed marked tensor never matches a later tensor, even at a reused address.
  at::Tensor w = at::randn({8, 16});
  registry->mark(w, [] { return at::zeros({8, 16}); });
  w = at::Tensor();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(registry->find(at::randn({8, 16})), nullptr);
  // The region clears the marks (and releases the rebuild functions' captures).
  registry->clear();
  at::Tensor v = at::randn({8, 16});
  registry->mark(v, [vd = v.detach()] { return vd.clone(); });
  { RebuildRegion region(registry); }
  EXPECT_EQ(registry->find(v), nullptr);
}

TEST(Recompute, GradientsBitwiseEqualWithDropout) {
  Fixture f;
  MemoryConfig base;
  double l0 = 0, l1 = 0;
  auto ref = f.grads(base, &l0);
  for (const char* mode : {"full", "every_k", "selective", "attention"}) {
    auto g = f.grads(with_recompute(mode), &l1);
    EXPECT_EQ(l0, l1) << mode;
    expect_bitwise(g, ref);
  }
  // Dropout really is on: another seed changes the gradients.
  f.model->zero_grad();
  torch::manual_seed(43);
  MemoryPolicy plain(base, f.model);
  plain.loss(f.model, f.inputs, f.targets).backward();
  EXPECT_FALSE(at::equal(f.model->parameters()[1].grad(), ref[1]));
}

// The reruns happen in backward, after the trainer's autocast scope has ended: they must re-enter
// the forward's autocast state (without it they ran in fp32 and saved other tensors, and every
// recompute mode failed under train.precision=bf16).
TEST(Recompute, Bf16AutocastGradientsBitwiseEqual) {
  Fixture f(small_config(), /*b=*/2, /*t=*/64);
  double l0 = 0, l1 = 0, l32 = 0;
  auto ref = f.grads(MemoryConfig{}, &l0, "bf16");
  for (const char* mode : {"full", "every_k", "selective", "attention"}) {
    auto g = f.grads(with_recompute(mode), &l1, "bf16");
    EXPECT_EQ(l0, l1) << mode;
    expect_bitwise(g, ref);
  }
  // Autocast really ran: fp32 gives other gradients.
  EXPECT_GT(rel_error(f.grads(MemoryConfig{}, &l32), ref), 1e-4);
}

TEST(Recompute, FullCutsSavedActivationsAtLeast3x) {
  Fixture f(small_config(0.0));
  install_counting_cpu_allocator();
  MemoryConfig chunked;
  chunked.loss = "chunked";  // keep the loss's logits out of the comparison
  // The fused float32 ops (model/fused_ops.h) save less than the composites to begin with
  // (RMSNorm keeps x and a scale per row instead of its intermediates)...
  const int64_t fused_base = f.saved_bytes(chunked);
  // ... and the ratios below are the policies' effect on the composite graph they were designed
  // on (the fused graph leaves them less to drop).
  FusedOpsOff composites;
  int64_t base = f.saved_bytes(chunked);
  std::printf("saved activations without a policy: fused ops %.2f MB, composites %.2f MB\n",
              fused_base / 1048576.0, base / 1048576.0);
  EXPECT_LT(fused_base, base);
  MemoryConfig full = chunked;
  full.recompute = "full";
  int64_t recomputed = f.saved_bytes(full);
  MemoryConfig sel = chunked;
  sel.recompute = "selective";
  int64_t selective = f.saved_bytes(sel);
  MemoryConfig attn = chunked;
  attn.recompute = "attention";
  int64_t attention = f.saved_bytes(attn);
  std::printf("saved activations: none %.2f MB, selective %.2f MB, attention %.2f MB, full %.2f MB\n",
              base / 1048576.0, selective / 1048576.0, attention / 1048576.0,
              recomputed / 1048576.0);
  EXPECT_GE(base, 3 * recomputed);
  // every_k (every other layer here) holds less than nothing recomputed and more than full.
  MemoryConfig every = chunked;
  every.recompute = "every_k";
  int64_t every_k = f.saved_bytes(every);
  std::printf("every_k %.2f MB\n", every_k / 1048576.0);
  EXPECT_LT(every_k, base * 4 / 5);
  EXPECT_GT(every_k, recomputed);
  // Pointwise rebuild drops norm outputs, silu and the SwiGLU product, repeated K/V: more than a
  // third of every layer here, without recomputing a single matmul.
  EXPECT_LE(3 * selective, 2 * base);
  EXPECT_LT(selective, attention);
  EXPECT_GT(selective, recomputed);
}

TEST(Recompute, FullRecomputeRebuildsPointwiseOutputsInBackward) {
  // The rerun of a recomputed layer keeps only matmul/attention results; its pointwise outputs
  // are rebuilt at use, so the backward peak is well below "held + one layer's activations".
  Fixture f(small_config(0.0));
  install_counting_cpu_allocator();
  FusedOpsOff composites;  // the bounds are for the composite graph (see the test above)
  MemoryConfig chunked;
  chunked.loss = "chunked";
  MemoryConfig full = chunked;
  full.recompute = "full";
  int64_t base_peak = f.peak_bytes(chunked), full_peak = f.peak_bytes(full);
  int64_t base_held = f.saved_bytes(chunked), full_held = f.saved_bytes(full);
  // One layer's activations (the layers are identical; the embedding and final norm are small).
  int64_t layer = (base_held - full_held) / 4;
  std::printf("peak: baseline %.2f MB, full %.2f MB (held %.2f MB, one layer %.2f MB)\n",
              base_peak / 1048576.0, full_peak / 1048576.0, full_held / 1048576.0,
              layer / 1048576.0);
  EXPECT_LT(full_peak, full_held + layer * 3 / 4);
  // (3.5x since SDPA reads grouped K/V in place: the baseline no longer stores repeated K/V.)
  EXPECT_GE(base_peak, 7 * full_peak / 2);
}

TEST(Recompute, BudgetPicksLayersFromMeasuredSizes) {
  Fixture f(small_config(0.0));
  MemoryConfig cfg;
  cfg.recompute = "budget";
  cfg.budget_mb = 1e-3;  // below anything: every layer recomputed
  f.reset_hooks();
  MemoryPolicy policy(cfg, f.model);
  for (int step = 0; step < 2; ++step) policy.loss(f.model, f.inputs, f.targets).backward();
  const auto& bytes = policy.recompute()->measured_layer_bytes();
  ASSERT_EQ(bytes.size(), 4u);
  for (int64_t b : bytes) EXPECT_GT(b, 0);
  for (bool r : policy.recompute()->recomputed_layers()) EXPECT_TRUE(r);
  // Every layer recomputed: the gradients are still the plain ones, bit for bit.
  auto plain = f.grads(MemoryConfig{});
  f.reset_hooks();
  f.model->zero_grad();
  torch::manual_seed(42);
  policy.loss(f.model, f.inputs, f.targets).backward();
  std::vector<at::Tensor> all_recomputed;
  for (auto& p : f.model->parameters()) all_recomputed.push_back(p.grad().clone());
  expect_bitwise(all_recomputed, plain);
  f.reset_hooks();
  // A budget that fits everything recomputes nothing; gradients stay bitwise equal.
  MemoryConfig roomy = cfg;
  roomy.budget_mb = 1e6;
  auto ref = f.grads(MemoryConfig{});
  f.reset_hooks();
  MemoryPolicy p2(roomy, f.model);
  p2.loss(f.model, f.inputs, f.targets).backward();  // measuring step
  f.model->zero_grad();
  torch::manual_seed(42);
  p2.loss(f.model, f.inputs, f.targets).backward();
  for (bool r : p2.recompute()->recomputed_layers()) EXPECT_FALSE(r);
  std::vector<at::Tensor> g;
  for (auto& p : f.model->parameters()) g.push_back(p.grad().clone());
  expect_bitwise(g, ref);
  f.reset_hooks();
}

TEST(Offload, DiskSpillIsBitwiseAndFreesMemory) {
  Fixture f;
  install_counting_cpu_allocator();
  auto ref = f.grads(MemoryConfig{});
  MemoryConfig disk;
  disk.offload = "disk";
  disk.offload_min_bytes = 4096;
  expect_bitwise(f.grads(disk), ref);
  MemoryConfig both = disk;
  both.recompute = "every_k";
  expect_bitwise(f.grads(both), ref);
  MemoryConfig chunked;
  chunked.loss = "chunked";
  MemoryConfig spilled = disk;
  spilled.loss = "chunked";
  int64_t base = f.saved_bytes(chunked), off = f.saved_bytes(spilled);
  std::printf("saved activations: resident %.2f MB, spilled %.2f MB\n", base / 1048576.0, off / 1048576.0);
  EXPECT_LT(off * 3, base);
}

// Checkpoint offload (DeepSpeed's cpu_checkpointing): under full recomputation the layer inputs
// are what stays saved, and offload moves exactly those out, one per layer, each prefetched in
// backward before its layer recomputes. memory_bench --cuda measures the GPU version's overlap
// (full+chunked+offload=host); here the disk tier on the CPU checks what is moved and that the
// gradients stay bitwise (dropout on, so the recomputation's RNG replay is exercised too).
TEST(Offload, UnderFullRecomputeMovesOnlyTheLayerInputs) {
  Fixture f;
  MemoryConfig full;
  full.recompute = "full";
  full.loss = "chunked";
  auto ref = f.grads(full);
  MemoryConfig both = full;
  both.offload = "disk";
  both.offload_min_bytes = 4096;
  expect_bitwise(f.grads(both), ref);

  f.reset_hooks();
  MemoryPolicy policy(both, f.model);
  torch::manual_seed(42);
  at::Tensor loss = policy.loss(f.model, f.inputs, f.targets);
  const OffloadStats fwd = policy.offload()->stats();
  loss.backward();
  const OffloadStats bwd = policy.offload()->stats();
  f.reset_hooks();
  const LlamaConfig& c = f.model->config();
  const int64_t layer_input = f.inputs.numel() * c.hidden_size * 4;
  std::printf("offloaded %lld tensors, %lld bytes (layer input %lld bytes), kept %lld, prefetched %lld\n",
              (long long)fwd.offloaded_tensors, (long long)fwd.offloaded_bytes, (long long)layer_input,
              (long long)fwd.kept_tensors, (long long)bwd.prefetched);
  // Every layer's input, and beyond them at most the final norm's and the loss's inputs.
  EXPECT_GE(fwd.offloaded_bytes, c.num_hidden_layers * layer_input);
  EXPECT_LE(fwd.offloaded_bytes, (c.num_hidden_layers + 2) * layer_input);
  // The layers' inputs were brought back by prefetch, not on demand.
  EXPECT_GE(bwd.prefetched, c.num_hidden_layers);
  // And they left memory: what full recomputation held between forward and backward is spilled.
  install_counting_cpu_allocator();
  const int64_t held = f.saved_bytes(full), spilled = f.saved_bytes(both);
  std::printf("held between forward and backward: full %.3f MB, full + offload %.3f MB\n",
              held / 1048576.0, spilled / 1048576.0);
  EXPECT_LT(spilled * 4, held);
}

TEST(CompressedActivations, GradientErrorWithinStatedBounds) {
  Fixture f(small_config(0.0));
  auto ref = f.grads(MemoryConfig{});
  MemoryConfig bf16, int8;
  bf16.activations = "bf16";
  int8.activations = "int8";
  double e_bf16 = rel_error(f.grads(bf16), ref), e_int8 = rel_error(f.grads(int8), ref);
  std::printf("relative gradient error: bf16 %.2e, int8 %.2e\n", e_bf16, e_int8);
  EXPECT_GT(e_bf16, 0);
  EXPECT_LT(e_bf16, 2e-2);
  EXPECT_LT(e_int8, 5e-2);
  // And they are stored smaller: an implementation keeping fp32 would pass the bounds above.
  install_counting_cpu_allocator();
  MemoryConfig chunked;
  chunked.loss = "chunked";
  MemoryConfig bf16c = bf16, int8c = int8;
  bf16c.loss = int8c.loss = "chunked";
  const int64_t held = f.saved_bytes(chunked), held_bf16 = f.saved_bytes(bf16c),
                held_int8 = f.saved_bytes(int8c);
  std::printf("saved activations: fp32 %.2f MB, bf16 %.2f MB, int8 %.2f MB\n", held / 1048576.0,
              held_bf16 / 1048576.0, held_int8 / 1048576.0);
  EXPECT_LT(held_bf16, held * 7 / 10);
  EXPECT_LT(held_int8, held_bf16 * 3 / 4);
  // The int8 codec itself: error at most half a step of each block's scale.
  at::Tensor x = at::randn({1000});
  Int8Blocks q = quantize_int8(x, 64);
  at::Tensor back = dequantize_int8(q, at::kFloat);
  at::Tensor step = q.scales.repeat_interleave(64).narrow(0, 0, 1000);
  EXPECT_TRUE(((back - x).abs() <= step * 0.5 + 1e-7).all().item<bool>());
}

TEST(WtaCrs, UnbiasedWeightGradientAndExactInputGradient) {
  torch::manual_seed(5);
  at::Tensor x = at::randn({64, 16}) * at::rand({64, 1}) * 3;
  at::Tensor w = torch::randn({8, 16}, torch::requires_grad());
  at::Tensor dy = at::randn({64, 8});
  at::Tensor exact = at::matmul(dy.t(), x);
  at::Tensor sum = at::zeros_like(exact), sq = at::zeros_like(exact);
  const int trials = 2000;
  at::Tensor xg = x.clone().requires_grad_();
  for (int i = 0; i < trials; ++i) {
    if (xg.grad().defined()) xg.mutable_grad().zero_();
    w.mutable_grad() = at::Tensor();
    wta_crs_linear(xg, w, 0.3).backward(dy);
    sum += w.grad();
    sq += w.grad().pow(2);
    if (i == 0) EXPECT_TRUE(at::allclose(xg.grad(), at::matmul(dy, w.detach())));
  }
  at::Tensor mean = sum / trials;
  at::Tensor stderr_ = ((sq / trials - mean.pow(2)).clamp_min(0) / trials).sqrt();
  // Unbiased: every entry of the mean within 5 standard errors of the exact gradient.
  at::Tensor z = (mean - exact).abs() / (stderr_ + 1e-6);
  EXPECT_LT(z.max().item<double>(), 5.0);
  EXPECT_LT(((mean - exact).norm() / exact.norm()).item<double>(), 0.05);
  // The ratio is honoured: one draw at 0.3 is far from exact, at 0.9 much closer on average
  // (an implementation ignoring the ratio gives the same error for both).
  auto draw_error = [&](double ratio) {
    double total = 0;
    for (int i = 0; i < 200; ++i) {
      w.mutable_grad() = at::Tensor();
      wta_crs_linear(x, w, ratio).backward(dy);
      total += ((w.grad() - exact).norm() / exact.norm()).item<double>();
    }
    return total / 200;
  };
  const double e03 = draw_error(0.3), e09 = draw_error(0.9);
  std::printf("WTA-CRS mean relative error of one draw: ratio 0.3 %.3f, 0.9 %.3f\n", e03, e09);
  EXPECT_GT(e03, 0.05);
  EXPECT_LT(e09, e03 / 2);
}

TEST(MemoryMeter, CountsExactTensorBytesPerPhase) {
  MemoryMeter meter;
  meter.begin("forward");
  int64_t live0 = cpu_memory_counters().live_bytes;
  {
    at::Tensor a = at::empty({1 << 18}, at::kFloat);  // 1 MiB
    EXPECT_EQ(cpu_memory_counters().live_bytes - live0, 1 << 20);
  }
  meter.begin("backward");
  meter.end();
  EXPECT_NEAR(meter.phases().at("forward").peak_mb - meter.phases().at("forward").start_mb, 1.0, 1e-9);
  EXPECT_EQ(meter.metrics().count("mem_backward_peak_mb"), 1u);
}

TEST(MemoryPolicy, RepeatedStepsKeepLiveBytesFlat) {
  Fixture f;
  install_counting_cpu_allocator();
  for (const char* offload : {"none", "disk"}) {
    MemoryConfig cfg;
    cfg.recompute = "selective";
    cfg.offload = offload;
    f.reset_hooks();
    MemoryPolicy policy(cfg, f.model);
    std::vector<int64_t> live;
    for (int step = 0; step < 4; ++step) {
      f.model->zero_grad();
      policy.loss(f.model, f.inputs, f.targets).backward();
      live.push_back(cpu_memory_counters().live_bytes);
    }
    EXPECT_EQ(live[1], live[3]) << offload;
    EXPECT_EQ(live[2], live[3]) << offload;
  }
  f.reset_hooks();
}

}  // namespace
}  // namespace condense
