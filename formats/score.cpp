#include "formats/score.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "data/tokenizer_file.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "formats/compressed_context.h"
#include "formats/gguf_llama.h"
#include "formats/hf_import.h"
#include "formats/inference_model.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "trainer/checkpoint.h"

namespace condense {
namespace fs = std::filesystem;

ModelSource load_model_source(const std::string& source, const std::string& tokenizer_override) {
  ModelSource s;
  std::string tokenizer_problem;  // a GGUF vocabulary condense cannot hold
  if (fs::path(source).extension() == ".gguf") {
    s.kind = "gguf";
    s.model = load_gguf_model(source, &s.tokenizer_bytes, &tokenizer_problem);
  } else if (fs::is_directory(source) && fs::exists(fs::path(source) / "config.json")) {
    s.kind = "hf";
    HfModel hf = load_hf_dir(source, tokenizer_override);
    s.model = hf.model;
    s.tokenizer_bytes = hf.tokenizer_bytes;
  } else {
    s.kind = "checkpoint";
    std::string path = resolve_checkpoint_path(source);
    Checkpoint ckpt = Checkpoint::open(path);
    s.model = load_inference_model(ckpt);
    s.tokenizer_bytes = ckpt.tokenizer_bytes();
  }
  if (!tokenizer_override.empty()) {
    const Tokenizer tok = load_tokenizer_file(tokenizer_override);
    // An id past the embedding would fail deep in LibTorch ("index out of range in self").
    CONDENSE_CHECK(tok.vocab_size() <= s.model->config().vocab_size, "{}: the tokenizer has {} "
                   "pieces but {} has {} embedding rows", tokenizer_override, tok.vocab_size(),
                   source, s.model->config().vocab_size);
    s.tokenizer_bytes = tok.serialized();
  }
  CONDENSE_CHECK(!s.tokenizer_bytes.empty(), "{}: no tokenizer in this {}{}; pass --tokenizer "
                 "T.model", source, s.kind,
                 !tokenizer_problem.empty() ? " (" + tokenizer_problem + ")"
                 : s.kind == "gguf" ? std::string(" (it has no vocabulary condense reads)") : std::string());
  return s;
}

namespace {

// --json names a new file, or an earlier score's output (reruns replace it), never another
// file, such as the checkpoint or text being scored; only what starts like JSON is parsed.
void check_score_output(const std::string& path) {
  if (!fs::exists(path) || fs::is_directory(path)) return check_new_output(path);
  nlohmann::json earlier;
  std::ifstream in(path, std::ios::binary);
  if (in.peek() == '{') {
    try {
      earlier = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
    }
  }
  CONDENSE_CHECK(earlier.is_object() && earlier.contains("nll") && earlier.contains("source") &&
                     earlier.contains("kind") && earlier.contains("predicted"),
                 "--json {}: already exists and is not an earlier score's output; refusing to "
                 "overwrite it", path);
}

}  // namespace

int run_score(const std::string& source, const ScoreOptions& opt) {
  CONDENSE_CHECK(opt.top_k >= 0, "--top-k must be >= 0 (got {})", opt.top_k);
  CONDENSE_CHECK(!opt.token_by_token || !opt.kv_cache.empty(),
                 "--token-by-token decodes through a KV cache: give --kv-cache fp or int8");
  CONDENSE_CHECK(opt.kv_rank == 0 || opt.kv_budget == 0, "give --kv-rank or --kv-budget, not both");
  CONDENSE_CHECK(opt.kv_budget >= 0 && opt.kv_budget <= 1, "--kv-budget {}: valid is (0, 1] (0: off)",
                 opt.kv_budget);
  check_kv_granularity(opt.kv_budget, opt.kv_granularity);
  if (!opt.json_out.empty()) check_score_output(opt.json_out);  // before any work
  ModelSource src = load_model_source(source, opt.tokenizer);
  set_kv_rank(src.model, opt.kv_rank, source);
  set_kv_window(src.model, opt.kv_window, source);
  if (opt.kv_budget > 0) {
    CONDENSE_CHECK(src.kind == "checkpoint", "--kv-budget: {} is a {}; KV projections live in "
                   "condense checkpoints", source, src.kind);
    const std::string path = resolve_checkpoint_path(source);
    set_kv_budget(src.model, opt.kv_budget, opt.kv_granularity, Checkpoint::open(path), path, opt.data);
  }
  Tokenizer tok = Tokenizer::from_serialized(src.tokenizer_bytes, source + ":tokenizer");
  std::string text = read_text_file(opt.text_file);
  const bool has_context = !opt.context_file.empty() || !opt.context_vectors.empty();
  CONDENSE_CHECK(!has_context || (src.kind == "checkpoint" && opt.kv_cache.empty()),
                 "--context / --context-vectors: {} must be a condense checkpoint with a context "
                 "compressor (it is a {}), scored without --kv-cache", source, src.kind);
  CompressedContext context;
  if (has_context)
    context = context_for(resolve_checkpoint_path(source), src.model, tok, opt.context_file,
                          opt.context_vectors);
  // After a compressed context the text continues it directly, as in training (no <s>); the
  // <Cont> marker (id -1) predicts its first token.
  std::vector<int32_t> text_ids = has_context ? tok.encode(text) : tok.prompt_ids(text);
  std::vector<int64_t> ids(text_ids.begin(), text_ids.end());
  if (has_context) ids.insert(ids.begin(), -1);
  const int64_t context_positions = has_context ? context.embeds.size(0) : 0;
  const LlamaConfig& c = src.model->config();
  CONDENSE_CHECK(static_cast<int64_t>(ids.size()) + std::max<int64_t>(0, context_positions - 1) <=
                     c.max_position_embeddings,
                 "{}: {} tokens{} do not fit the model's context of {} (max_position_embeddings)",
                 opt.text_file, ids.size() - (has_context ? 1 : 0),
                 has_context ? fmt::format(" after {} context positions", context_positions) : "",
                 c.max_position_embeddings);
  CONDENSE_CHECK(ids.size() >= 2, "{}: empty text, nothing to score", opt.text_file);
  at::NoGradGuard no_grad;
  src.model->eval();
  at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  at::Tensor logits;
  double kv_bytes = 0;
  if (has_context) {
    // [vectors, <Cont>, text]: the logits from the marker on, one row per entry of ids.
    const int64_t n = static_cast<int64_t>(ids.size()) - 1;
    at::Tensor embeds = at::cat({context.embeds.unsqueeze(0), src.model->embed(input.narrow(1, 1, n))}, 1);
    at::Tensor h = src.model->hidden({{}, embeds});
    logits = src.model->logits(h.narrow(1, context_positions - 1, n + 1));
  } else if (opt.kv_cache.empty()) {
    logits = src.model->forward(input);
  } else {
    at::Tensor w = src.model->lm_head_weight();
    KVCache cache(c, 1, input.size(1), w.options(), parse_kv_cache(opt.kv_cache, "--kv-cache"));
    input = input.to(w.device());
    at::Tensor h;
    if (opt.token_by_token) {
      std::vector<at::Tensor> steps;
      for (int64_t i = 0; i < input.size(1); ++i)
        steps.push_back(src.model->hidden({input.narrow(1, i, 1), {}, &cache}));
      h = at::cat(steps, 1);
    } else {
      h = prefill(src.model, input, cache);
    }
    logits = src.model->logits(h);
    kv_bytes = cache.bytes_per_token();
  }
  at::Tensor logp = logits.squeeze(0).to(at::kCPU, at::kDouble).log_softmax(-1);
  const int64_t n = static_cast<int64_t>(ids.size()) - 1;
  nlohmann::ordered_json positions = nlohmann::ordered_json::array();
  double nll = 0;
  int64_t k = std::min<int64_t>(opt.top_k, c.vocab_size);
  auto acc = logp.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    double lp = acc[i][ids[i + 1]];
    nll -= lp;
    nlohmann::ordered_json p = {{"pos", i}, {"id", ids[i]}, {"next_id", ids[i + 1]}, {"logprob", lp}};
    if (opt.full) {
      std::vector<double> row(logp[i].data_ptr<double>(), logp[i].data_ptr<double>() + c.vocab_size);
      p["logprobs"] = row;
    } else if (k > 0) {
      auto [vals, idx] = logp[i].topk(k);
      nlohmann::ordered_json top = nlohmann::ordered_json::array();
      for (int64_t j = 0; j < k; ++j) top.push_back({idx[j].item<int64_t>(), vals[j].item<double>()});
      p["top"] = top;
    }
    positions.push_back(std::move(p));
  }
  nlohmann::ordered_json out = {{"source", source}, {"kind", src.kind},
                                {"tokens", ids.size()}, {"predicted", n}, {"nll", nll},
                                {"mean_nll", nll / n}, {"perplexity", std::exp(nll / n)},
                                {"positions", positions}};
  // Without --kv-cache: what a full-precision cache of the model as scored would hold.
  out["kv_cache"] = opt.kv_cache.empty() ? "none" : opt.kv_cache;
  out["kv_bytes_per_token"] = opt.kv_cache.empty() ? kv_bytes_per_token(src.model) : kv_bytes;
  if (opt.kv_rank > 0) out["kv_rank"] = opt.kv_rank;
  if (opt.kv_budget > 0) {
    out["kv_budget"] = opt.kv_budget;
    out["kv_granularity"] = opt.kv_granularity;
  }
  if (opt.kv_window > 0) out["kv_window"] = opt.kv_window;
  if (has_context) {
    out["context_tokens"] = context.tokens;
    out["context_positions"] = context_positions;
  }
  if (opt.json_out.empty()) {
    std::cout << out.dump() << "\n";
  } else {
    write_text_atomically(opt.json_out, out.dump() + "\n");
    std::cout << fmt::format("{{\"source\": \"{}\", \"tokens\": {}, \"nll\": {:.6f}, "
                             "\"mean_nll\": {:.6f}, \"perplexity\": {:.4f}, \"json\": \"{}\"}}\n",
                             source, ids.size(), nll, nll / n, std::exp(nll / n), opt.json_out);
  }
  return 0;
}

}  // namespace condense
