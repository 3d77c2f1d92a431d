// Helpers shared by the gtest files (header only; tests/CMakeLists.txt builds test_*.cpp).
#pragma once
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/llama_config.h"

// Skips the calling test where no CUDA device is visible.
#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

namespace condense::test {

// The one-process communicator (every collective the identity), built once.
inline Communicator& self_communicator() {
  static std::unique_ptr<Communicator> c = [] {
    CommConfig cfg;
    cfg.backend = "self";
    return make_communicator(cfg);
  }();
  return *c;
}

// A two-layer Llama small enough for closed-form tests: hidden 32 (head_dim 32 / heads), FFN 48,
// untied LM head.
// The model tests' tiny Llama before finalize() (4 heads of 8, 2 layers, vocabulary 97, 64
// positions): tests that build configs on it (and JSON from it) finalize later themselves.
inline LlamaConfig tiny_config(int64_t kv_heads = 2, bool tied = false) {
  LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = kv_heads;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  return c;
}

inline LlamaConfig tiny_llama(int64_t heads, int64_t kv_heads, int64_t vocab = 61,
                              int64_t max_positions = 64) {
  LlamaConfig c = tiny_config(kv_heads);
  c.vocab_size = vocab;
  c.num_attention_heads = heads;
  c.max_position_embeddings = max_positions;
  c.finalize();
  return c;
}

// `count` random token windows [2, 16] over tiny_llama's vocabulary, seeded (calibration and
// scoring inputs of the KV-compression tests).
inline std::vector<at::Tensor> token_windows(int64_t count, uint64_t seed = 11) {
  at::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(at::randint(0, 61, {2, 16}, at::kLong));
  return out;
}

// Logits of `ids` in eval mode without gradients.
inline at::Tensor eval_logits(LlamaForCausalLM& m, const at::Tensor& ids) {
  at::NoGradGuard g;
  m->eval();
  return m->forward(ids);
}

// Logits of ids [B, T] decoded through `cache`: the first `prefix` positions in one forward
// (none when 0), then one position per forward, as generation runs.
inline at::Tensor decode_logits(LlamaForCausalLM& m, const at::Tensor& ids, KVCache& cache,
                                int64_t prefix) {
  at::NoGradGuard g;
  std::vector<at::Tensor> parts;
  if (prefix > 0) parts.push_back(m->logits(m->hidden({ids.narrow(1, 0, prefix), {}, &cache})));
  for (int64_t i = prefix; i < ids.size(1); ++i)
    parts.push_back(m->logits(m->hidden({ids.narrow(1, i, 1), {}, &cache})));
  return at::cat(parts, 1);
}

// ||a - ref|| / ||ref|| over all tensors together, in float64 on the CPU.
inline double rel_error(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    at::Tensor x = a[i].cpu().to(at::kDouble), y = ref[i].cpu().to(at::kDouble);
    num += (x - y).pow(2).sum().item<double>();
    den += y.pow(2).sum().item<double>();
  }
  return std::sqrt(num / den);
}

// The first CUDA device (tests that use it start with SKIP_WITHOUT_CUDA()).
inline const at::Device kCuda(at::kCUDA, 0);

// Same dtype, shape and bytes (so -0 differs from +0, and NaN payloads count).
inline ::testing::AssertionResult bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.cpu().contiguous(), y = b.cpu().contiguous();
  if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes())
    return ::testing::AssertionFailure() << "dtype/shape " << x.scalar_type() << x.sizes() << " vs "
                                         << y.scalar_type() << y.sizes();
  // (Empty tensors may have no storage: memcmp must not see their null pointers; UBSan.)
  if (x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0)
    return ::testing::AssertionSuccess();
  auto f = ::testing::AssertionFailure() << "contents differ";
  if (x.is_floating_point())
    f << ": " << x.ne(y).sum().item<int64_t>() << " of " << x.numel() << " elements, max |diff| "
      << (x.to(at::kDouble) - y.to(at::kDouble)).abs().nan_to_num(0).max().item<double>();
  return f;
}

// Every tensor of `a` bit for bit its partner in `b` (bitwise_equal: -0 is not +0, and a NaN
// equals the same NaN), on any device.
inline void expect_bitwise(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bitwise_equal(a[i], b[i])) << "tensor " << i;
}

// n standard normal floats from a CPU generator seeded with `seed`.
inline at::Tensor randn(int64_t n, uint64_t seed) {
  return at::randn({n}, at::make_generator<at::CPUGeneratorImpl>(seed), at::kFloat);
}

// Gradient-like values; with `ties`, rounded to quarters so that many magnitudes are equal
// (including at the Top-K threshold), with a few zeros of both signs.
inline at::Tensor test_vector(int64_t n, uint64_t seed, bool ties) {
  at::Tensor v = randn(n, seed);
  if (ties) {
    v = v.mul(4).round().div(4);
    if (n > 10) {
      v[3] = -0.0f;
      v[7] = 0.0f;
    }
  }
  return v;
}

}  // namespace condense::test
