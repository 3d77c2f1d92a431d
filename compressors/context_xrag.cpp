#include "compressors/context_xrag.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "compressors/distill.h"
#include "core/error.h"
#include "core/shape.h"

namespace condense {
namespace {

constexpr const char* kPlaceholder = "{context}";
constexpr int64_t kIgnore = -100;  // cross_entropy's and chunked_kd_loss's default ignore_index

at::Tensor ids_tensor(const std::vector<int64_t>& ids, c10::Device device) {
  return at::tensor(ids, at::kLong).to(device).unsqueeze(0);
}

at::Tensor cat_parts(const std::vector<at::Tensor>& parts) {
  std::vector<at::Tensor> present;
  for (const at::Tensor& p : parts)
    if (p.defined() && p.size(1) > 0) present.push_back(p);
  return at::cat(present, 1);
}

// Linear default of LibTorch (kaiming_uniform with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
at::Tensor linear_weight(int64_t out, int64_t in, const at::TensorOptions& o) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  return at::empty({out, in}, o).uniform_(-bound, bound);
}

}  // namespace

PromptTemplate split_template(const std::string& text, const Tokenizer& tok, const std::string& key) {
  const size_t at_pos = text.find(kPlaceholder);
  CONDENSE_CHECK(at_pos != std::string::npos && text.find(kPlaceholder, at_pos + 1) == std::string::npos,
                 "{} must hold the placeholder {} exactly once, got \"{}\"", key, kPlaceholder, text);
  PromptTemplate t;
  if (tok.bos_id() >= 0) t.before.push_back(tok.bos_id());
  // The placeholder stands for a word: the space before it goes with it (no trailing-space
  // token), and the text after it starts a new word when it starts with a space.
  std::string before = text.substr(0, at_pos), after = text.substr(at_pos + std::string(kPlaceholder).size());
  while (!before.empty() && before.back() == ' ') before.pop_back();
  for (int32_t id : tok.encode(before)) t.before.push_back(id);
  const bool new_word = !after.empty() && after[0] == ' ';
  for (int32_t id : new_word ? word_initial_ids(tok, after) : tok.encode(after)) t.after.push_back(id);
  CONDENSE_CHECK(!t.before.empty(), "{}: the decoder needs at least one position before the context "
                 "(a tokenizer without <bos> and nothing before {})", key, kPlaceholder);
  return t;
}

std::vector<at::Tensor> splice_context(LlamaForCausalLM& decoder, const PromptTemplate& t,
                                       const at::Tensor& context) {
  const c10::Device device = decoder->lm_head_weight().device();
  const int64_t b = context.size(0);
  auto embed = [&](const std::vector<int64_t>& ids) {
    if (ids.empty()) return at::Tensor();
    at::Tensor e = decoder->embed(ids_tensor(ids, device));
    return e.expand({b, e.size(1), e.size(2)});
  };
  return {embed(t.before), context, embed(t.after)};
}

XragCompressor::XragCompressor(LlamaForCausalLM& decoder, XragOptions options) : options_(options) {
  CONDENSE_CHECK(options_.embedding_dim >= 1, "context.embedding_dim must be >= 1, got {}",
                 options_.embedding_dim);
  CONDENSE_CHECK(options_.stage == 1 || options_.stage == 2, "context.stage must be 1 (paraphrase) or 2 "
                 "(task with self-distillation), got {}", options_.stage);
  CONDENSE_CHECK(options_.kl_weight >= 0, "context.kl_weight must be >= 0, got {}", options_.kl_weight);
  const at::Tensor w = decoder->lm_head_weight();
  const auto o = w.options().requires_grad(false);
  const int64_t h = decoder->config().hidden_size, d = options_.embedding_dim;
  w1_ = linear_weight(h, d, o).requires_grad_(true);
  b1_ = at::zeros({h}, o).requires_grad_(true);
  w2_ = linear_weight(h, h, o).requires_grad_(true);
  b2_ = at::zeros({h}, o).requires_grad_(true);
}

at::Tensor XragCompressor::project(const at::Tensor& e) const {
  CONDENSE_CHECK(e.dim() == 2 && e.size(1) == w1_.size(1), "xRAG projector reads embeddings [B, {}] (its "
                 "context.embedding_dim), got {}: were they made by another embedding model?",
                 w1_.size(1), shape_str(e.sizes()));
  at::Tensor x = e.to(w1_.device(), w1_.scalar_type());
  at::Tensor h = at::gelu(at::linear(x, w1_, b1_));
  return at::linear(h, w2_, b2_).unsqueeze(1);
}

at::Tensor XragCompressor::context(LlamaForCausalLM&, const at::Tensor&) {
  fail("an xRAG compressor reads the sentence embedding a retriever made of the text, not its tokens: "
       "embed the text with tools/embed_documents.py, then `condense compress RUN --embeddings FILE.h5 "
       "--out CTX.h5` and pass --context-vectors CTX.h5");
}

// The decoder reading template(z) then `ids` rows teacher-forced: the final hidden states that
// predict each row's tokens [B, L, hidden] and the targets [B, L] (kIgnore past a row's end).
std::pair<at::Tensor, at::Tensor> XragCompressor::read_after(LlamaForCausalLM& decoder, const PromptTemplate& t,
                                                             const TokenizedDocuments& docs,
                                                             const std::vector<std::vector<int64_t>>& ids,
                                                             const at::Tensor& rows) const {
  const c10::Device device = decoder->lm_head_weight().device();
  at::Tensor z = project(docs.embeddings.index_select(0, rows.to(at::kCPU)));
  at::Tensor in = padded_rows(ids, rows, data_.pad).to(device);
  const int64_t n = in.size(1);
  std::vector<at::Tensor> parts = splice_context(decoder, t, z);
  parts.push_back(decoder->embed(in.narrow(1, 0, n - 1)));
  at::Tensor h = decoder->hidden({at::Tensor(), cat_parts(parts)}).narrow(1, -n, n);
  return {h, padded_rows(ids, rows, kIgnore).to(device)};
}

at::Tensor XragCompressor::nll(LlamaForCausalLM& decoder, const TokenizedDocuments& docs,
                               const at::Tensor& rows) {
  if (options_.stage == 2) return task_loss(decoder, docs, rows, /*distill=*/false);
  auto [h, targets] = read_after(decoder, data_.paraphrase, docs, docs.texts, rows);
  at::Tensor logits = decoder->logits(h);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}));
}

int64_t XragCompressor::target_tokens(const TokenizedDocuments& docs, const at::Tensor& rows) const {
  const std::vector<std::vector<int64_t>>& ids = options_.stage == 1 ? docs.texts : docs.answers;
  at::Tensor r = rows.to(at::kCPU, at::kLong).contiguous();
  int64_t n = 0;
  for (int64_t i = 0; i < r.size(0); ++i) n += static_cast<int64_t>(ids.at(r.data_ptr<int64_t>()[i]).size());
  return n;
}

at::Tensor XragCompressor::task_loss(LlamaForCausalLM& decoder, const TokenizedDocuments& docs,
                                     const at::Tensor& rows, bool distill) {
  CONDENSE_CHECK(!docs.answers.empty(), "xRAG stage 2 needs documents with answers (the file's "
                 "answers/*; tools/gcide_headwords.py makes a set)");
  const c10::Device device = decoder->lm_head_weight().device();
  auto [h, targets] = read_after(decoder, data_.task, docs, docs.answers, rows);
  const at::Tensor w = decoder->lm_head_weight();
  if (!distill || options_.kl_weight == 0) {
    at::Tensor logits = decoder->logits(h);
    return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}));
  }
  // The teacher: the same frozen decoder with the document as text in place of the
  // placeholder, row by row (documents differ in length and sit mid-sequence).
  at::Tensor teacher = at::zeros_like(h);
  {
    at::NoGradGuard no_grad;
    at::Tensor r = rows.to(at::kCPU, at::kLong).contiguous();
    for (int64_t i = 0; i < r.size(0); ++i) {
      const int64_t row = r.data_ptr<int64_t>()[i];
      const std::vector<int64_t>& ans = docs.answers[row];
      const int64_t n = static_cast<int64_t>(ans.size());
      std::vector<at::Tensor> tp =
          splice_context(decoder, data_.task, decoder->embed(ids_tensor(docs.texts[row], device)));
      tp.push_back(decoder->embed(ids_tensor(std::vector<int64_t>(ans.begin(), ans.end() - 1), device)));
      at::Tensor th = decoder->hidden({at::Tensor(), cat_parts(tp)});
      teacher[i].narrow(0, 0, n).copy_(th[0].narrow(0, th.size(1) - n, n));
    }
  }
  // NLL + w * KL = (1 + w) * ((w / (1 + w)) * KL + (1 / (1 + w)) * NLL).
  const double wk = options_.kl_weight;
  KdLossOptions o;
  o.kd_ratio = wk / (1 + wk);
  o.ignore_index = kIgnore;
  o.softcap = o.teacher_softcap = decoder->config().final_logit_softcapping;
  return chunked_kd_loss(h, w, teacher, w, targets, o) * (1 + wk);
}

at::Tensor XragCompressor::loss(LlamaForCausalLM& decoder, const Batch& batch, const ContextLayout&) {
  CONDENSE_CHECK(data_.train && batch.rows.defined(), "xRAG training needs its documents attached and "
                 "batches that carry document rows");
  if (options_.stage == 1) return nll(decoder, *data_.train, batch.rows);
  return task_loss(decoder, *data_.train, batch.rows, /*distill=*/true);
}

std::vector<std::pair<std::string, at::Tensor>> XragCompressor::named() const {
  return {{"xrag.projector.0.weight", w1_}, {"xrag.projector.0.bias", b1_},
          {"xrag.projector.2.weight", w2_}, {"xrag.projector.2.bias", b2_}};
}

void XragCompressor::load(const StoredTensors& stored) {
  load_named_tensors(stored, named(), "xRAG projector", " (context.embedding_dim or the decoder differ?)");
}

int64_t XragCompressor::stored_embedding_dim(const StoredTensors& stored) {
  if (!stored.has("xrag.projector.0.weight")) return 0;
  const at::Tensor& w = stored.at("xrag.projector.0.weight");
  return w.dim() == 2 ? w.size(1) : 0;
}

void XragCompressor::calibrate(LlamaForCausalLM& decoder, const at::Tensor&) {
  CONDENSE_CHECK(data_.train, "xRAG calibration needs its training documents attached");
  at::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(64, data_.train->size());
  const double target = decoder->model->embed_tokens->weight.pow(2).mean().sqrt().item<double>() *
                        decoder->config().embedding_scale();
  const double have = project(data_.train->embeddings.narrow(0, 0, n)).pow(2).mean().sqrt().item<double>();
  CONDENSE_CHECK(have > 0 && std::isfinite(have), "xRAG calibration: the projector's output RMS is {}", have);
  w2_.mul_(target / have);
  b2_.mul_(target / have);
}

void XragCompressor::to(c10::Device device) {
  at::NoGradGuard no_grad;
  for (at::Tensor* t : {&w1_, &b1_, &w2_, &b2_}) *t = t->to(device).detach().requires_grad_(true);
}

std::string XragCompressor::describe() const {
  return fmt::format("xrag (stage {}{}, embeddings of width {} -> one vector of {})", options_.stage,
                     options_.stage == 2 ? fmt::format(", kl_weight {}", options_.kl_weight) : "",
                     w1_.size(1), w2_.size(0));
}

}  // namespace condense
