// Tests for model/: parameter names match Hugging Face, causality, GQA equals MHA with
// duplicated kv heads, tied embeddings, KV-cache decoding equals a full forward, RoPE closed
// form and partial RoPE, sliding-window attention, sampling filters. (The families' configs:
// test_model_families.cpp; agreement with transformers itself is tests/python/test_hf_parity.py.)
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "core/error.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/llama_config.h"
#include "model/rope.h"
#include "tests/test_support.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t kv_heads = 2, bool tied = false) { return test::tiny_config(kv_heads, tied); }

}  // namespace

TEST(Llama, ParameterNamesMatchHuggingFace) {
  torch::manual_seed(0);
  LlamaForCausalLM m(tiny());
  auto params = m->named_parameters();
  EXPECT_TRUE(params.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(params.contains("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.input_layernorm.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.post_attention_layernorm.weight"));
  EXPECT_TRUE(params.contains("model.norm.weight"));
  EXPECT_TRUE(params.contains("lm_head.weight"));
  EXPECT_EQ(params["model.layers.0.self_attn.k_proj.weight"].sizes(), (at::IntArrayRef{16, 32}));
  int64_t total = 0;
  for (auto& p : params) total += p.value().numel();
  LlamaConfig c = tiny();
  c.finalize();
  EXPECT_EQ(total, c.num_parameters());

  LlamaForCausalLM tied(tiny(2, true));
  EXPECT_FALSE(tied->named_parameters().contains("lm_head.weight"));
  EXPECT_TRUE(tied->lm_head_weight().is_same(tied->model->embed_tokens->weight));
}

TEST(Llama, IsCausal) {
  torch::manual_seed(1);
  LlamaForCausalLM m(tiny());
  m->eval();
  at::Tensor ids = at::randint(0, 97, {2, 12}, at::kLong);
  at::Tensor a = m->forward(ids);
  at::Tensor ids2 = ids.clone();
  ids2.narrow(1, 8, 4).random_(0, 97);
  at::Tensor b = m->forward(ids2);
  EXPECT_TRUE(at::allclose(a.narrow(1, 0, 8), b.narrow(1, 0, 8), 1e-6, 1e-6));
  EXPECT_FALSE(at::allclose(a.narrow(1, 8, 4), b.narrow(1, 8, 4), 1e-6, 1e-6));
}

TEST(Llama, GqaEqualsMhaWithDuplicatedKvHeads) {
  torch::manual_seed(2);
  LlamaForCausalLM gqa(tiny(2));
  LlamaForCausalLM mha(tiny(4));
  torch::NoGradGuard ng;
  auto src = gqa->named_parameters();
  for (auto& p : mha->named_parameters()) {
    const std::string& n = p.key();
    at::Tensor s = src[n];
    if (n.find("k_proj") != std::string::npos || n.find("v_proj") != std::string::npos) {
      // kv head j serves query heads 2j and 2j+1: duplicate each 8-row head block.
      s = s.view({2, 1, 8, 32}).expand({2, 2, 8, 32}).reshape({32, 32});
    }
    p.value().copy_(s);
  }
  at::Tensor ids = at::randint(0, 97, {2, 10}, at::kLong);
  EXPECT_TRUE(at::allclose(gqa->forward(ids), mha->forward(ids), 1e-5, 1e-5));
}

TEST(Llama, KvCacheDecodingMatchesFullForward) {
  torch::manual_seed(3);
  LlamaForCausalLM m(tiny());
  m->eval();
  torch::NoGradGuard ng;
  at::Tensor ids = at::randint(0, 97, {1, 14}, at::kLong);
  at::Tensor full = m->forward(ids);
  KVCache cache(m->config(), 1, 32, at::TensorOptions().dtype(at::kFloat));
  // Prefill 6, then 1 token, then a chunk of 3 (masked path), then singles.
  std::vector<at::Tensor> parts;
  int64_t pos = 0;
  for (int64_t len : {6, 1, 3, 1, 1, 1, 1}) {
    at::Tensor h = m->hidden({ids.narrow(1, pos, len), {}, &cache});
    parts.push_back(m->logits(h));
    pos += len;
  }
  EXPECT_EQ(cache.length(), 14);
  EXPECT_TRUE(at::allclose(at::cat(parts, 1), full, 1e-5, 1e-5));
}

TEST(Llama, InputsEmbedsEqualsTokenIds) {
  torch::manual_seed(4);
  LlamaForCausalLM m(tiny(2, true));
  at::Tensor ids = at::randint(0, 97, {2, 5}, at::kLong);
  at::Tensor a = m->forward(ids);
  at::Tensor b = m->logits(m->hidden({{}, m->embed(ids)}));
  EXPECT_TRUE(at::equal(a, b));
}

TEST(Rope, ClosedForm) {
  Rope rope(4, 10000.0);
  auto [cos, sin] = rope.cos_sin(3, 2, at::kCPU);
  // inv_freq = [1, 1/100]; position 3 -> angles [3, 0.03, 3, 0.03].
  EXPECT_NEAR(cos[0][0].item<float>(), std::cos(3.0), 1e-6);
  EXPECT_NEAR(sin[0][1].item<float>(), std::sin(0.03), 1e-6);
  EXPECT_NEAR(sin[1][3].item<float>(), std::sin(0.04), 1e-6);
  // Rotation preserves norms and relative positions: <R_m q, R_n k> depends on m - n only.
  at::Tensor q = at::randn({1, 1, 1, 4}), k = at::randn({1, 1, 1, 4});
  auto dot_at = [&](int64_t m, int64_t n) {
    auto [cm, sm] = rope.cos_sin(m, 1, at::kCPU);
    auto [cn, sn] = rope.cos_sin(n, 1, at::kCPU);
    return (apply_rope(q, cm, sm) * apply_rope(k, cn, sn)).sum().item<float>();
  };
  EXPECT_NEAR(dot_at(5, 2), dot_at(13, 10), 1e-5);
}

// Partial rotary embeddings (Phi-4-mini): the first `dim` channels of each head rotate as a
// head of that width would, the rest pass through, in the composite and the fused path alike.
TEST(Rope, PartialRotationLeavesTheTailAndRotatesTheFront) {
  Rope rope(4, 10000.0);
  auto [cos, sin] = rope.cos_sin(3, 5, at::kCPU);
  ASSERT_EQ(cos.size(1), 4);
  at::Tensor x = at::randn({2, 3, 5, 6});
  for (bool fused : {true, false}) {
    const at::Tensor y = fused ? apply_rope(x, cos, sin) : apply_rope(x.to(at::kDouble), cos, sin);
    EXPECT_TRUE(at::allclose(y.narrow(-1, 4, 2).to(at::kFloat), x.narrow(-1, 4, 2)));
    const at::Tensor front = apply_rope(x.narrow(-1, 0, 4).contiguous(), cos, sin);
    EXPECT_TRUE(at::allclose(y.narrow(-1, 0, 4).to(at::kFloat), front, 1e-5, 1e-6)) << fused;
  }
  // The backward passes the tail's gradient through and rotates the front's back.
  at::Tensor xg = x.clone().requires_grad_(true);
  apply_rope(xg, cos, sin).pow(2).sum().backward();
  EXPECT_TRUE(at::allclose(xg.grad(), 2 * x, 1e-4, 1e-5));  // a rotation keeps the squared norm
  LlamaConfig c;
  c.vocab_size = 10;
  c.hidden_size = 32;
  c.num_attention_heads = 2;  // head_dim 16
  c.partial_rotary_factor = 0.75;
  c.finalize();
  EXPECT_EQ(c.rotary_dim(), 12);
  EXPECT_EQ(Rope(c).cos_sin(0, 2, at::kCPU).first.size(1), 12);
  c.partial_rotary_factor = 0.7;  // int(16 * 0.7) = 11: odd, no pairs
  EXPECT_THROW(c.finalize(), Error);
  c.partial_rotary_factor = 0.0;
  EXPECT_THROW(c.finalize(), Error);
  // The factor for a rotated count rounds as transformers' int(head_dim * factor) expects.
  for (int64_t head : {6, 10, 80, 96, 100, 128, 160})
    for (int64_t r = 2; r <= head; r += 2)
      EXPECT_EQ(static_cast<int64_t>(static_cast<double>(head) * partial_rotary_factor_for(r, head)), r)
          << r << " of " << head;
}

TEST(Rope, ScalingAsTransformersComputesIt) {
  // Llama 3.1's parameters at its head width: frequencies with wavelength under 8192 / 4 kept,
  // over 8192 / 1 divided by 8, blended between; freq_factors() (llama.cpp's rope_freqs) is the
  // plain inverse frequency over the scaled one. Linear scaling divides every frequency.
  const RopeScaling llama3{"llama3", 8.0, 1.0, 4.0, 8192};
  const at::Tensor plain = Rope(128, 500000.0).inv_freq();
  const at::Tensor scaled = Rope(128, 500000.0, llama3).inv_freq();
  const std::vector<float> factors = Rope(128, 500000.0, llama3).freq_factors();
  ASSERT_EQ(factors.size(), 64u);
  int kept = 0, divided = 0, blended = 0;
  for (int i = 0; i < 64; ++i) {
    // Llama 3's rule in double, written out here (the code derives it from inv_freq()).
    const double freq = 1.0 / std::pow(500000.0, 2.0 * i / 128), wavelen = 2 * M_PI / freq;
    const double smooth = (8192 / wavelen - 1) / (4 - 1);
    const double want = wavelen < 2048 ? 1 : wavelen > 8192 ? 8 : 1 / ((1 - smooth) / 8 + smooth);
    EXPECT_NEAR(factors[i], want, 1e-5 * want) << i;
    EXPECT_NEAR(plain[i].item<double>() / scaled[i].item<double>(), want, 1e-5 * want) << i;
    if (wavelen < 2048) kept += factors[i] == 1.0f;
    else if (wavelen > 8192) divided += factors[i] == 8.0f;
    else blended += factors[i] > 1.0f && factors[i] < 8.0f;
  }
  EXPECT_EQ(kept + divided + blended, 64);
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
  EXPECT_TRUE(at::equal(Rope(16, 10000.0, {"linear", 2.5}).inv_freq(), Rope(16, 10000.0).inv_freq() / 2.5));
  for (float f : Rope(16, 10000.0).freq_factors()) EXPECT_EQ(f, 1.0f);
}

// Sliding-window attention: in a one-layer model the logits at position i depend on tokens
// i - window + 1 .. i only (changing an older token changes nothing, a newer one within the
// window changes them), in a full and in a cached forward alike; a layer without the window sees
// the older tokens; training backpropagates through the masked attention.
TEST(Attention, SlidingWindowSeesOnlyTheLastWindowPositions) {
  LlamaConfig c = tiny();
  c.num_hidden_layers = 1;
  c.sliding_window = 3;
  c.finalize();
  torch::manual_seed(5);
  LlamaForCausalLM m(c);
  m->eval();
  at::NoGradGuard g;
  const at::Tensor a = at::randint(0, 97, {1, 10}, at::kLong);
  at::Tensor b = a.clone();
  b[0][2] = (a[0][2].item<int64_t>() + 1) % 97;  // outside the window of positions 5..9
  const at::Tensor la = m->forward(a), lb = m->forward(b);
  EXPECT_TRUE(at::allclose(la.narrow(1, 5, 5), lb.narrow(1, 5, 5), 0, 1e-6));
  EXPECT_GT((la.narrow(1, 2, 3) - lb.narrow(1, 2, 3)).abs().max().item<double>(), 1e-3);  // inside theirs
  // A cached forward (prefill 6, then one at a time) gives the same logits.
  KVCache cache(c, 1, 10, at::TensorOptions().dtype(at::kFloat));
  at::Tensor first = m->logits(m->hidden({a.narrow(1, 0, 6), {}, &cache}));
  EXPECT_TRUE(at::allclose(first, la.narrow(1, 0, 6), 1e-5, 1e-5));
  for (int64_t i = 6; i < 10; ++i) {
    at::Tensor step = m->logits(m->hidden({a.narrow(1, i, 1), {}, &cache}));
    EXPECT_TRUE(at::allclose(step, la.narrow(1, i, 1), 1e-5, 1e-5)) << i;
  }
  LlamaConfig full = c;  // the same weights attending to every earlier position
  full.sliding_window = 0;
  LlamaForCausalLM mf(full);
  mf->eval();
  for (auto& p : mf->named_parameters()) p.value().copy_(*m->named_parameters().find(p.key()));
  EXPECT_TRUE(at::allclose(mf->forward(a).narrow(1, 0, 3), la.narrow(1, 0, 3), 1e-5, 1e-5));  // within the window
  EXPECT_GT((mf->forward(a).narrow(1, 5, 5) - mf->forward(b).narrow(1, 5, 5)).abs().max().item<double>(), 1e-4);
  {
    at::AutoGradMode on(true);
    m->train();
    at::Tensor loss = m->forward(a).logsumexp(-1).mean();
    loss.backward();
    EXPECT_GT(m->model->layer_list[0]->self_attn->q_proj->weight.grad().abs().sum().item<double>(), 0);
  }
}

// Many queries past a window are attended block by block (attention.cpp's
// blocked_window_attention): values and gradients equal the full masked attention written out.
TEST(Attention, WindowBlocksEqualTheMaskedAttention) {
  LlamaConfig c = tiny();  // 4 heads, 2 KV heads of 8
  c.num_hidden_layers = 1;
  c.sliding_window = 4;
  c.finalize();
  torch::manual_seed(6);
  LlamaForCausalLM m(c);
  auto& attn = m->model->layer_list[0]->self_attn;
  const int64_t t = 23, heads = 4, kv = 2, d = 8;  // 23 > 2 x 4: blocks of 4 queries
  at::Tensor x = at::randn({2, t, c.hidden_size}).requires_grad_(true);
  auto [cos, sin] = Rope(c).cos_sin(0, t, at::kCPU);
  at::Tensor got = attn->forward(x, cos, sin, nullptr, nullptr);
  got.pow(2).sum().backward();
  const at::Tensor gx = x.grad().clone(), gq = attn->q_proj->weight.grad().clone();
  x.grad().zero_();
  attn->q_proj->weight.grad().zero_();
  at::Tensor q = apply_rope(attn->q_proj(x).view({2, t, heads, d}).transpose(1, 2), cos, sin);
  at::Tensor k = apply_rope(attn->k_proj(x).view({2, t, kv, d}).transpose(1, 2), cos, sin).repeat_interleave(2, 1);
  at::Tensor v = attn->v_proj(x).view({2, t, kv, d}).transpose(1, 2).repeat_interleave(2, 1);
  at::Tensor pos = at::arange(t, at::kLong);
  at::Tensor hidden = (pos.unsqueeze(0) > pos.unsqueeze(1)) | (pos.unsqueeze(0) <= pos.unsqueeze(1) - 4);
  at::Tensor s = (at::matmul(q, k.transpose(-1, -2)) / std::sqrt(8.0)).masked_fill(hidden, -INFINITY);
  at::Tensor want = attn->o_proj(at::matmul(at::softmax(s, -1), v).transpose(1, 2).reshape({2, t, heads * d}));
  want.pow(2).sum().backward();
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
  EXPECT_LE((gx - x.grad()).abs().max().item<double>(), 1e-4);
  EXPECT_LE((gq - attn->q_proj->weight.grad()).abs().max().item<double>(), 1e-4);
}

TEST(Generate, GreedyMatchesArgmaxAndSamplingIsSeeded) {
  torch::manual_seed(5);
  LlamaForCausalLM m(tiny());
  std::vector<int64_t> prompt = {3, 14, 15, 92};
  SamplingOptions greedy;
  greedy.max_new_tokens = 6;
  auto g = generate(m, prompt, greedy);
  ASSERT_EQ(g.tokens.size(), 6u);
  // Recompute greedily without a cache.
  std::vector<int64_t> seq = prompt;
  m->eval();
  for (int i = 0; i < 6; ++i) {
    torch::NoGradGuard ng;
    at::Tensor l = m->forward(at::tensor(seq, at::kLong).unsqueeze(0));
    int64_t next = l[0][-1].argmax().item<int64_t>();
    EXPECT_EQ(next, g.tokens[i]);
    seq.push_back(next);
  }
  SamplingOptions s;
  s.max_new_tokens = 8;
  s.temperature = 1.0;
  s.top_k = 20;
  s.top_p = 0.9;
  s.seed = 42;
  EXPECT_EQ(generate(m, prompt, s).tokens, generate(m, prompt, s).tokens);
  // ... and the seed matters: of several other seeds, at least one samples another sequence.
  bool differs = false;
  for (int64_t seed = 43; seed < 48 && !differs; ++seed) {
    SamplingOptions other = s;
    other.seed = seed;
    differs = generate(m, prompt, other).tokens != generate(m, prompt, s).tokens;
  }
  EXPECT_TRUE(differs);
}

TEST(Generate, TopKAndTopPFilters) {
  at::Tensor logits = at::tensor({0.f, 5.f, 1.f, 4.f, -2.f});
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  SamplingOptions k1;
  k1.temperature = 1.0;
  k1.top_k = 1;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, k1, gen), 1);
  SamplingOptions p;
  p.temperature = 1.0;
  p.top_p = 0.5;  // softmax mass of token 1 is ~0.71 > 0.5: only it survives
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, p, gen), 1);
  SamplingOptions k2;
  k2.temperature = 1.0;
  k2.top_k = 2;
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(sample_token(logits, k2, gen));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 3}));
}

}  // namespace condense
