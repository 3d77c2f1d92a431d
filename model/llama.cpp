#include "model/llama.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <torch/nn/init.h>

#include "core/error.h"
#include "core/shape.h"
#include "model/fused_ops.h"
#include "model/kv_cache.h"
#include "model/rebuildable.h"
#include "model/softcap.h"

namespace condense {
namespace {

torch::nn::Linear linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

}  // namespace

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& c, int64_t layer_index) {
  const std::string prefix = "model.layers." + std::to_string(layer_index) + ".mlp.";
  names_[0] = prefix + "gate_proj.weight";
  names_[1] = prefix + "up_proj.weight";
  names_[2] = prefix + "down_proj.weight";
  gate_proj = register_module("gate_proj", linear(c.hidden_size, c.intermediate_size));
  up_proj = register_module("up_proj", linear(c.hidden_size, c.intermediate_size));
  down_proj = register_module("down_proj", linear(c.intermediate_size, c.hidden_size));
  gelu_ = c.is_gemma();
}

at::Tensor LlamaMLPImpl::forward(const at::Tensor& x) {
  auto lin = [this](const at::Tensor& in, torch::nn::Linear& proj, int which) {
    at::Tensor w = proj->weight;
    if (ProjectionHook* hook = projection_hook) {
      if (hook->observing()) hook->observe(names_[which], in);
      w = hook->weight(names_[which], w);
    }
    return linear_fn ? linear_fn(in, w) : at::linear(in, w);
  };
  // silu(gate) (saved by the product) and the product (saved by down_proj) are elementwise
  // in gate and up, which autograd keeps anyway. A mark must precede the op that saves it.
  RebuildSink* sink = rebuild_sink();
  // GeGLU (Gemma; transformers' gelu_pytorch_tanh) where gelu_, else SwiGLU: the same paths.
  const bool gelu = gelu_;
  if (!projection_hook && !linear_fn && pack_projections(x)) {
    // gate and up from one matrix product in training (one GEMM, one input gradient), the
    // activation read from its two halves in place; the product (saved by down_proj) rebuilds
    // bitwise by the same kernel.
    at::Tensor gu = at::linear(x, at::cat({gate_proj->weight, up_proj->weight}));
    at::Tensor h = fused_swiglu_packed(gu, gelu);
    if (sink) sink->mark(h, [g = gu.detach(), gelu] { return fused_swiglu_packed(g, gelu); });
    return at::linear(h, down_proj->weight);
  }
  at::Tensor gate = lin(x, gate_proj, 0), up = lin(x, up_proj, 1);
  if (fused_ops_apply(gate)) {
    // One pass saving gate and up (as the composite does); the product (saved by down_proj)
    // rebuilds bitwise by the same kernel.
    at::Tensor h = fused_swiglu(gate, up, gelu);
    if (sink) sink->mark(h, [g = gate.detach(), u = up.detach(), gelu] { return fused_swiglu(g, u, gelu); });
    return lin(h, down_proj, 2);
  }
  // The composite (where the fused ops do not apply).
  auto activation = [gelu](const at::Tensor& g) { return gelu ? at::gelu(g, "tanh") : at::silu(g); };
  at::Tensor act = activation(gate);
  if (sink) sink->mark(act, [g = gate.detach(), activation] { return activation(g); });
  at::Tensor h = act * up;
  if (sink) sink->mark(h, [g = gate.detach(), u = up.detach(), activation] { return activation(g) * u; });
  return lin(h, down_proj, 2);
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c, int64_t index) : index(index) {
  self_attn = register_module("self_attn", LlamaAttention(c, index));
  mlp = register_module("mlp", LlamaMLP(c, index));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (c.is_gemma()) {
    pre_feedforward_layernorm =
        register_module("pre_feedforward_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    post_feedforward_layernorm =
        register_module("post_feedforward_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  }
}

at::Tensor LlamaDecoderLayerImpl::attention_branch(const at::Tensor& x, const at::Tensor& cos,
                                                   const at::Tensor& sin, KVCache* cache, KVHook* hook) {
  at::Tensor a = self_attn(input_layernorm(x), cos, sin, cache, hook);
  return pre_feedforward_layernorm ? post_attention_layernorm(a) : a;
}

at::Tensor LlamaDecoderLayerImpl::mlp_branch(const at::Tensor& x) {
  if (!pre_feedforward_layernorm) return mlp(post_attention_layernorm(x));
  return post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)));
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& cos,
                                          const at::Tensor& sin, KVCache* cache, KVHook* hook) {
  if (!block_hook) {
    at::Tensor h = x + attention_branch(x, cos, sin, cache, hook);
    return h + mlp_branch(h);
  }
  // Same computation, each residual branch run through the hook (captures by value: the hook
  // may rerun a branch during backward, after this frame is gone).
  auto attn = [this, cos, sin, cache, hook](const at::Tensor& t) {
    return attention_branch(t, cos, sin, cache, hook);
  };
  auto mlp_fn = [this](const at::Tensor& t) { return mlp_branch(t); };
  at::Tensor h = x + block_hook->run(index, BlockHook::Part::kAttention, attn, x);
  return h + block_hook->run(index, BlockHook::Part::kMlp, mlp_fn, h);
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layer_list.emplace_back(c, i);
    layers->push_back(layer_list.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(LlamaConfig config)
    : config_([&] { config.finalize(); return config; }()),
      rope_(config_),
      rope_local_(config_.rotary_dim(), config_.rope_local_theta > 0 ? config_.rope_local_theta : config_.rope_theta) {
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", linear(config_.hidden_size, config_.vocab_size));
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (p.value().dim() >= 2) p.value().normal_(0.0, config_.initializer_range);
    // Biases (Qwen2's q/k/v) start at zero, as transformers initializes them.
    if (p.key().size() > 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0) p.value().zero_();
  }
}

at::Tensor LlamaForCausalLMImpl::embed(const at::Tensor& input_ids) {
  at::Tensor e = model->embed_tokens(input_ids);
  if (!config_.is_gemma()) return e;
  // Gemma's scale sqrt(hidden_size), a float32 rounded to the weights' dtype as transformers
  // rounds it (bf16: sqrt(3072) = 55.4256 becomes 55.5).
  const at::Tensor scale = at::scalar_tensor(config_.embedding_scale(), at::TensorOptions().dtype(at::kFloat))
                               .to(e.scalar_type());
  return e * scale.to(e.device());
}

LlamaForCausalLMImpl::RopeTables LlamaForCausalLMImpl::rope_tables(int64_t offset, int64_t length,
                                                                   c10::Device device) const {
  RopeTables r;
  std::tie(r.cos, r.sin) = rope_.cos_sin(offset, length, device);
  r.local_cos = r.cos;
  r.local_sin = r.sin;
  if (config_.gemma == 3) std::tie(r.local_cos, r.local_sin) = rope_local_.cos_sin(offset, length, device);
  return r;
}

at::Tensor LlamaForCausalLMImpl::hidden(const DecoderInput& in) {
  CONDENSE_CHECK(in.input_ids.defined() != in.inputs_embeds.defined(),
                 "forward needs exactly one of input_ids and inputs_embeds");
  at::Tensor h = in.input_ids.defined() ? embed(in.input_ids) : in.inputs_embeds;
  CONDENSE_CHECK(h.dim() == 3 && h.size(2) == config_.hidden_size,
                 "inputs_embeds must be [B, T, {}], got {}", config_.hidden_size, shape_str(h.sizes()));
  int64_t t = h.size(1);
  int64_t offset = in.cache ? in.cache->length() : 0;
  CONDENSE_CHECK(offset + t <= config_.max_position_embeddings,
                 "sequence of {} positions exceeds max_position_embeddings {}", offset + t,
                 config_.max_position_embeddings);
  const RopeTables rope = rope_tables(offset, t, h.device());
  KVCache* cache = in.cache;
  KVHook* kv_hook = kv_hook_.get();
  if (in.hidden_states) {
    in.hidden_states->clear();
    in.hidden_states->push_back(h);
  }
  for (auto& layer : model->layer_list) {
    const at::Tensor& cos = rope.c(config_, layer->index);
    const at::Tensor& sin = rope.s(config_, layer->index);
    if (!block_hook_) {
      h = layer(h, cos, sin, cache, kv_hook);
      if (in.hidden_states) in.hidden_states->push_back(h);
      continue;
    }
    auto fn = [l = layer.get(), cos, sin, cache, kv_hook](const at::Tensor& t) {
      return l->forward(t, cos, sin, cache, kv_hook);
    };
    h = block_hook_->run(layer->index, BlockHook::Part::kLayer, fn, h);
    if (in.hidden_states) in.hidden_states->push_back(h);
  }
  if (in.cache) in.cache->commit(t);
  return model->norm(h);
}

void LlamaForCausalLMImpl::set_block_hook(std::shared_ptr<BlockHook> hook) {
  block_hook_ = std::move(hook);
  for (auto& layer : model->layer_list) layer->block_hook = block_hook_.get();
}

at::Tensor LlamaForCausalLMImpl::forward_layers(const at::Tensor& h, int64_t begin, int64_t end) {
  CONDENSE_CHECK(0 <= begin && begin <= end && end <= config_.num_hidden_layers,
                 "forward_layers: layers [{}, {}) outside [0, {})", begin, end,
                 config_.num_hidden_layers);
  const RopeTables rope = rope_tables(0, h.size(1), h.device());
  at::Tensor x = h;
  for (int64_t i = begin; i < end; ++i)
    x = model->layer_list[i]->forward(x, rope.c(config_, i), rope.s(config_, i), nullptr, nullptr);
  return x;
}

void LlamaForCausalLMImpl::set_projection_hook(std::shared_ptr<ProjectionHook> hook) {
  projection_hook_ = std::move(hook);
  for (auto& layer : model->layer_list) {
    layer->mlp->projection_hook = projection_hook_.get();
    layer->self_attn->projection_hook = projection_hook_.get();
  }
}

void LlamaForCausalLMImpl::set_mlp_linear(LinearFn fn) {
  for (auto& layer : model->layer_list) layer->mlp->linear_fn = fn;
}

at::Tensor LlamaForCausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::Tensor LlamaForCausalLMImpl::logits(const at::Tensor& hidden) {
  return softcap(at::linear(hidden, lm_head_weight()), config_.final_logit_softcapping);
}

LlamaForCausalLM new_model_like(const LlamaForCausalLM& like, const LlamaConfig& config) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  at::Tensor rng = gen.get_state();
  LlamaForCausalLM out(config);
  gen.set_state(rng);
  at::Tensor ref = like->model->embed_tokens->weight;
  out->to(ref.device(), ref.scalar_type());
  out->train(like->is_training());
  return out;
}

}  // namespace condense
