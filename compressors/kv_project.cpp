#include "compressors/kv_project.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

constexpr const char* kGroup = "kv_proj";

std::string key_name(size_t layer) { return "layers." + std::to_string(layer) + ".key"; }
std::string value_name(size_t layer) { return "layers." + std::to_string(layer) + ".value"; }

// Records per layer and KV head sum_t k_t k_t^T (after RoPE) and sum_t v_t v_t^T, float64, and
// changes nothing.
class CovarianceRecorder : public KVHook {
 public:
  explicit CovarianceRecorder(int64_t layers) : keys(layers), values(layers) {}
  Projected project(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v) override {
    add(keys[layer], k);
    add(values[layer], v);
    return {q, k, v};
  }
  at::Tensor restore(int64_t, const at::Tensor& out) override { return out; }
  std::vector<at::Tensor> keys, values;  // [kv_heads, d, d]

 private:
  static void add(at::Tensor& sum, const at::Tensor& x) {
    // x [B, H, T, d] -> per head [H, B*T, d]
    at::Tensor flat = x.detach().transpose(0, 1).reshape({x.size(1), -1, x.size(3)});
    at::Tensor c = at::matmul(flat.transpose(1, 2), flat).to(at::kCPU, at::kDouble);
    if (sum.defined()) sum.add_(c);
    else sum = c;
  }
};

// Eigenvectors of each head's covariance [H, d, d], largest eigenvalue first, float32.
at::Tensor principal_bases(const at::Tensor& cov) {
  at::Tensor sym = (cov + cov.transpose(1, 2)) * 0.5;
  return std::get<1>(at::linalg_eigh(sym)).flip({2}).to(at::kFloat).contiguous();
}

}  // namespace

KVProjection::KVProjection(const LlamaConfig& c, std::vector<std::pair<at::Tensor, at::Tensor>> bases)
    : bases_(std::move(bases)),
      heads_(c.num_attention_heads),
      kv_heads_(c.kv_heads()),
      head_dim_(c.head_size()),
      key_rank_(c.head_size()),
      value_rank_(c.head_size()) {
  CONDENSE_CHECK(static_cast<int64_t>(bases_.size()) == c.num_hidden_layers,
                 "KV projection: {} layers of bases for a model of {}", bases_.size(),
                 c.num_hidden_layers);
  for (const auto& [k, v] : bases_)
    for (const at::Tensor& u : {k, v})
      CONDENSE_CHECK(u.dim() == 3 && u.size(0) == kv_heads_ && u.size(1) == head_dim_ &&
                         u.size(2) == head_dim_,
                     "KV projection: a basis of shape {} for {} KV heads of {}", c10::str(u.sizes()), kv_heads_,
                     head_dim_);
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
  std::vector<std::pair<at::Tensor, at::Tensor>> bases;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    bases.emplace_back(principal_bases(recorder->keys[l]), principal_bases(recorder->values[l]));
  return std::make_shared<KVProjection>(c, std::move(bases));
}

std::shared_ptr<KVProjection> KVProjection::from_file(const H5File& file, const LlamaConfig& c) {
  if (!file.has(kGroup)) return nullptr;
  std::vector<std::pair<at::Tensor, at::Tensor>> bases;
  const std::string prefix = std::string(kGroup) + "/";
  for (size_t l = 0; l < static_cast<size_t>(c.num_hidden_layers); ++l) {
    for (const std::string& name : {key_name(l), value_name(l)})
      CONDENSE_CHECK(file.has(prefix + name), "{}: KV projection '{}{}' is missing", file.path(),
                     prefix, name);
    at::Tensor k = file.read_tensor(prefix + key_name(l)).to(at::kFloat);
    at::Tensor v = file.read_tensor(prefix + value_name(l)).to(at::kFloat);
    for (const auto& [name, u] : {std::pair{key_name(l), k}, std::pair{value_name(l), v}})
      CONDENSE_CHECK(u.dim() == 3 && u.size(0) == c.kv_heads() && u.size(1) == c.head_size() &&
                         u.size(2) == c.head_size(),
                     "{}: '{}{}' has shape {}; expected [{}, {}, {}] (kv heads, head_dim, head_dim)",
                     file.path(), prefix, name, c10::str(u.sizes()), c.kv_heads(), c.head_size(), c.head_size());
    bases.emplace_back(k, v);
  }
  return std::make_shared<KVProjection>(c, std::move(bases));
}

std::map<std::string, at::Tensor> KVProjection::entries() const {
  std::map<std::string, at::Tensor> out;
  for (size_t l = 0; l < bases_.size(); ++l) {
    out[std::string(kGroup) + "/" + key_name(l)] = bases_[l].first.to(at::kCPU, at::kFloat);
    out[std::string(kGroup) + "/" + value_name(l)] = bases_[l].second.to(at::kCPU, at::kFloat);
  }
  return out;
}

void KVProjection::set_rank(int64_t key_rank, int64_t value_rank, const std::string& option) {
  for (int64_t r : {key_rank, value_rank})
    CONDENSE_CHECK(r >= 1 && r <= head_dim_, "{} {}: valid is 1..{} (head_dim)", option, r, head_dim_);
  key_rank_ = key_rank;
  value_rank_ = value_rank;
}

void KVProjection::to(at::Device device, at::ScalarType dtype) {
  for (auto& [k, v] : bases_) {
    k = k.to(device, dtype);
    v = v.to(device, dtype);
  }
}

KVHook::Projected KVProjection::project(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v) {
  const at::Tensor uk = bases_[layer].first.narrow(2, 0, key_rank_);     // [Hkv, d, r]
  const at::Tensor uv = bases_[layer].second.narrow(2, 0, value_rank_);  // [Hkv, d, rv]
  const int64_t b = q.size(0), t = q.size(2), rep = heads_ / kv_heads_;
  // Query head h reads KV head h / rep (the GQA grouping): project it with that head's basis.
  at::Tensor qg = q.reshape({b, kv_heads_, rep, t, head_dim_});
  at::Tensor qp = at::matmul(qg, uk.unsqueeze(1)).reshape({b, heads_, t, key_rank_});
  return {qp, at::matmul(k, uk), at::matmul(v, uv)};
}

at::Tensor KVProjection::restore(int64_t layer, const at::Tensor& out) {
  const at::Tensor uv = bases_[layer].second.narrow(2, 0, value_rank_);  // [Hkv, d, rv]
  const int64_t b = out.size(0), t = out.size(2), rep = heads_ / kv_heads_;
  at::Tensor og = out.reshape({b, kv_heads_, rep, t, value_rank_});
  return at::matmul(og, uv.transpose(1, 2).unsqueeze(1)).reshape({b, heads_, t, head_dim_});
}

}  // namespace condense
