#include "model/generate.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "model/fast_decoder.h"
#include "model/kv_cache.h"

namespace condense {

double GenerationResult::decode_tokens_per_s() const {
  return decode_seconds > 0 ? (tokens.size() > 1 ? (tokens.size() - 1) / decode_seconds : 0) : 0;
}

int64_t sample_token(const at::Tensor& logits_in, const SamplingOptions& opt, at::Generator& gen) {
  at::Tensor logits = logits_in.to(at::kFloat).flatten();
  if (opt.vocab_limit > 0 && opt.vocab_limit < logits.numel()) logits = logits.narrow(0, 0, opt.vocab_limit);
  if (opt.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / opt.temperature;
  if (opt.top_k > 0 && opt.top_k < logits.numel()) {
    at::Tensor kth = std::get<0>(logits.topk(opt.top_k)).min();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (opt.top_p < 1.0) {
    auto [sorted, idx] = logits.sort(/*dim=*/-1, /*descending=*/true);
    at::Tensor cum = sorted.softmax(-1).cumsum(-1);
    // Drop a token when the mass before it already reaches top_p (always keep the first).
    at::Tensor drop = (cum - sorted.softmax(-1)) >= opt.top_p;
    sorted = sorted.masked_fill(drop, -std::numeric_limits<float>::infinity());
    logits = at::empty_like(logits).scatter_(0, idx, sorted);
  }
  at::Tensor probs = logits.softmax(-1);
  return at::multinomial(probs, 1, /*replacement=*/false, gen).item<int64_t>();
}

namespace {

// ids [B, T] or embeddings [B, T, hidden] through the cache in the chunks it accepts.
at::Tensor prefill_any(LlamaForCausalLM& model, const at::Tensor& x, bool embeds, KVCache& cache) {
  std::vector<at::Tensor> parts;
  // int8 caches take chunks across key groups (the attention applies the cache's mask), of at
  // most kInt8Chunk positions: each chunk holds dequantized copies of the keys and values it
  // reads and the chunk's keys twice. Chunks of one group (32 positions) made the projections'
  // GEMMs so small that SmolLM2-135M's 2177-token prefill took 8.2 s against 4.4 s with an fp
  // cache (MKL repacking the weights for every 32-row product). Latent caches keep group chunks.
  constexpr int64_t kInt8Chunk = 512;
  const bool latent = model->kv_hook() && model->kv_hook()->latent();
  const bool cross = cache.kind().type == KVCacheType::kInt8 && !latent;
  for (int64_t pos = 0, t = x.size(1); pos < t;) {
    const int64_t n = std::min(t - pos, cross ? std::min(cache.max_append(true), kInt8Chunk) : cache.max_append());
    CONDENSE_CHECK(n > 0, "prefill: the KV cache is full ({} positions)", cache.capacity());
    at::Tensor piece = x.narrow(1, pos, n);
    parts.push_back(embeds ? model->hidden({{}, piece, &cache}) : model->hidden({piece, {}, &cache}));
    pos += n;
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

}  // namespace

at::Tensor prefill(LlamaForCausalLM& model, const at::Tensor& ids, KVCache& cache) {
  return prefill_any(model, ids, false, cache);
}

at::Tensor prefill_embeds(LlamaForCausalLM& model, const at::Tensor& embeds, KVCache& cache) {
  return prefill_any(model, embeds, true, cache);
}

bool is_stop_token(const SamplingOptions& opt, int64_t tok) {
  return tok == opt.eos_id || tok == opt.stop_id ||
         std::find(opt.more_stop_ids.begin(), opt.more_stop_ids.end(), tok) != opt.more_stop_ids.end();
}

std::vector<int64_t> config_stop_ids(const LlamaConfig& c) {
  std::vector<int64_t> ids = {c.eos_token_id};
  ids.insert(ids.end(), c.more_eos_token_ids.begin(), c.more_eos_token_ids.end());
  return ids;
}

GenerationResult generate(LlamaForCausalLM& model, const std::vector<int64_t>& prompt,
                          const SamplingOptions& opt, const KVCacheOptions& kv,
                          const at::Tensor& prefix_embeds) {
  const int64_t prefix = prefix_embeds.defined() ? prefix_embeds.size(0) : 0;
  CONDENSE_CHECK(!prompt.empty() || prefix > 0, "generate needs a non-empty prompt");
  const LlamaConfig& c = model->config();
  const int64_t given = prefix + static_cast<int64_t>(prompt.size());
  // (max_new_tokens capped first: given + a huge request would overflow.)
  int64_t capacity = std::min<int64_t>(
      c.max_position_embeddings, given + std::min<int64_t>(opt.max_new_tokens, c.max_position_embeddings));
  CONDENSE_CHECK(given < c.max_position_embeddings,
                 "prompt of {} positions ({} of context) does not fit max_position_embeddings {}",
                 given, prefix, c.max_position_embeddings);
  torch::NoGradGuard no_grad;
  bool was_training = model->is_training();
  model->eval();
  at::Tensor weight = model->lm_head_weight();
  KVCache cache(c, 1, capacity, weight.options(), kv);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt.seed);
  GenerationResult result;
  using clock = std::chrono::steady_clock;

  auto t0 = clock::now();
  at::Tensor h;
  if (prefix > 0) h = prefill_embeds(model, prefix_embeds.to(weight.device(), weight.scalar_type()).unsqueeze(0), cache);
  if (!prompt.empty()) {
    at::Tensor ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).to(weight.device()).unsqueeze(0);
    h = prefill(model, ids, cache);
  }
  at::Tensor next_logits = model->logits(h.select(1, h.size(1) - 1)).squeeze(0).cpu();
  auto t1 = clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  // One position at a time: the fast decoder where it applies (same cache), else the forward.
  std::string why = opt.aten_decode ? "asked for" : FastDecoder::unsupported(model, cache);
  std::optional<FastDecoder> fast;
  if (why.empty()) fast.emplace(model, cache);
  result.decode_path = why.empty() ? "fast" : "aten (" + why + ")";

  while (static_cast<int64_t>(result.tokens.size()) < opt.max_new_tokens) {
    int64_t tok = sample_token(next_logits, opt, gen);
    result.tokens.push_back(tok);
    if (is_stop_token(opt, tok) || cache.length() >= capacity) break;
    if (static_cast<int64_t>(result.tokens.size()) == opt.max_new_tokens) break;
    if (fast) {
      next_logits = fast->step(tok);
      continue;
    }
    at::Tensor step = at::full({1, 1}, tok, at::TensorOptions().dtype(at::kLong).device(weight.device()));
    h = model->hidden({step, {}, &cache});
    next_logits = model->logits(h.select(1, 0)).squeeze(0).cpu();
  }
  result.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  result.kv_bytes_per_token = cache.bytes_per_token();
  result.kv_bytes_held = cache.held_bytes();
  if (was_training) model->train();
  return result;
}

}  // namespace condense
