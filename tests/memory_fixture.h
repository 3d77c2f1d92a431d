// The memory tests' model fixture (tests/test_memory.cpp, tests/test_chunked_loss.cpp): a small
// Llama and one training step's gradients, saved bytes and peak bytes under a MemoryConfig.
#pragma once
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "memory/counting_allocator.h"
#include "memory/disk_tier.h"
#include "memory/memory_policy.h"
#include "memory/offload.h"
#include "model/llama.h"
#include "trainer/device.h"

namespace condense::test {

inline LlamaConfig small_config(double dropout = 0.1) {
  LlamaConfig c;
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 256;
  c.attention_dropout = dropout;
  return c;
}

struct Fixture {
  LlamaForCausalLM model;
  at::Tensor inputs, targets;
  explicit Fixture(LlamaConfig c = small_config(), int64_t b = 4, int64_t t = 128) : model(nullptr) {
    torch::manual_seed(1);
    model = LlamaForCausalLM(c);
    model->train();
    inputs = at::randint(c.vocab_size, {b, t}, at::kLong);
    targets = at::randint(c.vocab_size, {b, t}, at::kLong);
  }

  void reset_hooks() {
    model->set_block_hook(nullptr);
    model->set_mlp_linear(nullptr);
  }

  // Gradients (and loss) of one step under `cfg`, from a fixed RNG state.
  // `precision` as train.precision: autocast covers the forward only, as in the trainer.
  std::vector<at::Tensor> grads(const MemoryConfig& cfg, double* loss_out = nullptr,
                                const std::string& precision = "fp32") {
    reset_hooks();
    MemoryPolicy policy(cfg, model);
    model->zero_grad();
    torch::manual_seed(42);
    at::Tensor loss;
    {
      PrecisionScope scope(precision, at::kCPU);
      loss = policy.loss(model, inputs, targets);
    }
    loss.backward();
    if (loss_out) *loss_out = loss.item<double>();
    std::vector<at::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    reset_hooks();
    return g;
  }

  // Live CPU bytes held between the end of forward and backward (saved activations + loss).
  int64_t saved_bytes(const MemoryConfig& cfg) {
    reset_hooks();
    MemoryPolicy policy(cfg, model);
    model->zero_grad();
    for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
    torch::manual_seed(42);
    int64_t before = cpu_memory_counters().live_bytes;
    at::Tensor loss = policy.loss(model, inputs, targets);
    // Spill writes still in flight hold their tensors: wait for them (under a loaded machine
    // the I/O thread lags the forward), so that this measures what offload releases.
    if (policy.offload())
      if (auto* disk = dynamic_cast<DiskTier*>(policy.offload()->tier().get())) disk->wait_idle();
    int64_t after = cpu_memory_counters().live_bytes;
    loss.backward();
    reset_hooks();
    return after - before;
  }

  // Peak live CPU bytes above the start during forward + backward, parameter gradients excluded
  // (they are allocated during backward but are not activations).
  int64_t peak_bytes(const MemoryConfig& cfg) {
    reset_hooks();
    MemoryPolicy policy(cfg, model);
    for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
    torch::manual_seed(42);
    int64_t before = cpu_memory_counters().live_bytes;
    reset_cpu_peak();
    policy.loss(model, inputs, targets).backward();
    int64_t grads = 0;
    for (auto& p : model->parameters()) grads += p.grad().numel() * p.grad().element_size();
    reset_hooks();
    return cpu_memory_counters().peak_bytes - before - grads;
  }
};

}  // namespace condense::test
