#include "compressors/kv_project.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <utility>

#include "core/error.h"

namespace condense {
namespace {

constexpr const char* kGroup = "kv_proj";

std::string key_name(size_t layer) { return "layers." + std::to_string(layer) + ".key"; }
std::string value_name(size_t layer) { return "layers." + std::to_string(layer) + ".value"; }
std::string mean_name(const std::string& basis) { return basis + "_mean"; }
std::string full(const std::string& name) { return std::string(kGroup) + "/" + name; }

// Cayley(A) = (I + A)^-1 (I - A) of A = S - S^T (skew-symmetric): orthogonal. [H, d, d].
at::Tensor cayley(const at::Tensor& s) {
  at::Tensor a = s - s.transpose(1, 2);
  at::Tensor eye = at::eye(s.size(1), s.options()).expand_as(a);
  return at::linalg_solve(eye + a, eye - a);
}

// Per layer and KV head, the first and second moments of the keys (after RoPE) and values
// (float64), without changing them.
class CovarianceRecorder : public KVHook {
 public:
  struct Moments {
    at::Tensor sum, outer;  // [kv_heads, d] sum_t x_t, [kv_heads, d, d] sum_t x_t x_t^T
    int64_t count = 0;
  };
  explicit CovarianceRecorder(int64_t layers) : keys(layers), values(layers) {}
  Projected project(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v) override {
    add(keys[layer], k);
    add(values[layer], v);
    return {q, k, v};
  }
  at::Tensor restore(int64_t, const at::Tensor& out) override { return out; }
  std::vector<Moments> keys, values;

 private:
  static void add(Moments& m, const at::Tensor& x) {
    // x [B, H, T, d] -> per head [H, B*T, d]
    at::Tensor flat = x.detach().transpose(0, 1).reshape({x.size(1), -1, x.size(3)});
    at::Tensor outer = at::matmul(flat.transpose(1, 2), flat).to(at::kCPU, at::kDouble);
    at::Tensor sum = flat.sum(1).to(at::kCPU, at::kDouble);
    m.outer = m.outer.defined() ? m.outer + outer : outer;
    m.sum = m.sum.defined() ? m.sum + sum : sum;
    m.count += flat.size(1);
  }
};

// {mean [H, d], eigenvectors of the centered covariance [H, d, d], largest eigenvalue first},
// float32; uncentered (a zero mean, the second moment's eigenvectors) where `center` is false.
std::pair<at::Tensor, at::Tensor> principal_bases(const CovarianceRecorder::Moments& m, bool center = true) {
  at::Tensor mean = center ? m.sum / static_cast<double>(m.count) : at::zeros_like(m.sum);
  at::Tensor cov = m.outer - static_cast<double>(m.count) * mean.unsqueeze(2) * mean.unsqueeze(1);
  at::Tensor sym = (cov + cov.transpose(1, 2)) * 0.5;
  return {mean.to(at::kFloat).contiguous(),
          std::get<1>(at::linalg_eigh(sym)).flip({2}).to(at::kFloat).contiguous()};
}

}  // namespace

KVProjection::KVProjection(const LlamaConfig& c, std::vector<std::pair<at::Tensor, at::Tensor>> bases,
                           std::vector<std::pair<at::Tensor, at::Tensor>> means)
    : bases_(std::move(bases)),
      means_(std::move(means)),
      heads_(c.num_attention_heads),
      kv_heads_(c.kv_heads()),
      head_dim_(c.head_size()),
      key_ranks_(c.num_hidden_layers, std::vector<int64_t>(c.kv_heads(), c.head_size())),
      value_ranks_(c.num_hidden_layers, std::vector<int64_t>(c.kv_heads(), c.head_size())),
      value_basis_(c.num_hidden_layers) {
  CONDENSE_CHECK(static_cast<int64_t>(bases_.size()) == c.num_hidden_layers,
                 "KV projection: {} layers of bases for a model of {}", bases_.size(),
                 c.num_hidden_layers);
  for (const auto& [k, v] : bases_)
    for (const at::Tensor& u : {k, v})
      CONDENSE_CHECK(u.dim() == 3 && u.size(0) == kv_heads_ && u.size(1) == head_dim_ &&
                         u.size(2) == head_dim_,
                     "KV projection: a basis of shape {} for {} KV heads of {}", c10::str(u.sizes()), kv_heads_,
                     head_dim_);
  if (means_.empty())
    for (const auto& [k, v] : bases_)
      means_.emplace_back(at::zeros({kv_heads_, head_dim_}, k.options()),
                          at::zeros({kv_heads_, head_dim_}, v.options()));
  CONDENSE_CHECK(means_.size() == bases_.size(), "KV projection: {} layers of means for {} of bases",
                 means_.size(), bases_.size());
  for (const auto& [k, v] : means_)
    for (const at::Tensor& m : {k, v})
      CONDENSE_CHECK(m.dim() == 2 && m.size(0) == kv_heads_ && m.size(1) == head_dim_,
                     "KV projection: a mean of shape {} for {} KV heads of {}", c10::str(m.sizes()),
                     kv_heads_, head_dim_);
  for (size_t l = 0; l < means_.size() && c.attn_logit_softcapping > 0; ++l)
    CONDENSE_CHECK(means_[l].first.abs().max().item<double>() == 0, "KV projection: layer {} has a key "
                   "mean, which shifts this model's capped attention scores (attn_logit_softcapping {}): its "
                   "keys must be projected uncentered", l, c.attn_logit_softcapping);
}

std::shared_ptr<KVProjection> KVProjection::from_calibration(LlamaForCausalLM& model,
                                                             const std::vector<at::Tensor>& windows) {
  CONDENSE_CHECK(!windows.empty(), "KV projection: calibration needs at least one window");
  const LlamaConfig& c = model->config();
  auto recorder = std::make_shared<CovarianceRecorder>(c.num_hidden_layers);
  at::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  model->set_kv_hook(recorder);
  try {
    for (const at::Tensor& ids : windows) model->hidden({ids});
  } catch (...) {
    model->set_kv_hook(nullptr);
    model->train(was_training);
    throw;
  }
  model->set_kv_hook(nullptr);
  model->train(was_training);
  std::vector<std::pair<at::Tensor, at::Tensor>> bases, means;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    // Keys uncentered under Gemma 2's score cap (see the header).
    auto [mk, uk] = principal_bases(recorder->keys[l], c.attn_logit_softcapping == 0);
    auto [mv, uv] = principal_bases(recorder->values[l]);
    bases.emplace_back(uk, uv);
    means.emplace_back(mk, mv);
  }
  return std::make_shared<KVProjection>(c, std::move(bases), std::move(means));
}

std::shared_ptr<KVProjection> KVProjection::from_file(const H5File& file, const LlamaConfig& c) {
  if (!file.has(kGroup)) return nullptr;
  std::vector<std::pair<at::Tensor, at::Tensor>> bases, means;
  // A mean: [kv_heads, head_dim]; zeros when the checkpoint predates them.
  auto read_mean = [&](const std::string& name) {
    if (!file.has(full(name))) return at::zeros({c.kv_heads(), c.head_size()}, at::kFloat);
    at::Tensor m = file.read_tensor(full(name)).to(at::kFloat);
    CONDENSE_CHECK(m.dim() == 2 && m.size(0) == c.kv_heads() && m.size(1) == c.head_size(),
                   "{}: '{}' has shape {}; expected [{}, {}] (kv heads, head_dim)", file.path(),
                   full(name), c10::str(m.sizes()), c.kv_heads(), c.head_size());
    return m;
  };
  auto read = [&](const std::string& name) {
    CONDENSE_CHECK(file.has(full(name)), "{}: KV projection '{}' is missing", file.path(), full(name));
    at::Tensor u = file.read_tensor(full(name)).to(at::kFloat);
    CONDENSE_CHECK(u.dim() == 3 && u.size(0) == c.kv_heads() && u.size(1) == c.head_size() &&
                       u.size(2) == c.head_size(),
                   "{}: '{}' has shape {}; expected [{}, {}, {}] (kv heads, head_dim, head_dim)",
                   file.path(), full(name), c10::str(u.sizes()), c.kv_heads(), c.head_size(),
                   c.head_size());
    return u;
  };
  for (size_t l = 0; l < static_cast<size_t>(c.num_hidden_layers); ++l) {
    at::Tensor k = read(key_name(l)), v = read(value_name(l));
    // A trained projection: compose U0 Cayley(S - S^T) once, for inference.
    if (file.has(full(key_name(l) + "_skew")) || file.has(full(value_name(l) + "_skew"))) {
      at::NoGradGuard no_grad;
      k = at::matmul(k, cayley(read(key_name(l) + "_skew")));
      v = at::matmul(v, cayley(read(value_name(l) + "_skew")));
    }
    bases.emplace_back(k, v);
    means.emplace_back(read_mean(mean_name(key_name(l))), read_mean(mean_name(value_name(l))));
  }
  return std::make_shared<KVProjection>(c, std::move(bases), std::move(means));
}

std::map<std::string, at::Tensor> KVProjection::entries() const {
  std::map<std::string, at::Tensor> out;
  for (size_t l = 0; l < bases_.size(); ++l) {
    auto [k, v] = bases(static_cast<int64_t>(l));
    out[full(key_name(l))] = k.detach().to(at::kCPU, at::kFloat);
    out[full(value_name(l))] = v.detach().to(at::kCPU, at::kFloat);
    out[full(mean_name(key_name(l)))] = means_[l].first.to(at::kCPU, at::kFloat);
    out[full(mean_name(value_name(l)))] = means_[l].second.to(at::kCPU, at::kFloat);
  }
  return out;
}

void KVProjection::make_trainable() {
  skews_.clear();
  for (const auto& [k, v] : bases_)
    skews_.emplace_back(at::zeros_like(k).requires_grad_(true), at::zeros_like(v).requires_grad_(true));
}

std::vector<std::pair<std::string, at::Tensor>> KVProjection::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t l = 0; l < skews_.size(); ++l) {
    out.emplace_back(full(key_name(l) + "_skew"), skews_[l].first);
    out.emplace_back(full(value_name(l) + "_skew"), skews_[l].second);
  }
  return out;
}

std::map<std::string, at::Tensor> KVProjection::state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t l = 0; l < bases_.size(); ++l) {
    out[full(key_name(l))] = bases_[l].first;
    out[full(value_name(l))] = bases_[l].second;
    out[full(mean_name(key_name(l)))] = means_[l].first;
    out[full(mean_name(value_name(l)))] = means_[l].second;
  }
  return out;
}

std::pair<at::Tensor, at::Tensor> KVProjection::bases(int64_t layer) const {
  if (skews_.empty()) return bases_[layer];
  return {at::matmul(bases_[layer].first, cayley(skews_[layer].first)),
          at::matmul(bases_[layer].second, cayley(skews_[layer].second))};
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> KVProjection::sampled_ranks(int64_t layer) const {
  if (rank_masks_.empty()) return {key_ranks_[layer], value_ranks_[layer]};
  auto count = [](const at::Tensor& mask) {
    at::Tensor r = mask.sum({1, 2}).to(at::kCPU, at::kLong).contiguous();
    return std::vector<int64_t>(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
  };
  return {count(rank_masks_[layer].first), count(rank_masks_[layer].second)};
}

void KVProjection::sample_ranks(at::Generator& gen) {
  const int64_t d = head_dim_;
  const std::vector<int64_t> nested = {std::max<int64_t>(1, d / 4), std::max<int64_t>(1, d / 2),
                                       std::max<int64_t>(1, 3 * d / 4), d};
  // Four entries even where a tiny head_dim repeats one (nested_ranks() drops repeats): the draw
  // stays uniform over the four quarters and draws what earlier runs drew.
  at::Tensor ref = bases_[0].first;
  at::Tensor cols = at::arange(d, ref.options().dtype(at::kLong)).view({1, 1, d});
  at::Tensor choices = at::tensor(nested, at::kLong).to(ref.device());
  auto draw = [&] {
    at::Tensor pick = at::randint(0, static_cast<int64_t>(nested.size()), {kv_heads_}, gen,
                                  at::TensorOptions().dtype(at::kLong)).to(ref.device());
    return (cols < choices.index_select(0, pick).view({kv_heads_, 1, 1})).to(ref.scalar_type());
  };
  rank_masks_.clear();
  for (size_t l = 0; l < bases_.size(); ++l) {
    at::Tensor km = draw();
    rank_masks_.emplace_back(km, draw());
  }
}

void KVProjection::set_rank(int64_t key_rank, int64_t value_rank, const std::string& option) {
  for (int64_t r : {key_rank, value_rank})
    CONDENSE_CHECK(r >= 1 && r <= head_dim_, "{} {}: valid is 1..{} (head_dim)", option, r, head_dim_);
  for (auto& layer : key_ranks_) std::fill(layer.begin(), layer.end(), key_rank);
  for (auto& layer : value_ranks_) std::fill(layer.begin(), layer.end(), value_rank);
  rank_masks_.clear();
}

void KVProjection::set_layer_ranks(const std::vector<int64_t>& keys, const std::vector<int64_t>& values) {
  CONDENSE_CHECK(keys.size() == key_ranks_.size() && values.size() == value_ranks_.size(),
                 "KV projection: {} / {} layer ranks for {} layers", keys.size(), values.size(),
                 key_ranks_.size());
  std::vector<std::vector<int64_t>> k, v;
  for (size_t l = 0; l < keys.size(); ++l) {
    k.emplace_back(kv_heads_, keys[l]);
    v.emplace_back(kv_heads_, values[l]);
  }
  set_head_ranks(k, v);
}

void KVProjection::set_head_ranks(const std::vector<std::vector<int64_t>>& keys,
                                  const std::vector<std::vector<int64_t>>& values) {
  CONDENSE_CHECK(keys.size() == key_ranks_.size() && values.size() == value_ranks_.size(),
                 "KV projection: {} / {} layers of head ranks for {} layers", keys.size(),
                 values.size(), key_ranks_.size());
  for (const auto* part : {&keys, &values})
    for (const auto& layer : *part) {
      CONDENSE_CHECK(static_cast<int64_t>(layer.size()) == kv_heads_,
                     "KV projection: {} head ranks in a layer of {} KV heads", layer.size(), kv_heads_);
      for (int64_t r : layer)
        CONDENSE_CHECK(r >= 1 && r <= head_dim_, "KV projection: head rank {}: valid is 1..{}", r, head_dim_);
    }
  key_ranks_ = keys;
  value_ranks_ = values;
  rank_masks_.clear();
}

std::vector<int64_t> KVProjection::nested_ranks() const {
  const int64_t d = head_dim_;
  std::vector<int64_t> out = {std::max<int64_t>(1, d / 4), std::max<int64_t>(1, d / 2),
                              std::max<int64_t>(1, 3 * d / 4), d};
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void KVProjection::to(at::Device device, at::ScalarType dtype) {
  CONDENSE_CHECK(skews_.empty(), "KV projection: move it before make_trainable()");
  for (auto* part : {&bases_, &means_})
    for (auto& [k, v] : *part) {
      k = k.to(device, dtype);
      v = v.to(device, dtype);
    }
}

at::Tensor KVProjection::q_project(const at::Tensor& q, const at::Tensor& basis) const {
  // Query head h reads KV head h / rep (the GQA grouping): project it with that head's basis.
  const int64_t b = q.size(0), t = q.size(2), rep = heads_ / kv_heads_;
  at::Tensor qg = q.reshape({b, kv_heads_, rep, t, head_dim_});
  return at::matmul(qg, basis.unsqueeze(1)).reshape({b, heads_, t, basis.size(2)});
}

at::Tensor KVProjection::back(const at::Tensor& out, const at::Tensor& basis, int64_t width) const {
  const int64_t b = out.size(0), t = out.size(2), rep = heads_ / kv_heads_;
  at::Tensor og = out.reshape({b, kv_heads_, rep, t, width});
  return at::matmul(og, basis.transpose(1, 2).unsqueeze(1)).reshape({b, heads_, t, head_dim_});
}

KVHook::Projected KVProjection::project(int64_t layer, const at::Tensor& q, const at::Tensor& k_in,
                                        const at::Tensor& v_in) {
  auto [uk, uv] = bases(layer);  // [Hkv, d, d]
  // Centered (see the header): k - mu_k and v - mu_v per KV head; mu_v returns in restore().
  const at::Tensor k = k_in - means_[layer].first.unsqueeze(1);
  const at::Tensor v = v_in - means_[layer].second.unsqueeze(1);
  if (!rank_masks_.empty()) {
    // Sampled per-head ranks: zero the coordinates beyond each head's rank (same dot products
    // as truncating, at full width).
    uk = uk * rank_masks_[layer].first;
    uv = uv * rank_masks_[layer].second;
  } else if (!uniform(key_ranks_[layer]) || !uniform(value_ranks_[layer])) {
    // Ragged ranks: pack the heads into one cached "head" (see the header). k U_block is
    // nonzero only in each head's own slice, so summing over the heads packs them.
    at::Tensor bk = block_basis(uk, key_ranks_[layer]), bv = block_basis(uv, value_ranks_[layer]);
    value_basis_[layer] = bv;
    return {q_project(q, bk), at::matmul(k, bk).sum(1, true), at::matmul(v, bv).sum(1, true)};
  } else {
    uk = uk.narrow(2, 0, key_ranks_[layer][0]);
    uv = uv.narrow(2, 0, value_ranks_[layer][0]);
  }
  // restore() follows for the same layer (also when a recompute policy reruns the layer):
  // hand it this value basis instead of composing the Cayley transform a second time.
  value_basis_[layer] = uv;
  return {q_project(q, uk), at::matmul(k, uk), at::matmul(v, uv)};
}

bool KVProjection::uniform(const std::vector<int64_t>& ranks) {
  return std::all_of(ranks.begin(), ranks.end(), [&](int64_t r) { return r == ranks[0]; });
}

at::Tensor KVProjection::block_basis(const at::Tensor& basis, const std::vector<int64_t>& ranks) {
  const int64_t total = std::accumulate(ranks.begin(), ranks.end(), int64_t{0});
  at::Tensor out = at::zeros({basis.size(0), basis.size(1), total}, basis.options());
  int64_t offset = 0;
  for (size_t h = 0; h < ranks.size(); ++h) {
    const auto hh = static_cast<int64_t>(h);
    out.select(0, hh).narrow(1, offset, ranks[h]).copy_(basis.select(0, hh).narrow(1, 0, ranks[h]));
    offset += ranks[h];
  }
  return out;
}

at::Tensor KVProjection::restore(int64_t layer, const at::Tensor& out) {
  at::Tensor uv = std::exchange(value_basis_[layer], at::Tensor());
  CONDENSE_CHECK(uv.defined(), "KV projection: restore() of layer {} without project()", layer);
  // Query head h reads KV head h / rep: its output gets that head's value mean back.
  at::Tensor mean = means_[layer].second.repeat_interleave(heads_ / kv_heads_, 0).unsqueeze(1);
  return back(out, uv, uv.size(2)) + mean;
}

}  // namespace condense
