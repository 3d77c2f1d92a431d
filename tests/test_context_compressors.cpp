// Tests for the ARC-style context encoder (compressors/context_arc.h) and the decoder sequences
// around compressed context (compressors/context_sequence.h), on tiny random models:
//   - group_mean against explicit sums, including a last group shorter than the factor;
//   - the encoder against a direct computation (explicit softmax over all positions, K/V
//     repeated per query head, pooled queries before RoPE at positions 0..k-1, keys at 0..n-1,
//     pooled residual, no final norm, the projector) for MHA and GQA, factors 1, 3 and 4;
//   - bidirectional: the first output depends on the last token (the decoder's causal layers
//     do not);
//   - the encoder's layers start as copies of the decoder's, under checkpoint names, and load
//     back exactly through HDF5; calibrate_scale matches the embeddings' RMS;
//   - sequences: the uncompressed context through continuation_with scores what the plain
//     forward scores on the same positions; the continuation and reconstruction layouts put
//     each target after the position that predicts it;
//   - bad options are refused naming the key.
// (xRAG and the document task: tests/test_context_xrag.cpp.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "compressors/context_arc.h"
#include "compressors/context_compllm.h"
#include "compressors/context_sequence.h"
#include "core/error.h"
#include "io/hdf5_file.h"
#include "model/rope.h"
#include "tests/test_support.h"

namespace condense {
namespace {

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(ContextArc, GroupMeanMatchesExplicitSums) {
  at::manual_seed(1);
  at::Tensor x = at::randn({2, 7, 3});
  at::Tensor g = group_mean(x, 3);
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{2, 3, 3}));
  EXPECT_LT(max_diff(g[0][0], (x[0][0] + x[0][1] + x[0][2]) / 3), 1e-6);
  EXPECT_LT(max_diff(g[1][1], (x[1][3] + x[1][4] + x[1][5]) / 3), 1e-6);
  EXPECT_LT(max_diff(g[1][2], x[1][6]), 1e-6);  // the last group holds one position
  EXPECT_TRUE(at::equal(group_mean(x, 1), x));
  EXPECT_LT(max_diff(group_mean(x, 7).squeeze(1), x.mean(1)), 1e-6);
  EXPECT_THROW(group_mean(x, 0), Error);
}

// The encoder computed directly from the decoder's weights (the encoder copies them).
at::Tensor reference_encoder(LlamaForCausalLM& m, const at::Tensor& e, int64_t layers, int64_t f,
                             const at::Tensor& proj_in, const at::Tensor& proj_out) {
  const LlamaConfig& c = m->config();
  const int64_t b = e.size(0), n = e.size(1), h = c.num_attention_heads, kv = c.kv_heads(),
                d = c.head_size(), k = (n + f - 1) / f;
  Rope rope(d, c.rope_theta);
  at::Tensor x = e;
  for (int64_t i = 0; i < layers; ++i) {
    auto& l = *m->model->layer_list[i];
    const int64_t pool = i == layers - 1 ? f : 1, out_len = i == layers - 1 ? k : n;
    at::Tensor xn = l.input_layernorm(x);
    at::Tensor q = at::linear(xn, l.self_attn->q_proj->weight).view({b, n, h, d});
    at::Tensor kk = at::linear(xn, l.self_attn->k_proj->weight).view({b, n, kv, d}).transpose(1, 2);
    at::Tensor v = at::linear(xn, l.self_attn->v_proj->weight).view({b, n, kv, d}).transpose(1, 2);
    at::Tensor res = x;
    if (pool > 1) {
      std::vector<at::Tensor> qs, rs;
      for (int64_t g = 0; g < out_len; ++g) {
        int64_t lo = g * pool, cnt = std::min(pool, n - lo);
        qs.push_back(q.narrow(1, lo, cnt).mean(1, true));
        rs.push_back(x.narrow(1, lo, cnt).mean(1, true));
      }
      q = at::cat(qs, 1);
      res = at::cat(rs, 1);
    }
    auto [qc, qsn] = rope.cos_sin(0, out_len, e.device());
    auto [kc, ks] = rope.cos_sin(0, n, e.device());
    q = apply_rope(q.transpose(1, 2), qc, qsn);
    kk = apply_rope(kk, kc, ks).repeat_interleave(h / kv, 1);
    v = v.repeat_interleave(h / kv, 1);
    at::Tensor p = at::softmax(at::matmul(q, kk.transpose(-1, -2)) / std::sqrt(double(d)), -1);
    at::Tensor a = at::matmul(p, v).transpose(1, 2).reshape({b, out_len, h * d});
    at::Tensor y = res + at::linear(a, l.self_attn->o_proj->weight);
    x = y + l.mlp(l.post_attention_layernorm(y));
  }
  return at::linear(at::linear(x, proj_in), proj_out);
}

TEST(ContextArc, EncoderMatchesDirectComputation) {
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 4}, {4, 2}}) {
    for (int64_t layers : {1, 2}) {
      for (int64_t f : {1, 3, 4}) {
        at::manual_seed(5);
        LlamaForCausalLM m(test::tiny_llama(heads, kv));
        m->eval();
        ArcEncoder enc(m, ArcOptions{layers, f, 16});
        enc->eval();
        at::NoGradGuard g;
        at::Tensor e = m->embed(at::randint(0, 61, {2, 10}, at::kLong));
        at::Tensor out = enc->forward(e);
        ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, (10 + f - 1) / f, 32}));
        at::Tensor ref = reference_encoder(m, e, layers, f, enc->proj_in, enc->proj_out);
        EXPECT_LT(max_diff(out, ref), 1e-5) << heads << "/" << kv << " layers " << layers << " f " << f;
      }
    }
  }
}

TEST(ContextArc, AttentionIsBidirectional) {
  at::manual_seed(6);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  ArcEncoder enc(m, ArcOptions{2, 1, 0});
  at::NoGradGuard g;
  at::Tensor ids = at::randint(0, 61, {1, 8}, at::kLong);
  at::Tensor other = ids.clone();
  other[0][7] = (ids[0][7].item<int64_t>() + 1) % 61;
  EXPECT_GT(max_diff(enc->forward(m->embed(ids))[0][0], enc->forward(m->embed(other))[0][0]), 1e-6);
  // The decoder's own first position does not see the last token.
  at::Tensor a = m->forward_layers(m->embed(ids), 0, 2), b = m->forward_layers(m->embed(other), 0, 2);
  EXPECT_LT(max_diff(a[0][0], b[0][0]), 1e-7);
}

TEST(ContextArc, CopiesTheDecoderAndRoundTripsThroughHdf5) {
  at::manual_seed(7);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  ArcEncoder enc(m, ArcOptions{2, 4, 8});
  auto named = enc->named();
  std::map<std::string, at::Tensor> by_name(named.begin(), named.end());
  auto decoder = m->named_parameters();
  EXPECT_TRUE(at::equal(by_name.at("encoder.layers.1.self_attn.k_proj.weight"),
                        decoder["model.layers.1.self_attn.k_proj.weight"]));
  EXPECT_TRUE(at::equal(by_name.at("encoder.layers.0.mlp.down_proj.weight"),
                        decoder["model.layers.0.mlp.down_proj.weight"]));
  EXPECT_EQ(by_name.at("projector.0.weight").sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(by_name.at("projector.1.weight").sizes(), (std::vector<int64_t>{32, 8}));
  // Projector: orthonormal rows (through the bottleneck), scale 1 before calibration.
  at::Tensor p = by_name.at("projector.0.weight");
  EXPECT_LT(max_diff(at::matmul(p, p.t()), at::eye(8)), 1e-5);
  at::Tensor e = m->embed(at::randint(0, 61, {2, 12}, at::kLong)).detach();
  enc->calibrate_scale(e);
  {
    at::NoGradGuard g;
    EXPECT_NEAR(enc->forward(e).pow(2).mean().sqrt().item<double>(), e.pow(2).mean().sqrt().item<double>(),
                1e-5);
  }
  const std::string path = (std::filesystem::temp_directory_path() / "condense_arc_test.h5").string();
  {
    H5File f = H5File::create(path);
    for (auto& [name, t] : named) f.write_tensor(name, t.detach());
  }
  at::manual_seed(8);
  ArcEncoder other(m, ArcOptions{2, 4, 8});
  EXPECT_FALSE(at::equal(other->proj_in, enc->proj_in));
  StoredTensors f = compressor_tensors(H5File::open_read(path));
  EXPECT_EQ(ArcEncoderImpl::stored_layers(f), 2);
  EXPECT_EQ(ArcEncoderImpl::stored_bottleneck(f), 8);
  other->load(f);
  for (auto& [name, t] : other->named()) EXPECT_TRUE(at::equal(t, by_name.at(name))) << name;
  ArcEncoder narrower(m, ArcOptions{2, 4, 4});
  EXPECT_THROW(narrower->load(f), Error);
  std::filesystem::remove(path);
}

TEST(ContextArc, RefusesBadOptions) {
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  auto message = [&](ArcOptions o) {
    try {
      ArcEncoder e(m, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({3, 4, 0}).find("context.encoder_layers 3: valid is 1..2"), std::string::npos);
  EXPECT_NE(message({0, 4, 0}).find("context.encoder_layers"), std::string::npos);
  EXPECT_NE(message({1, 0, 0}).find("context.pooling_factor 0"), std::string::npos);
  EXPECT_NE(message({1, 2, 33}).find("context.bottleneck 33"), std::string::npos);
  ContextLayout layout{4, 12};
  EXPECT_THROW(layout.check(16, "test"), Error);  // no continuation token left
  EXPECT_NO_THROW(layout.check(17, "test"));
}

TEST(ContextSequence, UncompressedContextScoresWhatThePlainForwardScores) {
  at::manual_seed(9);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  m->eval();
  at::NoGradGuard g;
  at::Tensor x = at::randint(0, 61, {2, 21}, at::kLong);
  at::Tensor inputs = x.narrow(1, 0, 20), targets = x.narrow(1, 1, 20);
  ContextLayout layout{3, 8};
  // The chunk given as its own token embeddings: the plain sequence, scored on positions 11..19.
  SequenceParts s = continuation_with(m, inputs, targets, layout, m->embed(inputs.narrow(1, 3, 8)));
  ASSERT_EQ(s.targets.size(1), 9);
  at::Tensor logits = m->forward(inputs).narrow(1, 11, 9);
  at::Tensor ref = at::cross_entropy_loss(logits.reshape({-1, 61}), targets.narrow(1, 11, 9).reshape({-1}));
  EXPECT_NEAR(tail_nll(m, s.parts, s.targets).item<double>(), ref.item<double>(), 1e-5);
  // Teacher-forced accuracy (context-eval's reconstruction_accuracy*): targets that are the
  // plain forward's argmax at the even positions and another token at the odd ones score
  // exactly 5 of 9 per row.
  at::Tensor argmax = logits.argmax(-1), hits = argmax.clone();
  hits.narrow(1, 1, 8).slice(1, 0, 8, 2).add_(1).remainder_(61);
  const auto [correct, scored] = tail_correct(m, s.parts, hits);
  EXPECT_EQ(scored, 18);
  EXPECT_EQ(correct, 10.0);
  // Without context: prefix then continuation, the same nine targets.
  SequenceParts none = continuation_with(m, inputs, targets, layout, at::Tensor());
  at::Tensor short_ids = at::cat({inputs.narrow(1, 0, 3), inputs.narrow(1, 11, 9)}, 1);
  at::Tensor ln = m->forward(short_ids).narrow(1, 3, 9);
  EXPECT_NEAR(tail_nll(m, none.parts, none.targets).item<double>(),
              at::cross_entropy_loss(ln.reshape({-1, 61}), targets.narrow(1, 11, 9).reshape({-1})).item<double>(),
              1e-5);
}

TEST(ContextSequence, MarkersPredictTheFirstTarget) {
  at::manual_seed(10);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  at::Tensor x = at::randint(0, 61, {2, 21}, at::kLong);
  at::Tensor inputs = x.narrow(1, 0, 20), targets = x.narrow(1, 1, 20);
  ContextLayout layout{3, 8};
  at::Tensor z = at::randn({2, 2, 32}), marker = at::randn({32});
  SequenceParts c = continuation_sequence(m, inputs, targets, layout, z, marker);
  // [3 prefix][2 compressed][marker][9 continuation tokens]: 10 targets, the first is x[11].
  int64_t total = 0;
  for (auto& p : c.parts) total += p.size(1);
  EXPECT_EQ(total, 15);
  ASSERT_EQ(c.targets.size(1), 10);
  EXPECT_TRUE(at::equal(c.targets.select(1, 0), x.select(1, 11)));
  EXPECT_TRUE(at::equal(c.targets.select(1, 9), x.select(1, 20)));
  EXPECT_TRUE(at::equal(c.parts[2][0][0], marker));
  SequenceParts r = reconstruction_sequence(m, inputs, layout, z, marker);
  // [2 compressed][marker][the chunk's first 7 tokens]: the chunk's 8 tokens as targets.
  ASSERT_EQ(r.targets.size(1), 8);
  EXPECT_TRUE(at::equal(r.targets, x.narrow(1, 3, 8)));
  EXPECT_EQ(r.parts[2].size(1), 7);
}

}  // namespace
}  // namespace condense

namespace condense {
namespace {

CompLlmOptions small_compllm() { return CompLlmOptions{5, 2, 4, 8.0, 1.0}; }

TEST(ContextCompLlm, SegmentsAreIndependentAndCached) {
  at::manual_seed(11);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  m->eval();
  CompLlmCompressor c(m, small_compllm());
  c.train(false);
  at::NoGradGuard g;
  at::Tensor ids = at::randint(0, 61, {2, 12}, at::kLong);  // segments of 5, 5, 2 -> 3 + 3 + 1
  EXPECT_EQ(c.positions(12), 7);
  at::Tensor a = c.context(m, ids);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2, 7, 32}));
  EXPECT_FALSE(m->projection_hook());  // the adapters are off outside the compression pass
  at::Tensor other = ids.clone();
  other[1][7] = (ids[1][7].item<int64_t>() + 1) % 61;  // second segment of row 1
  const int64_t hits = c.cache_hits();
  at::Tensor b = c.context(m, other);
  EXPECT_EQ(c.cache_hits() - hits, 5);  // all but the changed segment come from the cache
  EXPECT_TRUE(at::equal(b.narrow(1, 0, 3), a.narrow(1, 0, 3)));
  EXPECT_TRUE(at::equal(b[0], a[0]));
  EXPECT_FALSE(at::equal(b[1].narrow(0, 3, 3), a[1].narrow(0, 3, 3)));
  EXPECT_TRUE(at::equal(b[1].narrow(0, 6, 1), a[1].narrow(0, 6, 1)));
  // A cache hit equals recomputation.
  at::Tensor fresh = c.compress_segment(m, ids.narrow(1, 5, 5));
  EXPECT_TRUE(at::equal(fresh, a.narrow(1, 3, 3)));
  // All segments in one batch equal compressing each segment position on its own.
  at::Tensor each = at::cat({c.compress_segment(m, ids.narrow(1, 0, 5)), fresh,
                             c.compress_segment(m, ids.narrow(1, 10, 2))}, 1);
  EXPECT_LT((each - a).abs().max().item<double>(), 1e-6);
  // A segment repeated within one batch is compressed once.
  c.clear_cache();
  at::Tensor twice = at::cat({ids.narrow(0, 0, 1), ids.narrow(0, 0, 1)}, 0);
  at::Tensor t2 = c.context(m, twice);
  EXPECT_EQ(c.cache_size(), 3);
  EXPECT_TRUE(at::equal(t2[0], t2[1]));
  // The same segments in a batch of another size: equal to rounding (bitwise on an AVX-512
  // Xeon, not on an AVX2 EPYC, where MKL's GEMM rounds differently by row count).
  EXPECT_LT((t2[0] - a[0]).abs().max().item<double>(), 1e-6);
}

// Validation during training runs without gradients; when it went through the cache, every
// validation after the first repeated the first one's loss (the trained tensors change in place,
// and the fused AdamW does not bump their version counters, so a stale cache cannot be detected).
// So in training mode nothing is cached, and switching mode empties the cache.
TEST(ContextCompLlm, TrainingModeBypassesTheCache) {
  at::manual_seed(12);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  m->eval();
  CompLlmCompressor c(m, small_compllm());  // training mode, as the trainer builds it
  at::Tensor ids = at::randint(0, 61, {2, 10}, at::kLong);
  at::NoGradGuard g;
  std::map<std::string, at::Tensor> named;
  for (auto& [name, t] : c.named()) named.emplace(name, t);
  const std::string adapter = "compllm.lora.model.layers.1.mlp.down_proj.B";
  ASSERT_TRUE(named.count(adapter));
  for (const std::string& which : std::vector<std::string>{"compllm.slots", "compllm.proj.weight", adapter}) {
    SCOPED_TRACE(which);
    at::Tensor old = c.context(m, ids);
    named.at(which).add_(at::randn_like(named.at(which)) * 0.1);  // in place, as an optimizer step
    at::Tensor now = c.context(m, ids);
    // Recomputed (to rounding: one batch of 4 segments against two of 2), not the old values.
    at::Tensor fresh = at::cat({c.compress_segment(m, ids.narrow(1, 0, 5)),
                                c.compress_segment(m, ids.narrow(1, 5, 5))}, 1);
    EXPECT_LT((now - fresh).abs().max().item<double>(), 1e-6);
    EXPECT_GT((now - old).abs().max().item<double>(), 1e-3);
    EXPECT_EQ(c.cache_size(), 0);
    EXPECT_EQ(c.cache_hits(), 0);
  }
  // Inference mode caches; a switch of mode empties the cache.
  c.train(false);
  at::Tensor a = c.context(m, ids);
  EXPECT_EQ(c.cache_size(), 4);
  c.context(m, ids);
  EXPECT_EQ(c.cache_hits(), 4);
  c.train(true);
  EXPECT_EQ(c.cache_size(), 0);
  c.train(false);
  named.at("compllm.slots").add_(1.0);
  EXPECT_GT((c.context(m, ids) - a).abs().max().item<double>(), 1e-3);
}

TEST(ContextCompLlm, StartsAsThePlainDecoderAndTrainsOnlyItsTensors) {
  at::manual_seed(12);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  for (auto& p : m->parameters()) p.requires_grad_(false);
  CompLlmCompressor c(m, small_compllm());
  auto named = c.named();
  std::map<std::string, at::Tensor> by_name(named.begin(), named.end());
  // B = 0: the compression pass is the plain decoder, the projection the identity.
  at::Tensor seg = at::randint(0, 61, {1, 5}, at::kLong);
  {
    at::NoGradGuard g;
    at::Tensor h = m->hidden({{}, at::cat({m->embed(seg), by_name.at("compllm.slots").narrow(0, 0, 3).unsqueeze(0)}, 1)});
    EXPECT_LT(max_diff(c.compress_segment(m, seg), h.narrow(1, 5, 3)), 1e-6);
  }
  EXPECT_EQ(by_name.count("compllm.lora.model.layers.1.mlp.down_proj.A"), 1u);
  // The loss is forward KL on the continuation positions, against the decoder reading the window.
  at::Tensor x = at::randint(0, 61, {2, 21}, at::kLong);
  Batch b{x.narrow(1, 0, 20), x.narrow(1, 1, 20)};
  ContextLayout layout{2, 10};
  at::Tensor loss = c.loss(m, b, layout);
  at::Tensor ref;
  {
    at::NoGradGuard g;
    at::Tensor z = c.context(m, b.inputs.narrow(1, 2, 10));
    ASSERT_EQ(z.size(1), 6);
    at::Tensor s = m->logits(m->hidden({{}, at::cat({m->embed(b.inputs.narrow(1, 0, 2)), z,
                                                      m->embed(b.inputs.narrow(1, 12, 8))}, 1)}))
                       .narrow(1, 7, 9);
    at::Tensor t = m->logits(m->hidden({b.inputs})).narrow(1, 11, 9);
    at::Tensor pt = at::softmax(t, -1);
    ref = (pt * (at::log_softmax(t, -1) - at::log_softmax(s, -1))).sum(-1).mean();
  }
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5);
  loss.backward();
  for (auto& [name, t] : named) {
    if (name.find(".B") != std::string::npos || name == "compllm.slots" || name == "compllm.proj.weight")
      EXPECT_TRUE(t.grad().defined() && t.grad().abs().sum().item<double>() > 0) << name;
  }
  for (auto& p : m->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(ContextCompLlm, RefusesBadOptions) {
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  EXPECT_THROW(CompLlmCompressor(m, CompLlmOptions{0, 1, 4, 8, 1}), Error);
  EXPECT_THROW(CompLlmCompressor(m, CompLlmOptions{4, 5, 4, 8, 1}), Error);
  EXPECT_THROW(CompLlmCompressor(m, CompLlmOptions{4, 2, 33, 8, 1}), Error);
}

}  // namespace
}  // namespace condense
