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
// and for xRAG (compressors/context_xrag.h, compressors/context_documents.h):
//   - the projected vector sits exactly at the placeholder's position, the template's tokens
//     around it; a template without exactly one placeholder is refused;
//   - the projector is Linear-GELU-Linear (against explicit math), refuses embeddings of
//     another width, and round-trips through HDF5;
//   - the document stream puts document i in the loader's window i and Batch::rows names it;
//   - stage 1 is the NLL of the document after the paraphrase prompt; stage 2 is NLL + w x KL
//     against the decoder reading the document as text (computed independently, row by row);
//     only the projector gets gradients.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "compressors/context_arc.h"
#include "compressors/context_compllm.h"
#include "compressors/context_sequence.h"
#include "compressors/context_task.h"
#include "compressors/context_xrag.h"
#include "data/loader.h"
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

// xRAG ---------------------------------------------------------------------------------------

const Tokenizer& small_tokenizer() {
  static const Tokenizer tok = [] {
    std::vector<std::string> docs;
    for (int i = 0; i < 200; ++i)
      docs.push_back("Background: the word number " + std::to_string(i) + " means the same as a thing. Answer: yes");
    return Tokenizer::train(docs, {300, 1000, 1});
  }();
  return tok;
}

TEST(ContextXrag, PlaceholderIsReplacedAtItsPosition) {
  const Tokenizer& tok = small_tokenizer();
  PromptTemplate t = split_template("Background: {context} means the same as", tok, "key");
  ASSERT_EQ(t.before.front(), tok.bos_id());
  std::vector<int32_t> before = tok.encode("Background:"), after = tok.encode("means the same as");
  // The text after the placeholder starts a word as sentencepiece marks it (its dummy prefix),
  // not with a stray space piece.
  EXPECT_EQ(word_initial_ids(tok, " means the same as"), after);
  EXPECT_EQ(word_initial_ids(tok, "\nAnswer:"), tok.encode("\nAnswer:"));
  EXPECT_EQ(t.before.size(), before.size() + 1);
  EXPECT_EQ(t.after.size(), after.size());
  at::manual_seed(21);
  LlamaForCausalLM m(test::tiny_llama(4, 2, tok.vocab_size()));
  at::Tensor z = at::randn({2, 1, 32});
  std::vector<at::Tensor> parts = splice_context(m, t, z);
  at::Tensor seq = at::cat(parts, 1).detach();
  const int64_t p = static_cast<int64_t>(t.before.size());
  ASSERT_EQ(seq.size(1), p + 1 + static_cast<int64_t>(t.after.size()));
  EXPECT_TRUE(at::equal(seq.narrow(1, p, 1), z));
  at::Tensor ids = at::tensor(t.before, at::kLong);
  EXPECT_TRUE(at::equal(seq[1].narrow(0, 0, p), m->embed(ids.unsqueeze(0))[0].detach()));
  EXPECT_TRUE(at::equal(seq[0].narrow(0, p + 1, t.after.size()),
                        m->embed(at::tensor(t.after, at::kLong).unsqueeze(0))[0].detach()));
  EXPECT_THROW(split_template("no placeholder", tok, "context.task_template"), Error);
  EXPECT_THROW(split_template("{context} twice {context}", tok, "context.task_template"), Error);
}

// The document task's measures (compressors/context_task.h) against a direct computation on
// token ids: for "none" and "full" the decoder reads <s> + the template's text before the
// placeholder + [the document] + the text after it, then the answer teacher-forced; NLL is the
// mean over answer tokens, exact match every argmax right, each averaged over documents; the
// paraphrase's token accuracy counts argmax hits over all its tokens. Half the answers are made
// the decoder's greedy prediction after their document, so exact match is not trivially 0.
TEST(ContextTask, MeasuresMatchADirectComputationOnTokenIds) {
  const Tokenizer& tok = small_tokenizer();
  at::manual_seed(31);
  LlamaForCausalLM m(test::tiny_llama(4, 2, tok.vocab_size(), 256));
  m->eval();
  at::NoGradGuard no_grad;
  XragCompressor trained(m, XragOptions{12, 1, 2.0}), untrained(m, XragOptions{12, 1, 2.0});
  ContextConfig cc;
  cc.answer_len = 4;
  const PromptTemplate task = split_template(cc.task_template, tok, "task");
  const PromptTemplate para = split_template(cc.paraphrase_template, tok, "paraphrase");
  auto logits_of = [&](const std::vector<int64_t>& ids) {
    return m->forward(at::tensor(ids, at::kLong).unsqueeze(0))[0];
  };
  auto with = [](std::vector<int64_t> a, const std::vector<int64_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  DocumentSet set;
  set.path = "test";
  set.embeddings = at::randn({6, 12});
  for (int i = 0; i < 6; ++i) {
    set.texts.push_back("the word number " + std::to_string(7 * i) + " means the same as a thing");
    set.answers.push_back("yes");
  }
  // The even documents' answer: a one-piece word the decoder is made to predict after them. A
  // random decoder's argmax is a byte piece, which no answer text tokenizes to; so the LM head
  // row of the best whole-word piece moves along the mean of those positions' hidden states
  // until it is the argmax at each of them.
  std::vector<at::Tensor> h;
  for (int i = 0; i < 6; i += 2) {
    std::vector<int64_t> ids = with(with(task.before, tokenize_documents(set, tok, i, i + 1, 64, 4).texts[0]),
                                    task.after);
    h.push_back(m->hidden({at::tensor(ids, at::kLong).unsqueeze(0)})[0][-1]);
  }
  at::Tensor hs = at::stack(h), w = m->lm_head_weight();
  at::Tensor order = at::matmul(hs, w.t()).mean(0).argsort(0, /*descending=*/true);
  int32_t piece = -1;
  for (int64_t k = 0; k < order.size(0) && piece < 0; ++k) {
    const int32_t id = static_cast<int32_t>(order[k].item<int64_t>());
    const std::string text = tok.decode({id});
    if (!tok.is_control(id) && !text.empty() && word_initial_ids(tok, text) == std::vector<int32_t>{id})
      piece = id;
  }
  ASSERT_GE(piece, 0);
  at::Tensor mean = hs.mean(0);
  double scale = 0;
  for (const at::Tensor& hi : h) {
    at::Tensor l = at::matmul(w, hi);
    const double need = (l.max() - l[piece]).item<double>() + 1.0, along = at::dot(mean, hi).item<double>();
    ASSERT_GT(along, 0);
    scale = std::max(scale, need / along);
  }
  w[piece].add_(mean * scale);
  for (const at::Tensor& hi : h) ASSERT_EQ(at::matmul(w, hi).argmax().item<int64_t>(), piece);
  for (int i = 0; i < 6; i += 2) set.answers[i] = tok.decode({piece});
  const nlohmann::json j = document_task(m, trained, untrained, cc, set, tok, 6, 64);
  const TokenizedDocuments docs = tokenize_documents(set, tok, 0, 6, 64, cc.answer_len);

  // Scores `target` after `prefix`: NLL mean over its tokens, and argmax hits.
  struct Direct {
    double nll = 0, exact = 0, hits = 0, tokens = 0;
  };
  auto direct = [&](const std::vector<int64_t>& prefix, const std::vector<int64_t>& target, Direct& d) {
    const int64_t n = static_cast<int64_t>(target.size());
    std::vector<int64_t> ids = with(prefix, std::vector<int64_t>(target.begin(), target.end() - 1));
    at::Tensor l = logits_of(ids).narrow(0, static_cast<int64_t>(prefix.size()) - 1, n).to(at::kDouble);
    at::Tensor t = at::tensor(target, at::kLong);
    d.nll += at::cross_entropy_loss(l, t).item<double>();
    const int64_t hit = (l.argmax(-1) == t).sum().item<int64_t>();
    d.exact += hit == n ? 1 : 0;
    d.hits += static_cast<double>(hit);
    d.tokens += static_cast<double>(n);
  };
  Direct none, full, para_full;
  for (int64_t i = 0; i < docs.size(); ++i) {
    direct(with(task.before, task.after), docs.answers[i], none);
    direct(with(with(task.before, docs.texts[i]), task.after), docs.answers[i], full);
    direct(with(with(para.before, docs.texts[i]), para.after), docs.texts[i], para_full);
  }
  const nlohmann::json& a = j.at("answer");
  EXPECT_NEAR(a.at("nll").at("none").get<double>(), none.nll / 6, 1e-4);
  EXPECT_NEAR(a.at("nll").at("full").get<double>(), full.nll / 6, 1e-4);
  EXPECT_DOUBLE_EQ(a.at("exact_match").at("none").get<double>(), none.exact / 6);
  EXPECT_DOUBLE_EQ(a.at("exact_match").at("full").get<double>(), full.exact / 6);
  EXPECT_GE(full.exact, 3) << "the greedy answers are not matched: the check would be vacuous";
  EXPECT_DOUBLE_EQ(j.at("paraphrase").at("token_accuracy").at("full").get<double>(),
                   para_full.hits / para_full.tokens);
  EXPECT_GT(para_full.hits, 0);
  EXPECT_EQ(j.at("documents").get<int64_t>(), 6);
}

TEST(ContextXrag, ProjectorIsLinearGeluLinearAndRoundTrips) {
  at::manual_seed(22);
  LlamaForCausalLM m(test::tiny_llama(4, 2));
  XragCompressor x(m, XragOptions{12, 1, 2.0});
  auto named = x.named();
  std::map<std::string, at::Tensor> w(named.begin(), named.end());
  ASSERT_EQ(w.at("xrag.projector.0.weight").sizes(), (std::vector<int64_t>{32, 12}));
  ASSERT_EQ(w.at("xrag.projector.2.weight").sizes(), (std::vector<int64_t>{32, 32}));
  {
    at::NoGradGuard g;
    w.at("xrag.projector.0.bias").normal_();
    w.at("xrag.projector.2.bias").normal_();
  }
  at::Tensor e = at::randn({3, 12});
  at::Tensor h = e.matmul(w.at("xrag.projector.0.weight").t()) + w.at("xrag.projector.0.bias");
  h = 0.5 * h * (1 + at::erf(h / std::sqrt(2.0)));
  at::Tensor ref = h.matmul(w.at("xrag.projector.2.weight").t()) + w.at("xrag.projector.2.bias");
  EXPECT_LT(max_diff(x.project(e).squeeze(1), ref), 1e-5);
  EXPECT_THROW(x.project(at::randn({3, 13})), Error);  // another embedding model's width
  EXPECT_THROW(x.context(m, at::zeros({1, 4}, at::kLong)), Error);
  const std::string path = (std::filesystem::temp_directory_path() / "condense_xrag_test.h5").string();
  {
    H5File f = H5File::create(path);
    for (auto& [name, t] : named) f.write_tensor(name, t.detach());
  }
  StoredTensors f = compressor_tensors(H5File::open_read(path));
  EXPECT_EQ(XragCompressor::stored_embedding_dim(f), 12);
  XragCompressor other(m, XragOptions{12, 1, 2.0});
  other.load(f);
  for (auto& [name, t] : other.named()) EXPECT_TRUE(at::equal(t, w.at(name))) << name;
  XragCompressor wider(m, XragOptions{16, 1, 2.0});
  EXPECT_THROW(wider.load(f), Error);
  std::filesystem::remove(path);
  EXPECT_THROW(XragCompressor(m, XragOptions{0, 1, 2.0}), Error);
  EXPECT_THROW(XragCompressor(m, XragOptions{12, 3, 2.0}), Error);
}

TEST(ContextXrag, DocumentStreamPutsDocumentIInWindowI) {
  TokenizedDocuments d;
  d.texts = {{5, 6, 7}, {8}, {9, 10, 11, 12, 13}};
  d.embeddings = at::randn({3, 4});
  at::Tensor s = document_stream(d, 4, 0);
  ASSERT_EQ(s.numel(), 13);
  BatchLoader loader(s, LoaderOptions{4, 3, 1, 0, 1});
  Batch b = loader.next();
  for (int64_t r = 0; r < 3; ++r) {
    const int64_t doc = b.rows[r].item<int64_t>();
    const std::vector<int64_t>& t = d.texts[doc];
    for (size_t j = 0; j < std::min<size_t>(t.size(), 4); ++j) EXPECT_EQ(b.inputs[r][j].item<int64_t>(), t[j]);
  }
  at::Tensor rows = at::tensor(std::vector<int64_t>{2, 1}, at::kLong);
  at::Tensor p = padded_rows(d.texts, rows, -100);
  EXPECT_TRUE(at::equal(p, at::tensor(std::vector<int64_t>{9, 10, 11, 12, 13, 8, -100, -100, -100, -100},
                                      at::kLong).view({2, 5})));
}

// The stages' losses computed independently: one row at a time, explicit logits.
TEST(ContextXrag, StageLossesMatchDirectComputation) {
  const Tokenizer& tok = small_tokenizer();
  at::manual_seed(23);
  LlamaForCausalLM m(test::tiny_llama(4, 2, tok.vocab_size()));
  for (auto& p : m->parameters()) p.requires_grad_(false);
  auto docs = std::make_shared<TokenizedDocuments>();
  docs->texts = {{10, 11, 12, 13}, {20, 21}, {30, 31, 32}};
  docs->answers = {{40, 41}, {50}, {60, 61, 62}};
  docs->embeddings = at::randn({3, 12});
  XragData data{split_template("Background: {context} means the same as", tok, "p"),
                split_template("Background: {context} Answer:", tok, "t"), docs, docs, 0};
  at::Tensor rows = at::tensor(std::vector<int64_t>{2, 0, 1}, at::kLong);
  Batch b{at::zeros({3, 4}, at::kLong), at::zeros({3, 4}, at::kLong), rows};
  auto seq = [&](const PromptTemplate& t, const at::Tensor& ctx, const std::vector<int64_t>& target) {
    std::vector<at::Tensor> parts = splice_context(m, t, ctx);
    std::vector<int64_t> in(target.begin(), target.end() - 1);
    if (!in.empty()) parts.push_back(m->embed(at::tensor(in, at::kLong).unsqueeze(0)));
    at::Tensor logits = m->logits(m->hidden({{}, at::cat(parts, 1)}));
    return logits[0].narrow(0, logits.size(1) - static_cast<int64_t>(target.size()), target.size());
  };
  for (int64_t stage : {1, 2}) {
    at::manual_seed(24);
    XragCompressor x(m, XragOptions{12, stage, 2.0});
    x.attach(data);
    at::Tensor loss = x.loss(m, b, ContextLayout{});
    double nll = 0, kl = 0;
    int64_t tokens = 0;
    {
      at::NoGradGuard g;
      for (int64_t r : {2, 0, 1}) {
        at::Tensor z = x.project(docs->embeddings.narrow(0, r, 1));
        const auto& target = stage == 1 ? docs->texts[r] : docs->answers[r];
        at::Tensor s = seq(stage == 1 ? data.paraphrase : data.task, z, target);
        at::Tensor t = at::tensor(target, at::kLong);
        nll += at::cross_entropy_loss(s, t, {}, at::Reduction::Sum).item<double>();
        if (stage == 2) {
          at::Tensor te = seq(data.task, m->embed(at::tensor(docs->texts[r], at::kLong).unsqueeze(0)), target);
          at::Tensor pt = at::softmax(te, -1);
          kl += (pt * (at::log_softmax(te, -1) - at::log_softmax(s, -1))).sum().item<double>();
        }
        tokens += static_cast<int64_t>(target.size());
      }
    }
    EXPECT_NEAR(loss.item<double>(), (nll + 2.0 * kl) / tokens, 1e-5) << "stage " << stage;
    loss.backward();
    for (auto& [name, t] : x.named())
      EXPECT_TRUE(t.grad().defined() && t.grad().abs().sum().item<double>() > 0) << name;
    for (auto& p : m->parameters()) EXPECT_FALSE(p.grad().defined());
  }
}

}  // namespace
}  // namespace condense
