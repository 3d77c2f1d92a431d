#include "compressors/cskv.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/kv_cache.h"

namespace condense {
namespace {

constexpr const char* kGroup = "cskv";
const char* const kParts[4] = {"key_down", "key_up", "value_down", "value_up"};

std::string entry_name(size_t layer, int part) {
  return std::string(kGroup) + "/layers." + std::to_string(layer) + "." + kParts[part];
}

at::Tensor& part_of(LowRankKV::Factors& f, int part) {
  at::Tensor* parts[4] = {&f.key_down, &f.key_up, &f.value_down, &f.value_up};
  return *parts[part];
}

const at::Tensor& part_of(const LowRankKV::Factors& f, int part) {
  return part_of(const_cast<LowRankKV::Factors&>(f), part);
}

// Rank-r factors of w^T ([in, out]) = A B, A [in, r], B [r, out], weighting input channel j by
// scale_j (undefined: no weighting). float32.
std::pair<at::Tensor, at::Tensor> low_rank(const at::Tensor& w, int64_t r, const at::Tensor& scale) {
  at::Tensor wt = w.detach().to(at::kCPU, at::kDouble).t();
  at::Tensor s = scale.defined() ? scale.to(at::kDouble) : at::ones({wt.size(0)}, wt.options());
  auto [u, sv, vh] = at::linalg_svd(wt * s.unsqueeze(1), /*full_matrices=*/false);
  at::Tensor a = u.narrow(1, 0, r) * sv.narrow(0, 0, r).unsqueeze(0) / s.unsqueeze(1);
  return {a.to(at::kFloat).contiguous(), vh.narrow(0, 0, r).to(at::kFloat).contiguous()};
}

// Rank-r factors of w^T closest on data with input Gram matrix `gram` [in, in]: the top-r
// eigenvectors V_r of the output covariance w gram w^T, A = w^T V_r, B = V_r^T. float32.
std::pair<at::Tensor, at::Tensor> whitened(const at::Tensor& w, int64_t r, const at::Tensor& gram) {
  at::Tensor wd = w.detach().to(at::kCPU, at::kDouble);
  at::Tensor cov = at::matmul(at::matmul(wd, gram.to(at::kDouble)), wd.t());
  cov = (cov + cov.t()) * 0.5;
  at::Tensor vecs = std::get<1>(at::linalg_eigh(cov)).flip({1}).narrow(1, 0, r);  // largest first
  return {at::matmul(wd.t(), vecs).to(at::kFloat).contiguous(), vecs.t().to(at::kFloat).contiguous()};
}

at::Tensor relative_error(const at::Tensor& x, const at::Tensor& w, const at::Tensor& down,
                          const at::Tensor& up) {
  at::Tensor target;
  {
    at::NoGradGuard no_grad;
    target = at::linear(x, w);
  }
  at::Tensor rebuilt = at::matmul(at::matmul(x, down), up);
  return (rebuilt - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30);
}

}  // namespace

std::vector<std::string> low_rank_kv_gram_weights(const LlamaConfig& c) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    out.push_back("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
  return out;
}

void check_low_rank_kv(const LlamaConfig& c, const LowRankKVOptions& o) {
  // Merged or low-rank keys would need the biases merged or rebuilt too, and a key norm
  // (Qwen3's) is not linear in the input: not built.
  // (Layers without RoPE, SmolLM3's, are handled: their keys are simply not rotated.)
  CONDENSE_CHECK(!c.qkv_bias && !c.qk_norm, "cskv: the model has {}, which cskv does not "
                 "handle (kv_project and the pruning methods do)", attention_extras(c));
  // Its latent attention (model/attention.cpp) computes scores without Gemma 2's cap.
  CONDENSE_CHECK(c.attn_logit_softcapping == 0, "cskv: the model soft-caps its attention scores "
                 "(attn_logit_softcapping {}), which cskv's latent attention does not (kv_project and the "
                 "pruning methods do)", c.attn_logit_softcapping);
  CONDENSE_CHECK(o.init == "svd" || o.init == "asvd" || o.init == "whiten",
                 "--init {}: valid for cskv are whiten, asvd and svd (kv.init in a recipe)", o.init);
  const int64_t most = std::min(c.hidden_size, c.kv_heads() * c.head_size());
  CONDENSE_CHECK(o.key_rank >= 1 && o.key_rank <= most,
                 "--key-rank {}: valid is 1..{} (kv.key_rank in a recipe; min of hidden_size {} and "
                 "kv_heads x head_dim {})",
                 o.key_rank, most, c.hidden_size, c.kv_heads() * c.head_size());
  CONDENSE_CHECK(o.value_rank >= 1 && o.value_rank <= most,
                 "--value-rank {}: valid is 1..{} (kv.value_rank in a recipe; min of hidden_size {} and "
                 "kv_heads x head_dim {})",
                 o.value_rank, most, c.hidden_size, c.kv_heads() * c.head_size());
}

LowRankKV::LowRankKV(const LlamaConfig& c, std::vector<Factors> layers)
    : layers_(std::move(layers)),
      kv_heads_(c.kv_heads()),
      head_dim_(c.head_size()),
      hidden_(c.hidden_size),
      rope_(c),
      config_(c),
      inputs_(c.num_hidden_layers) {
  CONDENSE_CHECK(static_cast<int64_t>(layers_.size()) == c.num_hidden_layers,
                 "low-rank KV: {} layers of factors for a model of {}", layers_.size(),
                 c.num_hidden_layers);
  const int64_t out = kv_heads_ * head_dim_;
  for (const Factors& f : layers_)
    CONDENSE_CHECK(f.key_down.dim() == 2 && f.key_down.size(0) == hidden_ && f.key_up.dim() == 2 &&
                       f.key_up.size(0) == f.key_down.size(1) && f.key_up.size(1) == out &&
                       f.value_down.dim() == 2 && f.value_down.size(0) == hidden_ &&
                       f.value_up.dim() == 2 && f.value_up.size(0) == f.value_down.size(1) &&
                       f.value_up.size(1) == out,
                   "low-rank KV: factors {} {} {} {} do not map hidden {} to {} through a rank",
                   c10::str(f.key_down.sizes()), c10::str(f.key_up.sizes()),
                   c10::str(f.value_down.sizes()), c10::str(f.value_up.sizes()), hidden_, out);
}

std::shared_ptr<LowRankKV> LowRankKV::from_model(LlamaForCausalLM& model, const LowRankKVOptions& o,
                                                 const CalibrationStats* stats) {
  const LlamaConfig& c = model->config();
  check_low_rank_kv(c, o);
  CONDENSE_CHECK(o.init == "svd" || (stats && stats->tokens > 0),
                 "low-rank KV: init {} needs calibration statistics", o.init);
  std::vector<Factors> layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto& attn = model->model->layer_list[l]->self_attn;
    // The attention input is q_proj's (k_proj is not called while a latent cache replaces it).
    const std::string name = "model.layers." + std::to_string(l) + ".self_attn.q_proj.weight";
    Factors f;
    if (o.init == "whiten") {
      auto it = stats->input_grams.find(name);
      CONDENSE_CHECK(it != stats->input_grams.end(), "low-rank KV: calibration recorded no input "
                     "Gram matrix for '{}' (calibrate with low_rank_kv_gram_weights())", name);
      std::tie(f.key_down, f.key_up) = whitened(attn->k_proj->weight, o.key_rank, it->second);
      std::tie(f.value_down, f.value_up) = whitened(attn->v_proj->weight, o.value_rank, it->second);
    } else {
      at::Tensor scale;
      if (o.init == "asvd") {
        // s_j = rms(x_j)^0.5 (ASVD's alpha = 0.5); a silent channel keeps a small weight.
        at::Tensor norms = stats->input_norms(name).to(at::kDouble);  // sqrt(sum_t x_j^2)
        scale = (norms / std::sqrt(static_cast<double>(stats->tokens))).sqrt();
        scale = scale.clamp_min(scale.max().item<double>() * 1e-6 + 1e-30);
      }
      std::tie(f.key_down, f.key_up) = low_rank(attn->k_proj->weight, o.key_rank, scale);
      std::tie(f.value_down, f.value_up) = low_rank(attn->v_proj->weight, o.value_rank, scale);
    }
    layers.push_back(std::move(f));
  }
  auto out = std::make_shared<LowRankKV>(c, std::move(layers));
  at::Tensor w = model->lm_head_weight();
  out->to(w.device(), w.scalar_type());
  return out;
}

std::shared_ptr<LowRankKV> LowRankKV::from_file(const H5File& file, const LlamaConfig& c) {
  if (!file.has(kGroup)) return nullptr;
  std::vector<Factors> layers(static_cast<size_t>(c.num_hidden_layers));
  const int64_t out = c.kv_heads() * c.head_size();
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int p = 0; p < 4; ++p) {
      const std::string name = entry_name(l, p);
      CONDENSE_CHECK(file.has(name), "{}: low-rank KV factor '{}' is missing", file.path(), name);
      part_of(layers[l], p) = file.read_tensor(name).to(at::kFloat);
    }
    const Factors& f = layers[l];
    auto check = [&](const at::Tensor& down, const at::Tensor& up, int p) {
      CONDENSE_CHECK(down.dim() == 2 && up.dim() == 2 && down.size(0) == c.hidden_size &&
                         up.size(0) == down.size(1) && up.size(1) == out,
                     "{}: '{}' {} and '{}' {} should be [{}, r] and [r, {}] (hidden, kv_heads x "
                     "head_dim)", file.path(), entry_name(l, p), c10::str(down.sizes()),
                     entry_name(l, p + 1), c10::str(up.sizes()), c.hidden_size, out);
    };
    check(f.key_down, f.key_up, 0);
    check(f.value_down, f.value_up, 2);
  }
  return std::make_shared<LowRankKV>(c, std::move(layers));
}

std::map<std::string, at::Tensor> LowRankKV::entries() const {
  std::map<std::string, at::Tensor> out;
  for (size_t l = 0; l < layers_.size(); ++l)
    for (int p = 0; p < 4; ++p)
      out[entry_name(l, p)] = part_of(layers_[l], p).detach().to(at::kCPU, at::kFloat).contiguous();
  return out;
}

void LowRankKV::to(at::Device device, at::ScalarType dtype) {
  for (Factors& f : layers_) {
    CONDENSE_CHECK(!f.key_down.requires_grad(), "low-rank KV: move it before make_trainable()");
    for (int p = 0; p < 4; ++p) part_of(f, p) = part_of(f, p).to(device, dtype);
  }
}

void LowRankKV::make_trainable() {
  for (Factors& f : layers_)
    for (int p = 0; p < 4; ++p) part_of(f, p) = part_of(f, p).detach().clone().requires_grad_(true);
}

std::vector<std::pair<std::string, at::Tensor>> LowRankKV::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t l = 0; l < layers_.size(); ++l)
    for (int p = 0; p < 4; ++p) out.emplace_back(entry_name(l, p), part_of(layers_[l], p));
  return out;
}

void LowRankKV::set_window(int64_t window) {
  CONDENSE_CHECK(window >= 0, "--kv-window {}: must be >= 0 (0: no window)", window);
  window_ = window;
}

void LowRankKV::record_inputs(bool on) {
  record_ = on;
  if (!on) std::fill(inputs_.begin(), inputs_.end(), at::Tensor());
}

at::Tensor LowRankKV::reconstruction_loss(LlamaForCausalLM& model) const {
  at::Tensor total;
  for (size_t l = 0; l < layers_.size(); ++l) {
    CONDENSE_CHECK(inputs_[l].defined(), "low-rank KV: no recorded input of layer {} (call "
                   "record_inputs(true) and run a forward first)", l);
    auto& attn = model->model->layer_list[l]->self_attn;
    const Factors& f = layers_[l];
    at::Tensor e = relative_error(inputs_[l], attn->k_proj->weight, f.key_down, f.key_up) +
                   relative_error(inputs_[l], attn->v_proj->weight, f.value_down, f.value_up);
    total = total.defined() ? total + e : e;
  }
  return total / (2.0 * static_cast<double>(layers_.size()));
}

void LowRankKV::fold_into(LlamaForCausalLM& model) const {
  at::NoGradGuard no_grad;
  for (size_t l = 0; l < layers_.size(); ++l) {
    auto& attn = model->model->layer_list[l]->self_attn;
    const Factors& f = layers_[l];
    at::Tensor& wk = attn->k_proj->weight;
    at::Tensor& wv = attn->v_proj->weight;
    wk.copy_(at::matmul(f.key_down, f.key_up).t().to(wk.dtype()));
    wv.copy_(at::matmul(f.value_down, f.value_up).t().to(wv.dtype()));
  }
}

std::pair<at::Tensor, at::Tensor> LowRankKV::encode(int64_t layer, const at::Tensor& x) {
  if (record_) inputs_[layer] = x.detach();
  const Factors& f = layers_[layer];
  return {at::matmul(x, f.key_down).unsqueeze(1), at::matmul(x, f.value_down).unsqueeze(1)};
}

std::pair<at::Tensor, at::Tensor> LowRankKV::decode(int64_t layer, const at::Tensor& ck,
                                                    const at::Tensor& cv) {
  const int64_t b = cv.size(0), t = cv.size(2);
  at::Tensor v = at::matmul(cv.squeeze(1), layers_[layer].value_up)
                     .view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  return {decode_keys(layer, ck), v};
}

at::Tensor LowRankKV::decode_keys(int64_t layer, const at::Tensor& ck) {
  const int64_t b = ck.size(0), t = ck.size(2);
  // [B, T, kv_heads * d] -> [B, kv_heads, T, d]
  at::Tensor k = at::matmul(ck.squeeze(1), layers_[layer].key_up).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  if (!config_.uses_rope(layer)) return k;  // SmolLM3's NoPE layers
  auto [cos, sin] = rope_table(t, k.device());
  return apply_rope(k, cos, sin);
}

at::Tensor LowRankKV::restore(int64_t layer, const at::Tensor& out) {
  const int64_t b = out.size(0), heads = out.size(1), t = out.size(2), r = out.size(3);
  const int64_t rep = heads / kv_heads_;
  // B_v [r_v, kv_heads * d] as per KV head [kv_heads, 1, r_v, d]; query heads grouped by KV head.
  at::Tensor up = layers_[layer].value_up.view({r, kv_heads_, head_dim_}).transpose(0, 1).unsqueeze(1);
  return at::matmul(out.reshape({b, kv_heads_, rep, t, r}), up).reshape({b, heads, t, head_dim_});
}

std::pair<at::Tensor, at::Tensor> LowRankKV::rope_table(int64_t n, at::Device device) {
  if (!cos_.defined() || cos_.size(0) < n || cos_.device() != device) {
    // Row p is p * inv_freq as the model computes it for position p at any offset, so keys
    // rebuilt here rotate exactly as the model's own would.
    const int64_t rows = std::max<int64_t>(n, cos_.defined() ? 2 * cos_.size(0) : 256);
    std::tie(cos_, sin_) = rope_.cos_sin(0, rows, device);
  }
  return {cos_.narrow(0, 0, n), sin_.narrow(0, 0, n)};
}

}  // namespace condense
