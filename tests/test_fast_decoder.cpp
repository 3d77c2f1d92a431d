// Tests for the float32 decode kernels (model/decode_kernels.h) and the fast decoder
// (model/fast_decoder.h), each against ATen computing the same thing:
//   - every decode kernel against its ATen expression, at sizes with vector tails (cols 1..67),
//     and the training row kernels the decoder applies in place;
//   - the decoder's logits at every step against the ATen forward with a KV cache, within
//     1e-5, for GQA and MHA, tied and untied heads, a head_dim that is not hidden / heads;
//   - its keys and values land in the cache where the ATen path puts them;
//   - thread count does not change a bit (every row and head is summed by one thread);
//   - moving weights onto huge pages keeps every value and every tensor identity, moves only
//     tensors of at least 2 MiB (to 2 MiB-aligned memory), and the model computes the same bits;
//   - generate() takes the fast path on a plain float32 model (greedy and seeded sampling give
//     the ATen path's tokens) and the ATen path, with the reason, where the decoder does not
//     apply (a KV hook, an int8 cache, bfloat16 weights, asked for).
#include <gtest/gtest.h>

#include <map>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "model/decode_kernels.h"
#include "model/fused_kernels.h"
#include "model/fast_decoder.h"
#include "model/generate.h"
#include "model/huge_pages.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "tests/test_support.h"

namespace condense {
namespace {

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LE(err, tol * scale) << "max abs error " << err << " at scale " << scale;
}

// Both blockings (16 rows of 16 floats with AVX-512, 8 of 8 elsewhere) on whatever CPU runs
// this, through full blocks, 4-row blocks and single rows.
TEST(DecodeKernels, MatvecRowsMatchesATenAtEveryTailLength) {
  at::manual_seed(1);
  for (int lanes : {16, 8}) {
    for (int64_t cols : {1, 7, 15, 16, 17, 31, 32, 33, 64, 67}) {
      for (int64_t rows : {1, 3, 4, 5, 13, 40}) {
        SCOPED_TRACE(std::to_string(lanes) + " lanes, " + std::to_string(rows) + " x " + std::to_string(cols));
        at::Tensor w = at::randn({rows, cols}), x = at::randn({cols});
        at::Tensor y = at::full({rows}, 12345.0f);
        // Rows [1, rows) only: row 0 stays untouched.
        decode::matvec_rows_blocked(lanes, w.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(),
                                    1, rows, cols);
        EXPECT_EQ(y[0].item<float>(), 12345.0f);
        if (rows > 1) expect_close(y.narrow(0, 1, rows - 1), at::mv(w, x).narrow(0, 1, rows - 1), 1e-5);
      }
    }
  }
}

// The decoder applies the training kernels (model/fused_kernels.h, tested in test_fused_ops.cpp)
// to one row, RoPE and SwiGLU in place: checked here.
TEST(DecodeKernels, InPlaceRowKernelsAndAddMatchATen) {
  at::manual_seed(2);
  Rope rope(10, 10000.0);
  auto [cos, sin] = rope.cos_sin(5, 1, at::kCPU);  // one position: [1, 10]
  at::Tensor q = at::randn({1, 3, 1, 10});
  at::Tensor mine = q.clone();
  for (int64_t h = 0; h < 3; ++h) {
    float* row = mine.data_ptr<float>() + h * 10;
    fused::rope_row_forward(row, row, cos.data_ptr<float>(), sin.data_ptr<float>(), 5);
  }
  expect_close(mine, apply_rope(q, cos, sin), 1e-6);

  at::Tensor g = at::randn({45}) * 4, u = at::randn({45});
  at::Tensor want = at::silu(g) * u;
  fused::swiglu_forward(g.data_ptr<float>(), u.data_ptr<float>(), g.data_ptr<float>(), 0, 45);
  expect_close(g, want, 1e-6);
  at::Tensor a = at::randn({45}), b = at::randn({45});
  at::Tensor sum = a + b;
  decode::add(a.data_ptr<float>(), b.data_ptr<float>(), 45);
  EXPECT_TRUE(at::equal(a, sum));
}

TEST(DecodeKernels, AttendIsSoftmaxWeightedValues) {
  at::manual_seed(3);
  for (int64_t d : {8, 16, 20}) {
    for (int64_t length : {1, 2, 9}) {
      at::Tensor q = at::randn({d}), k = at::randn({length, d}), v = at::randn({length, d});
      at::Tensor out = at::empty({d}), scores = at::empty({length});
      const float scale = 0.3f;
      decode::attend(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                     out.data_ptr<float>(), scores.data_ptr<float>(), d, length, scale);
      at::Tensor p = at::softmax(at::mv(k, q) * scale, 0);
      expect_close(out, at::mv(v.t(), p), 1e-6);
    }
  }
}

LlamaConfig config(int64_t heads, int64_t kv, bool tied, int64_t head_dim = 0) {
  LlamaConfig c = test::tiny_llama(heads, kv, 97, 64);
  c.tie_word_embeddings = tied;
  c.head_dim = head_dim;
  c.finalize();
  return c;
}

// Logits of `steps` tokens after `prompt`, one position at a time, by the fast decoder and by
// the ATen forward on caches filled by the same ATen prefill.
void compare_steps(const LlamaConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  LlamaForCausalLM m(c);
  m->eval();
  torch::NoGradGuard ng;
  {  // larger weights than HF's init, so that the logits differ visibly between tokens
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.2);
    for (auto& p : m->named_parameters()) {  // Qwen2's q/k/v biases, Qwen3's q/k norms: felt clearly
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0, 0.5);
      if (p.key().find("_norm.weight") != std::string::npos) p.value().normal_(1, 0.5);
    }
  }
  at::Tensor prompt = at::randint(0, c.vocab_size, {1, 5}, at::kLong);
  at::Tensor steps = at::randint(0, c.vocab_size, {7}, at::kLong);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  KVCache fast_cache(c, 1, 16, opts), ref_cache(c, 1, 16, opts);
  prefill(m, prompt, fast_cache);
  prefill(m, prompt, ref_cache);
  FastDecoder fast(m, fast_cache);
  for (int64_t i = 0; i < steps.size(0); ++i) {
    const int64_t tok = steps[i].item<int64_t>();
    at::Tensor got = fast.step(tok).clone();
    at::Tensor h = m->hidden({at::full({1, 1}, tok, at::kLong), {}, &ref_cache});
    at::Tensor want = m->logits(h).flatten();
    expect_close(got, want, 1e-5);
    ASSERT_EQ(fast_cache.length(), ref_cache.length());
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto [fk, fv] = fast_cache.fp_buffers(l);
    auto [rk, rv] = ref_cache.fp_buffers(l);
    // Both caches hold a windowed layer's ring in the same slots (position p in slot p % slots).
    const int64_t n = std::min(ref_cache.length(), ref_cache.slots(l));
    ASSERT_EQ(fk.size(2), ref_cache.slots(l));
    expect_close(fk.narrow(2, 0, n), rk.narrow(2, 0, n), 1e-5);
    expect_close(fv.narrow(2, 0, n), rv.narrow(2, 0, n), 1e-5);
  }
}

TEST(FastDecoder, StepsMatchTheATenForwardWithACache) {
  compare_steps(config(4, 2, false), 10);       // GQA, untied
  compare_steps(config(4, 4, true), 11);        // MHA, tied
  compare_steps(config(4, 1, false, 6), 12);    // one KV head, head_dim 6 != 32 / 4
  compare_steps(config(2, 2, true, 24), 13);    // head_dim with a vector tail
  LlamaConfig scaled = config(4, 2, false);     // Llama 3's RoPE scaling, felt within 12 positions
  scaled.rope_scaling = {"llama3", 4.0, 1.0, 4.0, 8};
  compare_steps(scaled, 14);
  LlamaConfig qwen2 = config(4, 2, true);  // q/k/v biases
  qwen2.qkv_bias = true;
  compare_steps(qwen2, 15);
  LlamaConfig qwen3 = config(4, 2, false, 12);  // q/k norms, head_dim 12 != 32 / 4
  qwen3.qk_norm = true;
  compare_steps(qwen3, 16);
  LlamaConfig smollm3 = config(4, 2, true);  // layer 1 without RoPE
  smollm3.no_rope_layers = {1, 0};
  compare_steps(smollm3, 17);
  LlamaConfig phi4 = config(4, 2, true, 16);  // RoPE over the first 12 of 16 channels (Phi-4-mini's 0.75)
  phi4.partial_rotary_factor = 0.75;
  compare_steps(phi4, 18);
  LlamaConfig mistral = config(4, 2, false);  // every layer windowed: 3 of the 5..12 positions
  mistral.sliding_window = 3;
  compare_steps(mistral, 19);
  LlamaConfig qwen2_window = config(4, 2, false);  // layer 0 windowed, layer 1 full
  qwen2_window.qkv_bias = true;
  qwen2_window.sliding_window = 4;
  qwen2_window.sliding_window_layers = {1, 0};
  qwen2_window.finalize();
  compare_steps(qwen2_window, 20);
  LlamaConfig gemma = config(4, 2, true, 12);  // Gemma 3: layer 0 windowed on its own RoPE base
  gemma.qk_norm = true;
  gemma.gemma = 3;
  gemma.query_pre_attn_scalar = 10;
  gemma.rope_local_theta = 100;
  gemma.sliding_window = 4;
  gemma.sliding_window_layers = {1, 0};
  gemma.finalize();
  compare_steps(gemma, 21);
  LlamaConfig gemma2 = config(4, 2, true, 12);  // Gemma 2: one RoPE, caps that bind on these weights
  gemma2.gemma = 2;
  gemma2.query_pre_attn_scalar = 10;
  gemma2.attn_logit_softcapping = 1.0;
  gemma2.final_logit_softcapping = 2.0;
  gemma2.sliding_window = 4;
  gemma2.sliding_window_layers = {1, 0};
  gemma2.finalize();
  compare_steps(gemma2, 22);
}

TEST(FastDecoder, ThreadCountDoesNotChangeABit) {
  // Wide enough that every matrix-vector product is split across threads.
  LlamaConfig c = config(4, 2, false);
  c.hidden_size = 256;
  c.intermediate_size = 320;
  c.vocab_size = 1000;
  c.finalize();
  at::manual_seed(20);
  LlamaForCausalLM m(c);
  m->eval();
  torch::NoGradGuard ng;
  const int threads_before = at::get_num_threads();
  std::vector<at::Tensor> out;
  for (int threads : {1, 2}) {
    at::set_num_threads(1);  // the same ATen prefill for both
    KVCache cache(c, 1, 8, at::TensorOptions().dtype(at::kFloat));
    prefill(m, at::tensor({3, 4, 5}, at::kLong).unsqueeze(0), cache);
    at::set_num_threads(threads);
    FastDecoder fast(m, cache);
    at::Tensor all = at::cat({fast.step(7).clone(), fast.step(8).clone()});
    out.push_back(all);
  }
  at::set_num_threads(threads_before);
  EXPECT_TRUE(at::equal(out[0], out[1]));
}

TEST(FastDecoder, GenerateUsesItWhereItAppliesAndSaysWhyNot) {
  const LlamaConfig c = config(4, 2, false);
  at::manual_seed(30);
  LlamaForCausalLM m(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.2);
    for (auto& p : m->named_parameters())  // Qwen2's q/k/v biases, felt clearly
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0, 0.5);
  }
  std::vector<int64_t> prompt = {3, 14, 15, 92};
  SamplingOptions greedy;
  greedy.max_new_tokens = 12;
  SamplingOptions aten = greedy;
  aten.aten_decode = true;
  GenerationResult f = generate(m, prompt, greedy), a = generate(m, prompt, aten);
  EXPECT_EQ(f.decode_path, "fast");
  EXPECT_EQ(a.decode_path, "aten (asked for)");
  EXPECT_EQ(f.tokens, a.tokens);
  SamplingOptions sample = greedy;
  sample.temperature = 0.8;
  sample.top_k = 20;
  sample.seed = 4;
  SamplingOptions sample_aten = sample;
  sample_aten.aten_decode = true;
  EXPECT_EQ(generate(m, prompt, sample).tokens, generate(m, prompt, sample_aten).tokens);

  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  EXPECT_EQ(generate(m, prompt, greedy, int8).decode_path, "aten (the KV cache is not fp)");
  m->set_kv_hook(std::make_shared<KVHook>());
  EXPECT_EQ(generate(m, prompt, greedy).decode_path,
            "aten (a KV hook (projected or latent KV cache) is set)");
  m->set_kv_hook(nullptr);
  m->to(at::kBFloat16);
  const std::string why = generate(m, prompt, greedy).decode_path;
  EXPECT_NE(why.find("is not float32"), std::string::npos) << why;
}

TEST(HugePages, WeightsMoveWithTheirValuesAndTheModelComputesTheSameBits) {
  LlamaConfig c = config(4, 2, false);
  c.vocab_size = 4096;  // the embedding and LM head: 4096 x 32 floats = 512 KiB, below 2 MiB
  c.hidden_size = 256;  // ... 4096 x 256 floats = 4 MiB each, moved
  c.finalize();
  at::manual_seed(40);
  LlamaForCausalLM m(c);
  m->eval();
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 6}, at::kLong);
  at::Tensor before = test::eval_logits(m, ids);
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> params;  // the tensor, a copy
  for (auto& p : m->named_parameters()) params[p.key()] = {p.value(), p.value().clone()};
  std::map<std::string, void*> old_ptr;
  for (auto& [name, pc] : params) old_ptr[name] = pc.first.data_ptr();

  const int64_t moved = place_on_huge_pages(*m);
  int64_t expect = 0;
  for (auto& [name, pc] : params) {
    const at::Tensor& t = pc.first;
    EXPECT_TRUE(at::equal(t, pc.second)) << name;
    EXPECT_TRUE(m->named_parameters()[name].is_same(t)) << name;  // same tensor, new storage
    const bool big = t.nbytes() >= (size_t{2} << 20);
    EXPECT_EQ(t.data_ptr() != old_ptr[name], big) << name;
    if (big) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % (uintptr_t{2} << 20), 0u) << name;
      expect += static_cast<int64_t>(t.nbytes());
    }
  }
  EXPECT_GT(expect, 0);
  EXPECT_EQ(moved, expect);
  EXPECT_TRUE(at::equal(test::eval_logits(m, ids), before));
}

}  // namespace
}  // namespace condense
