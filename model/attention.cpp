#include "model/attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "core/error.h"
#include "model/fused_ops.h"
#include "model/kv_cache.h"
#include "model/rebuildable.h"
#include "model/rope.h"
#include "model/softcap.h"

namespace condense {
namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias = false) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// Attention where query p reads the original keys/values ko, vo (positions begin .. T - 1) for
// keys p - window + 1 .. p and the rebuilt k, v (positions 0 .. T - 1) for older ones; causal.
// q [B, H, t, d] at positions T - t .. T - 1; k, v, ko, vo [B, Hkv, *, d] (GQA: query head h
// reads KV head h / (H / Hkv)).
at::Tensor windowed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& ko, const at::Tensor& vo, int64_t begin,
                              int64_t window, double scale, double dropout) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t kv = k.size(1), total = k.size(2), past = total - t;
  CONDENSE_CHECK(begin + ko.size(2) == total && begin <= std::max<int64_t>(0, past - window + 1),
                 "windowed attention: originals of positions {}..{} for {} keys and window {}",
                 begin, begin + ko.size(2) - 1, total, window);
  at::Tensor qg = q.reshape({b, kv, heads / kv, t, d});
  at::Tensor s_rebuilt = at::matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale;  // [.., t, T]
  at::Tensor s_orig = at::matmul(qg, ko.unsqueeze(2).transpose(-1, -2)) * scale;    // [.., t, n]
  auto longs = at::TensorOptions().device(q.device()).dtype(at::kLong);
  at::Tensor qpos = at::arange(past, total, longs).unsqueeze(1);
  at::Tensor kpos = at::arange(0, total, longs).unsqueeze(0);
  at::Tensor causal = kpos <= qpos;                             // [t, T]
  at::Tensor recent = causal & (qpos - kpos < window);
  at::Tensor s_orig_all = at::constant_pad_nd(s_orig, {begin, 0}, 0);  // [.., t, T]
  at::Tensor scores = at::where(recent, s_orig_all, s_rebuilt)
                          .masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor p = at::softmax(scores, -1);
  if (dropout > 0) p = at::dropout(p, dropout, true);
  at::Tensor older = p.masked_fill(recent, 0);
  at::Tensor newer = p.masked_fill(recent.logical_not(), 0).narrow(-1, begin, total - begin);
  at::Tensor out = at::matmul(older, v.unsqueeze(2)) + at::matmul(newer, vo.unsqueeze(2));
  return out.reshape({b, heads, t, d});
}

// Causal attention over values shared by every head (a latent cache's value latent, model/
// attention.h): q [B, H, t, d] at positions T - t .. T - 1, k [B, Hkv, T, d] (GQA: query head h
// reads KV head h / (H / Hkv)), cv [B, 1, T, r]. Returns [B, H, t, r]. Written out instead of
// SDPA, whose kernels for unequal key and value widths repeat k and v per query head: the
// probabilities of all heads then multiply the one latent in a single GEMM, copying nothing.
at::Tensor shared_value_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cv,
                                  double scale, double dropout) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t kv = k.size(1), total = k.size(2), past = total - t, rep = heads / kv;
  at::Tensor qg = q.reshape({b, kv, rep * t, d});
  at::Tensor scores = (at::matmul(qg, k.transpose(-1, -2)) * scale).view({b, kv, rep, t, total});
  if (t > 1) {
    auto longs = at::TensorOptions().device(q.device()).dtype(at::kLong);
    at::Tensor later = at::arange(0, total, longs).unsqueeze(0) > at::arange(past, total, longs).unsqueeze(1);
    scores = scores.masked_fill(later, -std::numeric_limits<double>::infinity());
  }
  at::Tensor p = at::softmax(scores, -1);
  if (dropout > 0) p = at::dropout(p, dropout, true);
  return at::matmul(p.reshape({b, heads * t, total}), cv.squeeze(1)).view({b, heads, t, cv.size(3)});
}

// Sliding-window attention block by block, all blocks in one SDPA call: the queries in blocks of
// w = `window` positions, block b reading the 2w - 1 keys from w - 1 before its first query through
// its last, so the cost grows with t x w instead of the t x n of the full masked attention it
// equals. q [B, H, t, d] at positions past .. past + t - 1; k, v [B, Hkv, n, *] at positions
// key_begin .. past + t - 1 (gqa: query head h reads KV head h / rep). The keys are padded to whole
// blocks and unfolded into overlapping [2w - 1] windows (one copy; its backward one scatter-add);
// in every block query i sees window slots i .. i + w - 1 (its own key last), and block 0 none of
// the front padding. Padded queries past t see their own padded key and are cut off.
at::Tensor blocked_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    int64_t past, int64_t key_begin, int64_t window, double dropout,
                                    std::optional<double> scale, bool gqa, double cap) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), w = window, span = 2 * w - 1;
  const int64_t blocks = (t + w - 1) / w, tail = blocks * w - t;
  // Keys from position past - w + 1 (the first block's first key) on; older ones are never read.
  const int64_t first = std::max(key_begin, past - w + 1), front = first - (past - w + 1);
  auto windows = [&](const at::Tensor& x) {  // [B, Hkv, n, e] -> [B * blocks, Hkv, 2w - 1, e]
    at::Tensor kept = x.narrow(2, first - key_begin, x.size(2) - (first - key_begin));
    at::Tensor padded = at::constant_pad_nd(kept, {0, 0, front, tail});
    return padded.unfold(2, span, w).permute({0, 2, 1, 4, 3}).reshape({b * blocks, x.size(1), span, x.size(3)});
  };
  at::Tensor qb = at::constant_pad_nd(q, {0, 0, 0, tail})
                      .reshape({b, heads, blocks, w, q.size(3)})
                      .transpose(1, 2)
                      .reshape({b * blocks, heads, w, q.size(3)});
  auto opts = at::TensorOptions().device(q.device()).dtype(at::kLong);
  at::Tensor i = at::arange(w, opts).view({w, 1}), j = at::arange(span, opts).view({1, span});
  at::Tensor band = (j >= i).logical_and(j < i + w);                       // [w, 2w - 1]
  at::Tensor mask = band.unsqueeze(0).repeat({blocks, 1, 1});              // [blocks, w, 2w - 1]
  if (front > 0) mask[0].logical_and_(j >= front);                          // block 0's padding
  mask = mask.unsqueeze(0).expand({b, blocks, w, span}).reshape({b * blocks, 1, w, span});
  at::Tensor out = attend(qb, windows(k), windows(v), mask, dropout, false, scale, gqa, cap);
  return out.reshape({b, blocks, heads, w, out.size(3)})
      .transpose(1, 2)
      .reshape({b, heads, blocks * w, out.size(3)})
      .narrow(2, 0, t);
}

}  // namespace

std::pair<at::Tensor, at::Tensor> KVHook::encode(int64_t layer, const at::Tensor&) {
  fail("KV hook: encode() of layer {} on a hook without a latent cache", layer);
}

std::pair<at::Tensor, at::Tensor> KVHook::decode(int64_t layer, const at::Tensor&, const at::Tensor&) {
  fail("KV hook: decode() of layer {} on a hook without a latent cache", layer);
}

at::Tensor KVHook::decode_keys(int64_t layer, const at::Tensor&) {
  fail("KV hook: decode_keys() of layer {} on a hook without latent values", layer);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& mask, double dropout, bool causal, std::optional<double> scale,
                  bool gqa, double cap) {
  if (cap <= 0) return at::scaled_dot_product_attention(q, k, v, mask, dropout, causal, scale, gqa);
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), kv = k.size(1), n = k.size(2);
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor qg = q.reshape({b, kv, heads / kv, t, q.size(3)});
  at::Tensor scores = softcap(at::matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * s, cap);  // [B, kv, rep, t, n]
  std::optional<at::Tensor> visible = mask;
  if (causal)  // SDPA's is_causal: query i reads keys 0 .. i
    visible = at::ones({t, n}, at::TensorOptions().dtype(at::kBool).device(q.device())).tril();
  if (visible) {
    at::Tensor m = visible->dim() == 4 ? visible->unsqueeze(2) : *visible;  // [B, 1, t, n] -> [B, 1, 1, t, n]
    scores = scores.masked_fill(m.logical_not(), -std::numeric_limits<double>::infinity());
  }
  at::Tensor p = at::softmax(scores, -1, at::kFloat).to(v.scalar_type());
  if (dropout > 0) p = at::dropout(p, dropout, true);
  return at::matmul(p, v.unsqueeze(2)).reshape({b, heads, t, v.size(3)});
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c, int64_t layer_index)
    : layer_(layer_index),
      heads_(c.num_attention_heads),
      kv_heads_(c.kv_heads()),
      head_dim_(c.head_size()),
      dropout_(c.attention_dropout),
      window_(c.window(layer_index)),
      scale_(c.attention_scale()),
      own_scale_(c.query_pre_attn_scalar > 0 && c.query_pre_attn_scalar != static_cast<double>(c.head_size())),
      softcap_(c.attn_logit_softcapping),
      rope_(c.uses_rope(layer_index)) {
  q_proj = register_module("q_proj", linear(c.hidden_size, heads_ * head_dim_, c.qkv_bias));
  k_proj = register_module("k_proj", linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
  v_proj = register_module("v_proj", linear(c.hidden_size, kv_heads_ * head_dim_, c.qkv_bias));
  o_proj = register_module("o_proj", linear(heads_ * head_dim_, c.hidden_size));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(head_dim_, c.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(head_dim_, c.rms_norm_eps));
  }
  const std::string prefix = "model.layers." + std::to_string(layer_index) + ".self_attn.";
  const char* kinds[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  for (int i = 0; i < 4; ++i) names_[i] = prefix + kinds[i] + ".weight";
}

at::Tensor LlamaAttentionImpl::project(const at::Tensor& x, torch::nn::Linear& proj, int which) {
  ProjectionHook* hook = projection_hook;
  if (!hook) return proj(x);
  if (hook->observing()) hook->observe(names_[which], x);
  // The bias (Qwen2's q/k/v) is added as stored: hooks replace weights only.
  return at::linear(x, hook->weight(names_[which], proj->weight), proj->bias);
}

at::Tensor LlamaAttentionImpl::rope(const at::Tensor& x, const at::Tensor& cos,
                                    const at::Tensor& sin) const {
  return rope_ ? apply_rope(x, cos, sin) : x;
}

at::Tensor LlamaAttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos,
                                       const at::Tensor& sin, KVCache* cache, KVHook* hook) {
  int64_t b = x.size(0), t = x.size(1);
  const bool latent = hook && hook->latent();
  // q, k and v from one matrix product in training where nothing intercepts the projections
  // (no projection hook, no latent cache): one larger GEMM instead of three small ones, and in
  // backward one input gradient instead of three summed (model/fused_ops.h: pack_projections).
  at::Tensor q_lin, k_lin, v_lin;
  if (!projection_hook && !latent && pack_projections(x)) {
    const at::Tensor bias = q_proj->bias.defined()
                                ? at::cat({q_proj->bias, k_proj->bias, v_proj->bias})
                                : at::Tensor();
    auto parts = at::linear(x, at::cat({q_proj->weight, k_proj->weight, v_proj->weight}), bias)
                     .split_with_sizes({heads_ * head_dim_, kv_heads_ * head_dim_, kv_heads_ * head_dim_}, -1);
    q_lin = parts[0];
    k_lin = parts[1];
    v_lin = parts[2];
  } else {
    q_lin = project(x, q_proj, 0);
  }
  at::Tensor q = norm_q(q_lin.view({b, t, heads_, head_dim_})).transpose(1, 2);
  q = rope(q, cos, sin);
  const int64_t past = cache ? cache->length() : 0;
  // Sliding-window attention binds once a query has keys older than the window.
  const bool sliding = window_ > 0 && past + t > window_;
  at::Tensor k, v, cache_mask, cache_kpos;
  CONDENSE_CHECK(!(latent && softcap_ > 0), "layer {}: a latent KV cache (CSKV) attends without the "
                 "soft cap of this model's attention scores (attn_logit_softcapping {})", layer_, softcap_);
  // The latent caches' attention (CSKV) has no window mask.
  CONDENSE_CHECK(!(latent && sliding), "layer {}: a latent KV cache (CSKV) attends to all {} positions, "
                 "but this layer's sliding window is {}: keep sequences within the window", layer_,
                 past + t, window_);
  if (latent) {
    // The cache holds the latents; keys (and values, unless they stay latent) of every
    // position are rebuilt from them.
    std::tie(k, v) = hook->encode(layer_, x);
    if (cache) {
      // Checked before the append, which would already have changed the cache.
      CONDENSE_CHECK(t <= cache->max_append(), "layer {}: a latent KV cache cannot attend through "
                     "an int8 append across key groups ({} positions; append at most "
                     "KVCache::max_append() = {})", layer_, t, cache->max_append());
      std::tie(k, v) = cache->append(layer_, k, v);
    }
    if (hook->window() == 0 && hook->latent_values(t)) {
      // Attention reads the value latent; restore() maps its output up per query head.
      at::Tensor attn = shared_value_attention(q, hook->decode_keys(layer_, k), v, scale_,
                                               is_training() ? dropout_ : 0.0);
      attn = hook->restore(layer_, attn);
      return project(attn.transpose(1, 2).reshape({b, t, heads_ * head_dim_}), o_proj, 3);
    }
    std::tie(k, v) = hook->decode(layer_, k, v);
    if (const int64_t window = hook->window(); window > 0) {
      at::Tensor ko = norm_k(project(x, k_proj, 1).view({b, t, kv_heads_, head_dim_})).transpose(1, 2);
      at::Tensor vo = project(x, v_proj, 2).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
      ko = rope(ko, cos, sin);
      int64_t begin = past;
      if (cache) {
        KVCache::Recent r = cache->append_recent(layer_, ko, vo, window - 1);
        ko = r.k;
        vo = r.v;
        begin = r.begin;
      }
      at::Tensor attn = windowed_attention(q, k, v, ko, vo, begin, window, scale_,
                                           is_training() ? dropout_ : 0.0);
      return project(attn.transpose(1, 2).reshape({b, t, heads_ * head_dim_}), o_proj, 3);
    }
  } else {
    if (!k_lin.defined()) {
      k_lin = project(x, k_proj, 1);
      v_lin = project(x, v_proj, 2);
    }
    k = norm_k(k_lin.view({b, t, kv_heads_, head_dim_})).transpose(1, 2);
    v = v_lin.view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
    k = rope(k, cos, sin);
    if (hook) {
      KVHook::Projected p = hook->project(layer_, q, k, v);
      q = p.q;
      k = p.k;
      v = p.v;
    }
    if (cache) {
      std::tie(k, v) = cache->append(layer_, k, v);
      cache_mask = cache->append_mask();
      cache_kpos = cache->append_key_positions();
    }
  }
  // The keys are positions key_begin .. past + t - 1: all of them, or a windowed layer's recent
  // ones from a ring cache (model/kv_cache.h; one new position reads its ring in slot order, every
  // key then within its window). Not after an int8 append across key groups: then the cache says
  // which key each query sees (cache_mask) and where each key sits (cache_kpos, for the window).
  const int64_t key_begin = past + t - k.size(2);
  const bool projected = hook && !latent;
  // Grouped-query attention without materializing repeated K/V: SDPA's enable_gqa lets query
  // head h read kv head h / rep, the grouping transformers' repeat_kv produces. Counted from
  // the keys, not the config: a KV hook may pack every KV head into one (compressors/kv_project.h).
  bool gqa = q.size(1) != k.size(1);
  const bool window_mask = window_ > 0 && k.size(2) > window_;
  // Many queries past a window: block by block (blocked_window_attention), no t x n mask.
  const bool blocked = window_mask && t > 2 * window_ && !cache_mask.defined();
  std::optional<at::Tensor> mask;
  bool causal = t > 1;
  if ((past > 0 && t > 1) || window_mask || cache_mask.defined()) {
    // Query i sits at absolute position past + i and sees keys 0 .. past + i, in a sliding
    // window only the last window_ of them.
    if (cache_mask.defined()) {
      mask = cache_mask;
      if (window_ > 0) {
        at::Tensor qpos = at::arange(past, past + t, cache_kpos.options()).unsqueeze(1);
        mask = cache_mask.logical_and(cache_kpos.unsqueeze(0) > qpos - window_);
      }
    } else if (!blocked) {
      at::Tensor qpos = at::arange(past, past + t, at::TensorOptions().device(x.device()).dtype(at::kLong));
      at::Tensor kpos = at::arange(key_begin, past + t, at::TensorOptions().device(x.device()).dtype(at::kLong));
      at::Tensor visible = kpos.unsqueeze(0) <= qpos.unsqueeze(1);
      if (window_mask) visible = visible.logical_and(kpos.unsqueeze(0) > qpos.unsqueeze(1) - window_);
      mask = visible;
    }
    causal = false;
    // On CUDA, SDPA's kernels that take a mask do not take enable_gqa (PyTorch's documentation:
    // GQA runs on the flash and math kernels only, flash takes no mask), so the math kernel would
    // hold every score in float32; the K/V heads are repeated instead (not measured on a GPU here).
    if (gqa && q.is_cuda()) {
      k = k.repeat_interleave(q.size(1) / k.size(1), 1);
      v = v.repeat_interleave(q.size(1) / v.size(1), 1);
      gqa = false;
    }
  }
  double p = is_training() ? dropout_ : 0.0;
  // The model's scale, whatever width a KV hook projected queries and keys to.
  const std::optional<double> scale = projected || own_scale_ ? std::optional<double>(scale_) : std::nullopt;
  at::Tensor attn = blocked ? blocked_window_attention(q, k, v, past, key_begin, window_, p, scale, gqa, softcap_)
                            : attend(q, k, v, mask, p, causal, scale, gqa, softcap_);
  if (projected) attn = hook->restore(layer_, attn);
  at::Tensor out = attn.transpose(1, 2).reshape({b, t, heads_ * head_dim_});
  // o_proj saves this layout copy (when it is one: a kernel may lay its output out so that
  // the transpose is free); the fused attention keeps its own output anyway.
  RebuildSink* sink = rebuild_sink();
  if (sink && !out.is_alias_of(attn)) {
    sink->mark(out, [o = attn.detach(), b, t, width = heads_ * head_dim_] {
      return o.transpose(1, 2).reshape({b, t, width});
    });
  }
  return project(out, o_proj, 3);
}

}  // namespace condense
