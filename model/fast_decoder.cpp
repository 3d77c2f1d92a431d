#include "model/fast_decoder.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/decode_attention.h"
#include "model/decode_kernels.h"
#include "model/fused_kernels.h"
#include "model/rope.h"
#include "model/softcap.h"

namespace condense {
namespace {

// y = W x for several matrices reading the same x [cols], split by rows over ATen's threads in
// one parallel region.
struct MatvecTask {
  const at::Tensor* w;
  float* y;
};

void matvec(std::initializer_list<MatvecTask> tasks, const float* x, int64_t cols) {
  int64_t total = 0;
  for (const MatvecTask& t : tasks) total += t.w->size(0);
  // A thread's share should stream at least ~64 KB of weights to pay for waking it.
  const int64_t grain = std::max<int64_t>(8, 16384 / std::max<int64_t>(1, cols));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    int64_t offset = 0;
    for (const MatvecTask& t : tasks) {
      const int64_t rows = t.w->size(0);
      const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + rows);
      if (lo < hi) decode::matvec_rows(t.w->data_ptr<float>(), x, t.y, lo - offset, hi - offset, cols);
      offset += rows;
    }
  });
}

std::string check_weight(const at::Tensor& w, const std::string& name) {
  if (w.scalar_type() != at::kFloat) return name + " is not float32";
  if (!w.device().is_cpu()) return name + " is not on the CPU";
  if (!w.is_contiguous()) return name + " is not contiguous";
  return "";
}

}  // namespace

std::string FastDecoder::unsupported(const LlamaForCausalLM& model, const KVCache& cache) {
  if (model->kv_hook()) return "a KV hook (projected or latent KV cache) is set";
  if (model->projection_hook()) return "a projection hook is set";
  if (model->has_block_hook()) return "a block hook is set";
  if (cache.batch() != 1) return "the batch is not 1";
  if (cache.dtype() != at::kFloat) return "the KV cache is not float32";
  const LlamaConfig& c = model->config();
  if (c.head_size() % 2 != 0) return "head_dim is odd";
  if (std::string why = check_weight(model->lm_head_weight(), "the LM head"); !why.empty()) return why;
  for (const auto& layer : model->model->layer_list) {
    if (layer->mlp->linear_fn) return "the MLP's linear maps are replaced";
    for (const auto& p : layer->named_parameters())
      if (std::string why = check_weight(p.value(), p.key()); !why.empty()) return why;
  }
  return check_weight(model->model->embed_tokens->weight, "the token embedding");
}

FastDecoder::FastDecoder(const LlamaForCausalLM& model, KVCache& cache)
    : config_(model->config()), cache_(cache) {
  std::string why = unsupported(model, cache);
  CONDENSE_CHECK(why.empty(), "fast decoder: {}", why);
  for (const auto& l : model->model->layer_list) {
    layers_.push_back({l->input_layernorm->weight, l->self_attn->q_proj->weight,
                       l->self_attn->k_proj->weight, l->self_attn->v_proj->weight,
                       l->self_attn->o_proj->weight, l->post_attention_layernorm->weight,
                       l->mlp->gate_proj->weight, l->mlp->up_proj->weight,
                       l->mlp->down_proj->weight, l->self_attn->q_proj->bias,
                       l->self_attn->k_proj->bias, l->self_attn->v_proj->bias,
                       l->self_attn->q_norm ? l->self_attn->q_norm->weight : at::Tensor(),
                       l->self_attn->k_norm ? l->self_attn->k_norm->weight : at::Tensor(),
                       l->pre_feedforward_layernorm ? l->pre_feedforward_layernorm->weight : at::Tensor(),
                       l->post_feedforward_layernorm ? l->post_feedforward_layernorm->weight : at::Tensor(),
                       l->self_attn->uses_rope(), config_.local_rope(l->index), config_.window(l->index)});
  }
  embed_ = model->model->embed_tokens->weight;
  norm_ = model->model->norm->weight;
  lm_head_ = model->lm_head_weight();
  std::tie(cos_, sin_) = Rope(config_).cos_sin(0, cache.capacity(), at::kCPU);
  if (config_.gemma == 3)
    std::tie(cos_local_, sin_local_) =
        Rope(config_.rotary_dim(), config_.rope_local_theta).cos_sin(0, cache.capacity(), at::kCPU);
  const int64_t hidden = config_.hidden_size, heads = config_.num_attention_heads;
  const int64_t kv = config_.kv_heads(), d = config_.head_size();
  x_.resize(hidden);
  xn_.resize(hidden);
  proj_.resize(hidden);
  q_.resize(heads * d);
  att_.resize(heads * d);
  k_.resize(kv * d);
  v_.resize(kv * d);
  gate_.resize(config_.intermediate_size);
  up_.resize(config_.intermediate_size);
  head_rstd_.resize(heads);
  // Split-K scratch for at most ceil(capacity / kPart) parts per KV head.
  const int64_t parts = (cache.capacity() + kPart - 1) / kPart;
  scores_.resize(parts * heads * kPart);
  scaled_q_.resize(parts * kv * d);
  part_out_.resize(parts * heads * d);
  part_max_.resize(parts * heads);
  part_sum_.resize(parts * heads);
  logits_ = at::empty({config_.vocab_size}, at::kFloat);
}

// Each query head's attention into att_, from `parts` parts of kPart positions per KV head
// (split-K: decode_attention.h): task(kv_head, part, partial, scores, qs) computes one part of the
// KV head's query heads; then each head's parts are combined. The parts depend on the length
// only, so the result does not depend on the thread count.
template <class Task>
void FastDecoder::attend_parts(int64_t parts, const Task& task) {
  const int64_t heads = config_.num_attention_heads, kv = config_.kv_heads(), d = config_.head_size();
  const int64_t group = heads / kv;
  at::parallel_for(0, kv * parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t x = t / parts, p = t % parts, h = p * heads + x * group;  // h: its first partial
      task(x, p, decode::Partial{part_out_.data() + h * d, part_max_.data() + h, part_sum_.data() + h},
           scores_.data() + t * group * kPart, scaled_q_.data() + t * d);
    }
  });
  for (int64_t h = 0; h < heads; ++h)
    decode::combine(part_out_.data() + h * d, part_max_.data() + h, part_sum_.data() + h, parts, heads, d,
                    att_.data() + h * d);
}

// This position's keys (in k_) and values (in v_) into the cache, then attention. The fp cache is
// [1, kv, slots, d], position p in slot p % slots: the capacity, or a sliding-window layer's ring,
// which holds exactly the positions its window reads (attention sums over them in any order).
void FastDecoder::attend_fp(int64_t layer, int64_t pos) {
  const int64_t heads = config_.num_attention_heads, kv = config_.kv_heads(), d = config_.head_size();
  const int64_t group = heads / kv;
  auto [keys, values] = cache_.fp_buffers(layer);
  float* kbuf = keys.data_ptr<float>();
  float* vbuf = values.data_ptr<float>();
  const int64_t slots = cache_.slots(layer), slot = pos % slots;
  for (int64_t h = 0; h < kv; ++h) {
    std::memcpy(kbuf + (h * slots + slot) * d, k_.data() + h * d, d * sizeof(float));
    std::memcpy(vbuf + (h * slots + slot) * d, v_.data() + h * d, d * sizeof(float));
  }
  const int64_t n = std::min(pos + 1, slots), parts = (n + kPart - 1) / kPart;
  const float scale = static_cast<float>(config_.attention_scale());
  const float cap = static_cast<float>(config_.attn_logit_softcapping);
  attend_parts(parts, [&](int64_t x, int64_t p, decode::Partial part, float* scores, float*) {
    const int64_t r0 = p * kPart, rows = std::min(n, r0 + kPart) - r0;
    const int64_t at = (x * slots + r0) * d;
    decode::attend_part(q_.data() + x * group * d, group, kbuf + at, vbuf + at, rows, d, scale, cap, scores, part);
  });
}

// The same on an int8 cache (KIVI's layout, model/kv_cache.h): the key into the full-precision
// tail of the current group (commit() quantizes a group that completes, as it does after the ATen
// path's appends), the value quantized into its slot as the ATen append quantizes it (the same
// codes for the same floats), and attention over the codes (decode::attend_int8_part). A
// windowed layer reads positions pos - window + 1 .. pos whether or not it holds a ring.
void FastDecoder::attend_int8(int64_t layer, int64_t window, int64_t pos) {
  const int64_t heads = config_.num_attention_heads, kv = config_.kv_heads(), d = config_.head_size();
  const int64_t group = heads / kv;
  const KVCache::Int8Buffers b = cache_.int8_buffers(layer);
  const int64_t g = b.key_tail.size(2), slots = b.value_slots, slot = pos % slots, kg = b.key_groups;
  float* tail = b.key_tail.data_ptr<float>();
  uint8_t* codes = b.value_codes.data_ptr<uint8_t>();
  float* vscale = b.value_scale.data_ptr<float>();
  float* vmin = b.value_min.data_ptr<float>();
  for (int64_t h = 0; h < kv; ++h) {
    std::memcpy(tail + (h * g + pos % g) * d, k_.data() + h * d, d * sizeof(float));
    decode::quantize_row(v_.data() + h * d, d, codes + (h * slots + slot) * d, vscale + h * slots + slot,
                         vmin + h * slots + slot);
  }
  const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  const int64_t parts = (pos - first + kPart) / kPart;
  const float scale = static_cast<float>(config_.attention_scale());
  const float cap = static_cast<float>(config_.attn_logit_softcapping);
  attend_parts(parts, [&](int64_t x, int64_t p, decode::Partial part, float* scores, float* qs) {
    const decode::Int8Head head{b.key_codes.data_ptr<uint8_t>() + x * kg * g * d,
                                b.key_scale.data_ptr<float>() + x * kg * d,
                                b.key_min.data_ptr<float>() + x * kg * d,
                                tail + x * g * d, codes + x * slots * d, vscale + x * slots,
                                vmin + x * slots, g, kg, slots};
    const int64_t begin = first + p * kPart, end = std::min(pos + 1, begin + kPart);
    decode::attend_int8_part(q_.data() + x * group * d, group, head, begin, end, pos, d, scale, cap, scores,
                             qs, part);
  });
}

at::Tensor FastDecoder::step(int64_t id) {
  const int64_t pos = cache_.length(), cap = cache_.capacity();
  CONDENSE_CHECK(pos < cap, "KV cache full: {} positions", cap);
  CONDENSE_CHECK(id >= 0 && id < config_.vocab_size, "token id {} outside the vocabulary of {}", id,
                 config_.vocab_size);
  const int64_t hidden = config_.hidden_size, heads = config_.num_attention_heads;
  const int64_t kv = config_.kv_heads(), d = config_.head_size(), inter = config_.intermediate_size;
  const int64_t rotary = config_.rotary_dim();  // the rotated channels at the front of each head
  const float* cos = nullptr;
  const float* sin = nullptr;
  float rstd = 0;  // RMSNorm's per-row scale, unused here
  const float eps = static_cast<float>(config_.rms_norm_eps);
  auto rms_norm = [&](const at::Tensor& weight) {
    fused::rms_norm_forward(x_.data(), weight.data_ptr<float>(), xn_.data(), &rstd, 0, 1, hidden, eps);
  };
  // Gemma's norm of a branch's output (in proj_, in place) before it joins the residual.
  auto branch_norm = [&](const at::Tensor& weight) {
    if (weight.defined())
      fused::rms_norm_forward(proj_.data(), weight.data_ptr<float>(), proj_.data(), &rstd, 0, 1, hidden, eps);
  };
  auto rope = [&](float* v, int64_t count) {  // in place, one head vector at a time
    for (int64_t h = 0; h < count; ++h) fused::rope_row_forward(v + h * d, v + h * d, cos, sin, rotary / 2);
  };

  std::memcpy(x_.data(), embed_.data_ptr<float>() + id * hidden, hidden * sizeof(float));
  if (config_.is_gemma()) {  // sqrt(hidden_size) in float32, as LlamaForCausalLMImpl::embed
    const float s = static_cast<float>(config_.embedding_scale());
    for (float& v : x_) v *= s;
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    cos = (L.local_rope ? cos_local_ : cos_).data_ptr<float>() + pos * rotary;
    sin = (L.local_rope ? sin_local_ : sin_).data_ptr<float>() + pos * rotary;

    rms_norm(L.norm_in);
    matvec({{&L.q, q_.data()}, {&L.k, k_.data()}, {&L.v, v_.data()}}, xn_.data(), hidden);
    if (L.q_bias.defined()) {  // Qwen2
      decode::add(q_.data(), L.q_bias.data_ptr<float>(), heads * d);
      decode::add(k_.data(), L.k_bias.data_ptr<float>(), kv * d);
      decode::add(v_.data(), L.v_bias.data_ptr<float>(), kv * d);
    }
    if (L.q_norm.defined()) {  // Qwen3: each head normalized in place, one row per head
      float* rstd = head_rstd_.data();
      fused::rms_norm_forward(q_.data(), L.q_norm.data_ptr<float>(), q_.data(), rstd, 0, heads, d, eps);
      fused::rms_norm_forward(k_.data(), L.k_norm.data_ptr<float>(), k_.data(), rstd, 0, kv, d, eps);
    }
    if (L.rope) {  // not in SmolLM3's NoPE layers
      rope(q_.data(), heads);
      rope(k_.data(), kv);
    }
    if (cache_.kind().type == KVCacheType::kInt8) attend_int8(static_cast<int64_t>(l), L.window, pos);
    else attend_fp(static_cast<int64_t>(l), pos);
    matvec({{&L.o, proj_.data()}}, att_.data(), heads * d);
    if (L.norm_ff_in.defined()) branch_norm(L.norm_post);
    decode::add(x_.data(), proj_.data(), hidden);

    rms_norm(L.norm_ff_in.defined() ? L.norm_ff_in : L.norm_post);
    matvec({{&L.gate, gate_.data()}, {&L.up, up_.data()}}, xn_.data(), hidden);
    if (config_.is_gemma()) {  // GeGLU, GELU's tanh approximation as at::gelu(x, "tanh")
      fused::geglu_forward(gate_.data(), up_.data(), gate_.data(), 0, inter);  // in place
    } else {
      fused::swiglu_forward(gate_.data(), up_.data(), gate_.data(), 0, inter);  // in place
    }
    matvec({{&L.down, proj_.data()}}, gate_.data(), inter);
    branch_norm(L.norm_ff_out);
    decode::add(x_.data(), proj_.data(), hidden);
  }
  rms_norm(norm_);
  matvec({{&lm_head_, logits_.data_ptr<float>()}}, xn_.data(), hidden);
  if (const double c = config_.final_logit_softcapping; c > 0) softcap_(logits_, c);  // Gemma 2
  cache_.commit(1);
  return logits_;
}

}  // namespace condense
