#include "compressors/context_arc.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "core/shape.h"
#include "model/rope.h"

namespace condense {

at::Tensor group_mean(const at::Tensor& x, int64_t factor) {
  CONDENSE_CHECK(factor >= 1, "pooling factor {} must be >= 1", factor);
  CONDENSE_CHECK(x.dim() >= 2 && x.size(1) >= 1, "group_mean: expected [B, n, ...] with n >= 1, got {}",
                 shape_str(x.sizes()));
  const int64_t n = x.size(1), groups = (n + factor - 1) / factor, pad = groups * factor - n;
  if (factor == 1) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  at::Tensor padded = x;
  if (pad > 0) {
    shape[1] = pad;
    padded = at::cat({x, at::zeros(shape, x.options())}, 1);
  }
  std::vector<int64_t> grouped = x.sizes().vec();
  grouped[1] = factor;
  grouped.insert(grouped.begin() + 1, groups);
  at::Tensor sums = padded.reshape(grouped).sum(2);
  if (pad == 0) return sums / static_cast<double>(factor);
  // Every group holds `factor` positions but the last, which holds factor - pad.
  at::Tensor counts = at::full({groups}, static_cast<double>(factor), x.options());
  counts[groups - 1] = static_cast<double>(factor - pad);
  std::vector<int64_t> view(x.dim(), 1);
  view[1] = groups;
  return sums / counts.view(view);
}

ArcEncoderImpl::ArcEncoderImpl(LlamaForCausalLM& decoder, ArcOptions options)
    : options_(options), config_(decoder->config()) {
  const int64_t layers = config_.num_hidden_layers, hidden = config_.hidden_size;
  CONDENSE_CHECK(options.encoder_layers >= 1 && options.encoder_layers <= layers,
                 "context.encoder_layers {}: valid is 1..{} (the decoder's layers)",
                 options.encoder_layers, layers);
  CONDENSE_CHECK(options.pooling_factor >= 1, "context.pooling_factor {} must be >= 1",
                 options.pooling_factor);
  if (options_.bottleneck == 0) options_.bottleneck = hidden;
  CONDENSE_CHECK(options_.bottleneck >= 1 && options_.bottleneck <= hidden,
                 "context.bottleneck {}: valid is 0..{} (0: the decoder's hidden size)",
                 options.bottleneck, hidden);
  at::NoGradGuard no_grad;
  at::Tensor embedding = decoder->model->embed_tokens->weight.detach();
  for (int64_t i = 0; i < options_.encoder_layers; ++i) {
    LlamaDecoderLayer layer(config_, i);
    auto src = decoder->model->layer_list[i]->named_parameters();
    for (auto& p : layer->named_parameters()) p.value().copy_(src[p.key()]);
    layer->to(embedding.device(), embedding.scalar_type());
    layers_.push_back(register_module("layer" + std::to_string(i), layer));
  }
  at::Tensor mean = embedding.mean(0).clone();
  mean *= config_.embedding_scale();  // as the decoder scales them (Gemma)
  rec = register_parameter("rec", mean.clone());
  cont = register_parameter("cont", mean.clone());
  // An orthonormal map through the bottleneck, scale 1 until calibrate_scale().
  at::Tensor q = std::get<0>(at::linalg_qr(at::randn({hidden, options_.bottleneck})));
  q = q.to(embedding.device(), embedding.scalar_type());
  proj_in = register_parameter("proj_in", q.t().contiguous());
  proj_out = register_parameter("proj_out", q.contiguous());
}

at::Tensor ArcEncoderImpl::layer_forward(LlamaDecoderLayerImpl& layer, const at::Tensor& x,
                                         int64_t pool) {
  LlamaAttentionImpl& attn = *layer.self_attn;
  const int64_t b = x.size(0), n = x.size(1), heads = config_.num_attention_heads,
                kv = config_.kv_heads(), d = config_.head_size();
  at::Tensor xn = layer.input_layernorm(x);
  auto [cos, sin] = layer_rope(config_, layer.index).cos_sin(0, n, x.device());
  at::Tensor q = attn.q_proj(xn).view({b, n, heads, d});
  // k_norm (Qwen3) as the decoder layer applies it; q_norm below, after pooling, so that pooled
  // queries keep the per-head scale the layer was trained with.
  at::Tensor k = attn.norm_k(attn.k_proj(xn).view({b, n, kv, d})).transpose(1, 2);
  at::Tensor v = attn.v_proj(xn).view({b, n, kv, d}).transpose(1, 2);
  at::Tensor residual = x;
  at::Tensor qcos = cos, qsin = sin;
  if (pool > 1) {
    // Pooled queries before RoPE, then at positions 0 .. n/f - 1; keys keep positions 0 .. n-1.
    q = group_mean(q, pool);
    residual = group_mean(x, pool);
    qcos = cos.narrow(0, 0, q.size(1));
    qsin = sin.narrow(0, 0, q.size(1));
  }
  q = attn.rope(attn.norm_q(q).transpose(1, 2), qcos, qsin);
  k = attn.rope(k, cos, sin);
  const double p = is_training() ? config_.attention_dropout : 0.0;
  // No mask: every query reads every position of the chunk (bidirectional); Gemma 2's scores
  // soft-capped as its layers cap them.
  at::Tensor out = attend(q, k, v, std::nullopt, p, /*causal=*/false, config_.attention_scale(),
                          /*gqa=*/heads != kv, config_.attn_logit_softcapping);
  out = attn.o_proj(out.transpose(1, 2).reshape({b, q.size(2), heads * d}));
  // Gemma normalizes the attention's output before the residual (the layer's own branches).
  if (layer.pre_feedforward_layernorm) out = layer.post_attention_layernorm(out);
  at::Tensor h = residual + out;
  return h + layer.mlp_branch(h);
}

at::Tensor ArcEncoderImpl::encode(const at::Tensor& token_embeds) {
  CONDENSE_CHECK(token_embeds.dim() == 3 && token_embeds.size(2) == config_.hidden_size &&
                     token_embeds.size(1) >= 1,
                 "ARC encoder: expected token embeddings [B, n >= 1, {}], got {}",
                 config_.hidden_size, shape_str(token_embeds.sizes()));
  CONDENSE_CHECK(token_embeds.size(1) <= config_.max_position_embeddings,
                 "ARC encoder: a chunk of {} tokens exceeds the encoder's maximum of {} positions "
                 "(max_position_embeddings); split the context", token_embeds.size(1),
                 config_.max_position_embeddings);
  at::Tensor h = token_embeds;
  const int64_t last = static_cast<int64_t>(layers_.size()) - 1;
  for (int64_t i = 0; i <= last; ++i)
    h = layer_forward(*layers_[i], h, i == last ? options_.pooling_factor : 1);
  return h;  // no final norm
}

at::Tensor ArcEncoderImpl::project(const at::Tensor& pooled) {
  return at::linear(at::linear(pooled, proj_in), proj_out);
}

at::Tensor ArcEncoderImpl::forward(const at::Tensor& token_embeds) {
  return project(encode(token_embeds));
}

void ArcEncoderImpl::calibrate_scale(const at::Tensor& token_embeds) {
  at::NoGradGuard no_grad;
  at::Tensor out = forward(token_embeds);
  const double target = token_embeds.pow(2).mean().sqrt().item<double>();
  const double now = out.pow(2).mean().sqrt().item<double>();
  CONDENSE_CHECK(std::isfinite(now) && now > 0, "ARC encoder: projector output RMS {} on the "
                 "calibration chunk", now);
  proj_out.mul_(target / now);
}

std::vector<std::pair<std::string, at::Tensor>> ArcEncoderImpl::named() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    for (const auto& p : layers_[i]->named_parameters())
      out.emplace_back("encoder.layers." + std::to_string(i) + "." + p.key(), p.value());
  }
  out.emplace_back("encoder.rec", rec);
  out.emplace_back("encoder.cont", cont);
  out.emplace_back("projector.0.weight", proj_in);
  out.emplace_back("projector.1.weight", proj_out);
  return out;
}

void ArcEncoderImpl::load(const StoredTensors& stored) { load_named_tensors(stored, named(), "ARC encoder"); }

int64_t ArcEncoderImpl::stored_layers(const StoredTensors& file) {
  int64_t n = 0;
  while (file.has("encoder.layers." + std::to_string(n) + ".input_layernorm.weight")) ++n;
  return n;
}

int64_t ArcEncoderImpl::stored_bottleneck(const StoredTensors& file) {
  return file.has("projector.0.weight") ? file.at("projector.0.weight").size(0) : 0;
}

ArcCompressor::ArcCompressor(LlamaForCausalLM& decoder, ArcOptions options, int64_t chunk_len,
                             double reconstruction_share)
    : encoder(decoder, options), chunk_len_(chunk_len), reconstruction_share_(reconstruction_share) {
  CONDENSE_CHECK(chunk_len >= 1, "context.chunk_len {} must be >= 1", chunk_len);
  CONDENSE_CHECK(options.pooling_factor <= chunk_len, "context.pooling_factor {} is larger than the "
                 "chunk (context.chunk_len {}); valid is 1..{}", options.pooling_factor, chunk_len,
                 chunk_len);
}

at::Tensor ArcCompressor::context(LlamaForCausalLM& decoder, const at::Tensor& ids) {
  std::vector<at::Tensor> parts;
  for (int64_t pos = 0, n = ids.size(1); pos < n; pos += chunk_len_)
    parts.push_back(encoder->forward(decoder->embed(ids.narrow(1, pos, std::min(chunk_len_, n - pos)))));
  parts.push_back(encoder->cont.view({1, 1, -1}).expand({ids.size(0), 1, encoder->cont.size(0)}));
  return at::cat(parts, 1);
}

int64_t ArcCompressor::positions(int64_t n) const {
  const int64_t full = n / chunk_len_, rest = n % chunk_len_;
  return full * encoder->compressed_length(chunk_len_) + (rest ? encoder->compressed_length(rest) : 0) + 1;
}

at::Tensor ArcCompressor::loss(LlamaForCausalLM& decoder, const Batch& b, const ContextLayout& layout) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  const bool reconstruct = at::rand({1}, gen).item<double>() < reconstruction_share_;
  at::Tensor z = encoder->forward(decoder->embed(b.inputs.narrow(1, layout.prefix, layout.chunk)));
  SequenceParts s = reconstruct ? reconstruction_sequence(decoder, b.inputs, layout, z, encoder->rec)
                                : continuation_sequence(decoder, b.inputs, b.targets, layout, z, encoder->cont);
  return tail_nll(decoder, s.parts, s.targets);
}

std::pair<double, int64_t> ArcCompressor::reconstruction(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                                         const ContextLayout& layout) {
  at::Tensor z = encoder->forward(decoder->embed(inputs.narrow(1, layout.prefix, layout.chunk)));
  SequenceParts r = reconstruction_sequence(decoder, inputs, layout, z, encoder->rec);
  return tail_correct(decoder, r.parts, r.targets);
}

void ArcCompressor::calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  encoder->calibrate_scale(decoder->embed(ids));
}

std::string ArcCompressor::describe() const {
  const ArcOptions& o = encoder->options();
  return fmt::format("arc: {} encoder layers from the decoder, pooling {} (chunks of {} tokens -> {} "
                     "vectors, then <Cont>), bottleneck {}, reconstruction share {}", o.encoder_layers,
                     o.pooling_factor, chunk_len_, encoder->compressed_length(chunk_len_), o.bottleneck,
                     reconstruction_share_);
}

}  // namespace condense
