#include "compressors/context_task.h"

#include <ATen/ATen.h>

#include <chrono>
#include <map>

#include "compressors/context_arc.h"
#include "compressors/context_xrag.h"
#include "core/error.h"

namespace condense {
namespace {

struct Score {
  double nll = 0, exact = 0, correct = 0, seconds = 0, positions = 0;
  int64_t scored = 0;
};

using Clock = std::chrono::steady_clock;

at::Tensor row_ids(const std::vector<int64_t>& ids, c10::Device device) {
  return at::tensor(ids, at::kLong).to(device).unsqueeze(0);
}

// The decoder reading `prefix` parts then `target` teacher-forced: NLL and argmax hits on the
// target's tokens.
void score(LlamaForCausalLM& decoder, std::vector<at::Tensor> parts, const std::vector<int64_t>& target,
           Score& into) {
  const c10::Device device = decoder->lm_head_weight().device();
  const int64_t n = static_cast<int64_t>(target.size());
  at::Tensor t = row_ids(target, device);
  parts.push_back(decoder->embed(t.narrow(1, 0, n - 1)));
  std::vector<at::Tensor> present;
  for (const at::Tensor& p : parts)
    if (p.defined() && p.size(1) > 0) present.push_back(p);
  at::Tensor logits = decoder->logits(decoder->hidden({at::Tensor(), at::cat(present, 1)}).narrow(1, -n, n));
  into.nll += at::cross_entropy_loss(logits[0].to(at::kFloat), t[0]).item<double>();
  const int64_t hits = (logits[0].argmax(-1) == t[0]).sum().item<int64_t>();
  into.correct += static_cast<double>(hits);
  into.exact += hits == n ? 1 : 0;
  into.scored += n;
}

nlohmann::json summary(const std::map<std::string, Score>& s, int64_t docs, bool per_token) {
  nlohmann::json nll, exact, accuracy, gap;
  for (const auto& [name, v] : s) {
    nll[name] = v.nll / docs;
    exact[name] = v.exact / docs;
    accuracy[name] = v.scored ? v.correct / v.scored : 0.0;
  }
  const double none = nll["none"].get<double>(), full = nll["full"].get<double>();
  for (const auto& [name, v] : s)
    if (name != "none" && name != "full") gap[name] = (none - nll[name].get<double>()) / (none - full);
  nlohmann::json out = {{"nll", nll}, {"gap_closed", gap}};
  for (const char* name : {"full", "compressed"}) {
    // Wall time of the forward that reads the context and scores the answer (compressed: plus
    // the compressor's own work; xRAG's retriever embedding is the user's and not counted), and
    // the context positions the decoder caches.
    out["seconds_per_document"][name] = s.at(name).seconds / docs;
    out["context_positions"][name] = s.at(name).positions / docs;
  }
  if (per_token) out["token_accuracy"] = accuracy;
  else out["exact_match"] = exact;
  return out;
}

}  // namespace

nlohmann::json document_task(LlamaForCausalLM& decoder, ContextCompressor& trained,
                             ContextCompressor& untrained, const ContextConfig& cc,
                             const DocumentSet& set, const Tokenizer& tok, int64_t count,
                             int64_t max_tokens) {
  CONDENSE_CHECK(set.has_answers(), "{}: the task needs documents with answers (answers/*; "
                 "tools/gcide_headwords.py makes a set)", set.path);
  CONDENSE_CHECK(count >= 2 && count <= set.size(), "--documents-count {} must be in [2, {}] (the "
                 "file's documents)", count, set.size());
  auto* xt = dynamic_cast<XragCompressor*>(&trained);
  auto* xu = dynamic_cast<XragCompressor*>(&untrained);
  const PromptTemplate task = split_template(cc.task_template, tok, "context.task_template");
  const PromptTemplate paraphrase = split_template(cc.paraphrase_template, tok, "context.paraphrase_template");
  TokenizedDocuments docs = tokenize_documents(set, tok, set.size() - count, set.size(), max_tokens, cc.answer_len);
  const c10::Device device = decoder->lm_head_weight().device();
  at::NoGradGuard no_grad;

  auto compressed = [&](ContextCompressor& c, XragCompressor* x, int64_t i) {
    return x ? x->project(docs.embeddings.narrow(0, i, 1)) : c.context(decoder, row_ids(docs.texts[i], device));
  };
  std::map<std::string, Score> answers, reconstruction;
  for (int64_t i = 0; i < docs.size(); ++i) {
    at::Tensor text = decoder->embed(row_ids(docs.texts[i], device));
    auto t0 = Clock::now();
    at::Tensor z = compressed(trained, xt, i);
    const double compress_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const int64_t k = std::min(z.size(1), text.size(1));
    std::map<std::string, at::Tensor> context = {
        {"none", at::Tensor()},
        {"full", text},
        {"compressed", z},
        {"truncated", text.narrow(1, 0, k)},
        {"mean_pool", xt ? text.mean(1, /*keepdim=*/true) : group_mean(text, cc.pooling_factor)},
        {"untrained", compressed(untrained, xu, i)},
        {"compressed_other", compressed(trained, xt, (i + 1) % docs.size())},
    };
    for (const auto& [name, ctx] : context) {
      auto t1 = Clock::now();
      Score& s = answers[name];
      score(decoder, splice_context(decoder, task, ctx.defined() ? ctx : text.narrow(1, 0, 0)),
            docs.answers[i], s);
      s.seconds += std::chrono::duration<double>(Clock::now() - t1).count() +
                   (name == "compressed" ? compress_seconds : 0.0);
      s.positions += ctx.defined() ? static_cast<double>(ctx.size(1)) : 0.0;
      if (xt)
        score(decoder, splice_context(decoder, paraphrase, ctx.defined() ? ctx : text.narrow(1, 0, 0)),
              docs.texts[i], reconstruction[name]);
    }
  }
  nlohmann::json out = {{"documents", docs.size()},
                        {"file", set.path},
                        {"task_template", cc.task_template},
                        {"answer", summary(answers, docs.size(), false)}};
  if (xt) {
    out["paraphrase_template"] = cc.paraphrase_template;
    out["paraphrase"] = summary(reconstruction, docs.size(), true);
  }
  return out;
}

}  // namespace condense
