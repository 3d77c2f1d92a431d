// Tests for xRAG (compressors/context_xrag.h, compressors/context_documents.h) and the document
// task every context compressor is scored on (compressors/context_task.h), on tiny random models:
//   - the projected vector sits exactly at the placeholder's position, the template's tokens
//     around it; a template without exactly one placeholder is refused;
//   - the projector is Linear-GELU-Linear (against explicit math), refuses embeddings of
//     another width, and round-trips through HDF5;
//   - the document stream puts document i in the loader's window i and Batch::rows names it;
//   - stage 1 is the NLL of the document after the paraphrase prompt; stage 2 is NLL + w x KL
//     against the decoder reading the document as text (computed independently, row by row);
//     only the projector gets gradients;
//   - the document task's NLL, exact match and token accuracy equal a direct computation on
//     token ids.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "compressors/context_task.h"
#include "compressors/context_xrag.h"
#include "core/error.h"
#include "data/loader.h"
#include "io/hdf5_file.h"
#include "tests/test_support.h"

namespace condense {
namespace {

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

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
