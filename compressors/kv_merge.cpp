#include "compressors/kv_merge.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

std::string attn_weight(int64_t layer, const char* proj) {
  return "model.layers." + std::to_string(layer) + ".self_attn." + proj + ".weight";
}

// The merge of one group of g KV heads (float64 weights, rows of one head = d consecutive rows).
struct GroupMerge {
  at::Tensor k, v;                  // merged k_proj / v_proj rows [d, hidden]
  std::vector<at::Tensor> q_map;    // per member j: [d, d], new q rows = q_map[j] @ old q rows
  std::vector<at::Tensor> o_map;    // per member j: [d, d], new o_proj cols = old cols @ o_map[j]
};

GroupMerge merge_mean(const at::Tensor& wk, const at::Tensor& wv, int64_t g, int64_t d) {
  GroupMerge m;
  m.k = wk.view({g, d, -1}).mean(0);
  m.v = wv.view({g, d, -1}).mean(0);
  at::Tensor eye = at::eye(d, wk.options());
  m.q_map.assign(g, eye);
  m.o_map.assign(g, eye);
  return m;
}

// wk, wv: the group's rows [g*d, hidden]; gram: [hidden, hidden] of their input; RoPE rotates
// the first `rotary` of each head's d channels (all of them but with a partial_rotary_factor).
GroupMerge merge_svd(const at::Tensor& wk, const at::Tensor& wv, const at::Tensor& gram,
                     int64_t g, int64_t d, int64_t rotary) {
  GroupMerge m;
  const int64_t half = rotary / 2;
  // Keys: per frequency i, the complex covariance C[a, b] = sum_t conj(z_a) z_b of the heads'
  // z_j = k_j[i] + 1j k_j[i + half], read off the real covariance S of the stacked key channels.
  at::Tensor s = at::matmul(at::matmul(wk, gram), wk.t()).view({g, d, g, d});
  at::Tensor k = at::zeros({d, wk.size(1)}, wk.options());
  std::vector<at::Tensor> q_map;  // one tensor each (vector(g, t) would share one storage)
  for (int64_t j = 0; j < g; ++j) q_map.push_back(at::zeros({d, d}, wk.options()));
  at::Tensor wk3 = wk.view({g, d, -1});
  for (int64_t i = 0; i < half; ++i) {
    const int64_t r = i, im = i + half;
    at::Tensor re = s.select(1, r).select(2, r) + s.select(1, im).select(2, im);    // [g, g]
    at::Tensor imag = s.select(1, r).select(2, im) - s.select(1, im).select(2, r);  // [g, g]
    at::Tensor c = at::complex(re, imag);
    at::Tensor vecs = std::get<1>(at::linalg_eigh(c));  // eigenvalues ascending
    at::Tensor top = vecs.select(1, g - 1);              // [g] complex, unit norm
    at::Tensor cr = at::real(top).contiguous(), ci = at::imag(top).contiguous();
    for (int64_t j = 0; j < g; ++j) {
      const double a = cr[j].item<double>(), b = ci[j].item<double>();
      // m = sum_j c_j z_j: real row i and imaginary row i + half of the merged key.
      k[r].add_(wk3[j][r] * a - wk3[j][im] * b);
      k[im].add_(wk3[j][r] * b + wk3[j][im] * a);
      // q' = q c_j, as a map on the head's rows (r, im).
      q_map[j].index_put_({r, r}, a);
      q_map[j].index_put_({r, im}, -b);
      q_map[j].index_put_({im, r}, b);
      q_map[j].index_put_({im, im}, a);
    }
  }
  // Channels RoPE passes through (partial_rotary_factor < 1): RoPE commutes with any real map
  // on them, so they merge as the values do: the merged block is the top (d - rotary)
  // eigenvectors U of the stacked blocks' covariance applied to them, and member j's queries on
  // these channels become U_j^T q (U_j: its rows of U), since q . k_j ~ q . U_j k_merged.
  if (const int64_t p = d - rotary; p > 0) {
    at::Tensor rows = wk3.narrow(1, rotary, p).reshape({g * p, -1});  // [g*p, hidden]
    at::Tensor sp = at::matmul(at::matmul(rows, gram), rows.t());
    sp = (sp + sp.t()) * 0.5;
    at::Tensor u = std::get<1>(at::linalg_eigh(sp)).narrow(1, g * p - p, p).flip({1});  // [g*p, p]
    k.narrow(0, rotary, p).copy_(at::matmul(u.t(), rows));
    for (int64_t j = 0; j < g; ++j)
      q_map[j].narrow(0, rotary, p).narrow(1, rotary, p).copy_(u.narrow(0, j * p, p).t());
  }
  m.k = k;
  m.q_map = std::move(q_map);
  // Values: the top-d eigenvectors of the stacked values' covariance.
  at::Tensor sv = at::matmul(at::matmul(wv, gram), wv.t());
  sv = (sv + sv.t()) * 0.5;
  at::Tensor u = std::get<1>(at::linalg_eigh(sv)).narrow(1, g * d - d, d).flip({1});  // [g*d, d]
  m.v = at::matmul(u.t(), wv);
  for (int64_t j = 0; j < g; ++j) m.o_map.push_back(u.narrow(0, j * d, d).contiguous());
  return m;
}

}  // namespace

void check_kv_merge(const LlamaConfig& c, const KVMergeOptions& o) {
  // Merged or low-rank keys would need the biases merged or rebuilt too, and a key norm
  // (Qwen3's) is not linear in the input: not built.
  // (Layers without RoPE, SmolLM3's, are handled: their keys are simply not rotated.)
  CONDENSE_CHECK(!c.qkv_bias && !c.qk_norm, "kv merge: the model has {}, which kv merge does not "
                 "handle (kv_project and the pruning methods do)", attention_extras(c));
  const int64_t kv = c.kv_heads();
  CONDENSE_CHECK(o.init == "svd" || o.init == "mean",
                 "kv merge init '{}': valid are svd (low-rank merge from calibration) and mean", o.init);
  CONDENSE_CHECK(kv > 1, "the model has a single KV head: there is nothing to merge (kv_heads "
                 "compression needs at least 2)");
  CONDENSE_CHECK(o.kv_heads >= 1 && o.kv_heads < kv,
                 "kv_heads {}: the model has {} KV heads; valid is 1..{} (fewer than now)",
                 o.kv_heads, kv, kv - 1);
  CONDENSE_CHECK(kv % o.kv_heads == 0,
                 "kv_heads {}: must divide the model's {} KV heads (consecutive heads merge in "
                 "equal groups); valid: the divisors of {} below it", o.kv_heads, kv, kv);
  CONDENSE_CHECK(c.head_size() % 2 == 0, "kv merge: head_dim {} is odd; RoPE needs channel pairs",
                 c.head_size());
}

std::vector<std::string> kv_merge_gram_weights(const LlamaConfig& c) {
  std::vector<std::string> names;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) names.push_back(attn_weight(l, "k_proj"));
  return names;
}

LlamaForCausalLM merge_kv_heads(LlamaForCausalLM& model, const KVMergeOptions& opt,
                                const CalibrationStats* stats) {
  const LlamaConfig& c = model->config();
  check_kv_merge(c, opt);
  const bool svd = opt.init == "svd";
  CONDENSE_CHECK(!svd || stats, "kv merge init svd needs calibration statistics");
  const int64_t kv = c.kv_heads(), kn = opt.kv_heads, g = kv / kn, d = c.head_size();
  const int64_t rep = c.num_attention_heads / kv;  // query heads per original KV head

  LlamaConfig nc = c;
  nc.num_key_value_heads = kn;
  LlamaForCausalLM out = new_model_like(model, nc);

  at::NoGradGuard no_grad;
  auto src = model->named_parameters();
  auto dst = out->named_parameters();
  size_t assigned = 0;
  for (auto& item : dst) {
    const std::string& name = item.key();
    if (name.find(".self_attn.") != std::string::npos) continue;
    const at::Tensor* s = src.find(name);
    CONDENSE_CHECK(s && s->sizes() == item.value().sizes(), "kv merge: no tensor '{}' to copy", name);
    item.value().copy_(*s);
    ++assigned;
  }
  auto get = [&](const std::string& name) {
    const at::Tensor* s = src.find(name);
    CONDENSE_CHECK(s, "kv merge: the model has no tensor '{}'", name);
    return s->to(at::kCPU, at::kDouble);
  };
  auto put = [&](const std::string& name, const at::Tensor& t) {
    at::Tensor* p = dst.find(name);
    CONDENSE_CHECK(p && p->sizes() == t.sizes(), "kv merge: '{}' does not fit the merged model", name);
    p->copy_(t);
    ++assigned;
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    at::Tensor wq = get(attn_weight(l, "q_proj")), wk = get(attn_weight(l, "k_proj"));
    at::Tensor wv = get(attn_weight(l, "v_proj")), wo = get(attn_weight(l, "o_proj"));
    at::Tensor gram;
    if (svd) {
      auto it = stats->input_grams.find(attn_weight(l, "k_proj"));
      CONDENSE_CHECK(it != stats->input_grams.end(),
                     "kv merge: calibration recorded no input Gram matrix of '{}'",
                     attn_weight(l, "k_proj"));
      gram = it->second.to(at::kCPU, at::kDouble);
    }
    at::Tensor nk = at::empty({kn * d, c.hidden_size}, wk.options());
    at::Tensor nv = at::empty_like(nk);
    at::Tensor nq = wq.clone(), no = wo.clone();
    for (int64_t grp = 0; grp < kn; ++grp) {
      at::Tensor gk = wk.narrow(0, grp * g * d, g * d), gv = wv.narrow(0, grp * g * d, g * d);
      GroupMerge m = svd ? merge_svd(gk, gv, gram, g, d, c.rotary_dim()) : merge_mean(gk, gv, g, d);
      nk.narrow(0, grp * d, d).copy_(m.k);
      nv.narrow(0, grp * d, d).copy_(m.v);
      for (int64_t j = 0; j < g; ++j) {
        const int64_t b = grp * g + j;  // original KV head
        for (int64_t h = b * rep; h < (b + 1) * rep; ++h) {
          nq.narrow(0, h * d, d).copy_(at::matmul(m.q_map[j], wq.narrow(0, h * d, d)));
          no.narrow(1, h * d, d).copy_(at::matmul(wo.narrow(1, h * d, d), m.o_map[j]));
        }
      }
    }
    put(attn_weight(l, "q_proj"), nq);
    put(attn_weight(l, "k_proj"), nk);
    put(attn_weight(l, "v_proj"), nv);
    put(attn_weight(l, "o_proj"), no);
  }
  CONDENSE_CHECK(assigned == dst.size(), "kv merge: filled {} of the merged model's {} tensors",
                 assigned, dst.size());
  return out;
}

}  // namespace condense
