#include "compressors/context_compllm.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <unordered_set>

#include "compressors/distill.h"
#include "core/error.h"
#include "core/hash.h"

namespace condense {
namespace {

// Installs the adapters on the decoder for one compression pass and removes them afterwards,
// also when the pass throws: the decoder pass must never see them.
class AdapterScope {
 public:
  AdapterScope(LlamaForCausalLM& decoder, std::shared_ptr<LoraAdapters> adapters) : decoder_(decoder) {
    CONDENSE_CHECK(!decoder->projection_hook(), "CompLLM: the decoder already has a projection hook");
    decoder_->set_projection_hook(std::move(adapters));
  }
  ~AdapterScope() { decoder_->set_projection_hook(nullptr); }

 private:
  LlamaForCausalLM& decoder_;
};

std::vector<std::string> projection_weights(LlamaForCausalLM& decoder) {
  std::vector<std::string> out;
  for (const auto& p : decoder->named_parameters()) {
    const std::string& n = p.key();
    if (p.value().dim() == 2 && n.rfind("model.layers.", 0) == 0 && n.size() > 12 &&
        n.compare(n.size() - 12, 12, "_proj.weight") == 0)
      out.push_back(n);
  }
  return out;
}

}  // namespace

CompLlmCompressor::CompLlmCompressor(LlamaForCausalLM& decoder, CompLlmOptions o) : options_(o) {
  const LlamaConfig& c = decoder->config();
  CONDENSE_CHECK(o.segment_len >= 1, "context.segment_len {} must be >= 1", o.segment_len);
  CONDENSE_CHECK(o.rate >= 1 && o.rate <= o.segment_len, "context.pooling_factor {} (CompLLM's "
                 "rate C): valid is 1..{} (context.segment_len)", o.rate, o.segment_len);
  CONDENSE_CHECK(o.lora_rank >= 1 && o.lora_rank <= c.hidden_size, "context.lora_rank {}: valid is "
                 "1..{}", o.lora_rank, c.hidden_size);
  CONDENSE_CHECK(o.kd_ratio >= 0 && o.kd_ratio <= 1, "context.kd_ratio {}: valid is [0, 1]", o.kd_ratio);
  adapters_ = std::make_shared<LoraAdapters>(decoder, projection_weights(decoder),
                                             LoraSpec{"lora", o.lora_rank, o.lora_alpha}, nullptr);
  at::NoGradGuard no_grad;
  at::Tensor emb = decoder->model->embed_tokens->weight.detach();
  const double rms = emb.pow(2).mean().sqrt().item<double>() * c.embedding_scale();
  const int64_t slots = (o.segment_len + o.rate - 1) / o.rate;
  slots_ = (at::randn({slots, c.hidden_size}, emb.options()) * rms).requires_grad_(true);
  proj_ = at::eye(c.hidden_size, emb.options()).requires_grad_(true);
}

at::Tensor CompLlmCompressor::compress_segment(LlamaForCausalLM& decoder, const at::Tensor& segment) {
  const int64_t b = segment.size(0), s = segment.size(1), k = (s + options_.rate - 1) / options_.rate;
  CONDENSE_CHECK(s >= 1 && s <= options_.segment_len, "CompLLM: a segment of {} tokens (valid 1..{})",
                 s, options_.segment_len);
  at::Tensor slots = slots_.narrow(0, 0, k).unsqueeze(0).expand({b, k, slots_.size(1)});
  at::Tensor h;
  {
    AdapterScope scope(decoder, adapters_);
    h = decoder->hidden({{}, at::cat({decoder->embed(segment), slots}, 1)});
  }
  return at::linear(h.narrow(1, s, k), proj_);
}

at::Tensor CompLlmCompressor::context(LlamaForCausalLM& decoder, const at::Tensor& ids) {
  // Segments are independent, so every full segment of every row goes through the decoder in
  // one batch ([B x full, S], row r's segment j at r x full + j), and the last partial segment
  // of each row in a second: one pass with the adapters instead of one per segment (and, from
  // the cache, per row).
  const int64_t b = ids.size(0), n = ids.size(1), seg = options_.segment_len;
  const int64_t full = n / seg, rest = n % seg;
  std::vector<at::Tensor> parts;
  if (full > 0) {
    at::Tensor c = compress_segments(decoder, ids.narrow(1, 0, full * seg).reshape({b * full, seg}));
    parts.push_back(c.reshape({b, full * c.size(1), c.size(2)}));
  }
  if (rest > 0) parts.push_back(compress_segments(decoder, ids.narrow(1, full * seg, rest)));
  return at::cat(parts, 1);
}

at::Tensor CompLlmCompressor::compress_segments(LlamaForCausalLM& decoder, const at::Tensor& segments) {
  if (training_ || at::GradMode::is_enabled()) return compress_segment(decoder, segments);
  // In inference mode without gradients: each row from the content cache, the misses
  // compressed in one batch.
  at::Tensor host = segments.to(at::kCPU, at::kLong).contiguous();
  const int64_t rows = host.size(0);
  std::vector<std::string> keys(rows);
  std::vector<int64_t> misses;
  std::unordered_set<std::string> missing;  // a segment repeated within the batch is compressed once
  for (int64_t r = 0; r < rows; ++r) {
    at::Tensor row = host[r];
    keys[r] = sha256_hex(std::string_view(static_cast<const char*>(row.data_ptr()),
                                          row.numel() * sizeof(int64_t)));
    if (cache_.count(keys[r])) ++hits_;
    else if (missing.insert(keys[r]).second) misses.push_back(r);
  }
  if (!misses.empty()) {
    at::Tensor index = at::tensor(misses, at::kLong).to(segments.device());
    at::Tensor fresh = compress_segment(decoder, segments.index_select(0, index));
    for (size_t i = 0; i < misses.size(); ++i) cache_.emplace(keys[misses[i]], fresh[static_cast<int64_t>(i)]);
  }
  std::vector<at::Tensor> out;
  for (int64_t r = 0; r < rows; ++r) out.push_back(cache_.at(keys[r]));
  return at::stack(out, 0);
}

int64_t CompLlmCompressor::positions(int64_t n) const {
  const int64_t seg = options_.segment_len, c = options_.rate;
  const int64_t full = n / seg, rest = n % seg;
  return full * ((seg + c - 1) / c) + (rest + c - 1) / c;
}

at::Tensor CompLlmCompressor::loss(LlamaForCausalLM& decoder, const Batch& b, const ContextLayout& layout) {
  const int64_t t = b.inputs.size(1), p = layout.prefix, n = layout.chunk, m = t - p - n;
  at::Tensor concepts = context(decoder, b.inputs.narrow(1, p, n));
  const int64_t k = concepts.size(1);
  // Student: [prefix, concepts, continuation]; its positions p + k - 1 .. p + k + m - 1 predict
  // the m + 1 targets y[p + n - 1 ..], as the teacher's positions p + n - 1 .. t - 1 do.
  at::Tensor embeds = at::cat({decoder->embed(b.inputs.narrow(1, 0, p)), concepts,
                               decoder->embed(b.inputs.narrow(1, p + n, m))}, 1);
  at::Tensor student = decoder->hidden({{}, embeds}).narrow(1, p + k - 1, m + 1);
  at::Tensor teacher;
  {
    at::NoGradGuard no_grad;
    teacher = decoder->hidden({b.inputs}).narrow(1, p + n - 1, m + 1);
  }
  KdLossOptions kd;
  kd.kd_ratio = options_.kd_ratio;
  kd.softcap = kd.teacher_softcap = decoder->config().final_logit_softcapping;
  at::Tensor w = decoder->lm_head_weight();
  const int64_t h = student.size(-1);
  return chunked_kd_loss(student.reshape({-1, h}), w, teacher.reshape({-1, h}), w,
                         b.targets.narrow(1, p + n - 1, m + 1).reshape({-1}), kd);
}

std::vector<std::pair<std::string, at::Tensor>> CompLlmCompressor::named() const {
  std::vector<std::pair<std::string, at::Tensor>> out = {{"compllm.slots", slots_},
                                                         {"compllm.proj.weight", proj_}};
  for (auto& [name, t] : adapters_->parameters()) out.emplace_back("compllm." + name, t);
  return out;
}

void CompLlmCompressor::load(const StoredTensors& stored) {
  load_named_tensors(stored, named(), "CompLLM",
                     " (context.segment_len, pooling_factor or lora_rank differ?)");
  cache_.clear();
}

void CompLlmCompressor::calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) {
  // The projection's scale: concept embeddings of the first segment at the RMS of its tokens'
  // embeddings (the decoder's final norm leaves its hidden states far from embedding size).
  at::NoGradGuard no_grad;
  at::Tensor seg = ids.narrow(1, 0, std::min(options_.segment_len, ids.size(1)));
  const double target = decoder->embed(seg).pow(2).mean().sqrt().item<double>();
  const double now = compress_segment(decoder, seg).pow(2).mean().sqrt().item<double>();
  CONDENSE_CHECK(std::isfinite(now) && now > 0, "CompLLM: concept RMS {} on the calibration segment", now);
  proj_.mul_(target / now);
  cache_.clear();
}

void CompLlmCompressor::to(c10::Device device) {
  at::NoGradGuard no_grad;
  adapters_->to(device);
  slots_ = slots_.detach().to(device).requires_grad_(true);
  proj_ = proj_.detach().to(device).requires_grad_(true);
}

std::string CompLlmCompressor::describe() const {
  const int64_t k = (options_.segment_len + options_.rate - 1) / options_.rate;
  return fmt::format("compllm: segments of {} tokens -> {} concept embeddings (C = {}), LoRA rank {} "
                     "(alpha {}) on every projection for the compression pass, KD ratio {}",
                     options_.segment_len, k, options_.rate, options_.lora_rank, options_.lora_alpha,
                     options_.kd_ratio);
}

}  // namespace condense
