#include "compressors/distill.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "core/error.h"
#include "memory/chunked_cross_entropy.h"
#include "model/softcap.h"

namespace condense {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Double inputs stay double (exact reference tests); everything else accumulates in float.
at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [rows, V] logits of one chunk, soft-capped at `cap` (0: not) and divided by the temperature, in
// the accumulation type.
at::Tensor scaled_logits(const at::Tensor& h, const at::Tensor& w, double temperature,
                         at::ScalarType acc, double cap) {
  at::Tensor z = at::matmul(h, w.t()).to(acc);
  softcap_(z, cap);
  if (temperature != 1.0) z.div_(temperature);
  return z;
}

class ChunkedKd : public torch::autograd::Function<ChunkedKd> {
 public:
  // teacher_hidden / teacher_weight arrive detached; valid is the [N] mask of counted tokens.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& teacher_hidden,
                            const at::Tensor& teacher_weight, const at::Tensor& valid,
                            int64_t tc, double temperature, double scale, int64_t top_k,
                            double cap, double teacher_cap) {
    at::ScalarType acc = accumulate_type(hidden);
    int64_t n = hidden.size(0);
    at::Tensor lse_s = at::empty({n}, hidden.options().dtype(acc));
    // The teacher's log-sum-exp is only reused by the full-distribution backward; top-k
    // recomputes its k logits instead (a [N, k] cache would be O(N V) at k = V).
    at::Tensor lse_t = top_k > 0 ? at::Tensor() : at::empty({n}, lse_s.options());
    at::Tensor kl = at::empty({n}, lse_s.options());
    for (int64_t r0 = 0; r0 < n; r0 += tc) {
      int64_t rows = std::min(tc, n - r0);
      at::Tensor ls = scaled_logits(hidden.narrow(0, r0, rows), weight, temperature, acc, cap);
      at::Tensor lt =
          scaled_logits(teacher_hidden.narrow(0, r0, rows), teacher_weight, temperature, acc, teacher_cap);
      at::Tensor ls_lse = at::logsumexp(ls, {1});
      lse_s.narrow(0, r0, rows).copy_(ls_lse);
      ls.sub_(ls_lse.unsqueeze(1));  // ls is now log p_s
      if (top_k > 0) {
        auto [values, index] = lt.topk(top_k, 1);
        lt = at::Tensor();
        at::Tensor log_pt = at::log_softmax(values, 1);
        at::Tensor diff = log_pt - ls.gather(1, index);
        kl.narrow(0, r0, rows).copy_((log_pt.exp() * diff).sum(1));
      } else {
        at::Tensor lt_lse = at::logsumexp(lt, {1});
        lse_t.narrow(0, r0, rows).copy_(lt_lse);
        lt.sub_(lt_lse.unsqueeze(1));   // log p_t
        ls.neg_().add_(lt);             // log p_t - log p_s
        lt.exp_();                      // p_t
        ls.mul_(lt);
        // 0 * (-inf) where the teacher puts exactly no mass (masked vocabulary): a zero term.
        ls.masked_fill_(lt.eq(0), 0);
        kl.narrow(0, r0, rows).copy_(ls.sum(1));
      }
    }
    at::Tensor count = valid.sum().to(acc).clamp_min(1);
    at::Tensor loss = (kl * valid).sum() * scale / count;
    ctx->save_for_backward({hidden, weight, teacher_hidden, teacher_weight, valid, lse_s, lse_t,
                            count});
    ctx->saved_data["tc"] = tc;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["top_k"] = top_k;
    ctx->saved_data["cap"] = cap;
    ctx->saved_data["teacher_cap"] = teacher_cap;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &teacher_hidden = saved[2],
                     &teacher_weight = saved[3], &valid = saved[4], &lse_s = saved[5],
                     &lse_t = saved[6], &count = saved[7];
    int64_t tc = ctx->saved_data["tc"].toInt(), top_k = ctx->saved_data["top_k"].toInt();
    double temperature = ctx->saved_data["temperature"].toDouble();
    double scale = ctx->saved_data["scale"].toDouble();
    double cap = ctx->saved_data["cap"].toDouble(), teacher_cap = ctx->saved_data["teacher_cap"].toDouble();
    at::ScalarType acc = accumulate_type(hidden);
    int64_t n = hidden.size(0);
    bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    // d loss / d student_logit[i, j] = coef_i * (p_s[i, j] - p_t[i, j]); the 1/T is the chain
    // rule through logits / T; a soft cap multiplies by its slope at each student logit.
    at::Tensor coef = grads[0].to(acc) * (scale / temperature) / count * valid.to(acc);  // [N]
    at::Tensor dh = need_h ? at::zeros(hidden.sizes(), hidden.options().dtype(acc)) : at::Tensor();
    at::Tensor dw = need_w ? at::zeros(weight.sizes(), weight.options().dtype(acc)) : at::Tensor();
    at::Tensor wf = weight.to(acc);
    for (int64_t r0 = 0; r0 < n; r0 += tc) {
      int64_t rows = std::min(tc, n - r0);
      at::Tensor h = hidden.narrow(0, r0, rows);
      at::Tensor g = scaled_logits(h, weight, temperature, acc, cap);
      const at::Tensor slope = cap > 0 ? softcap_slope(g * temperature, cap) : at::Tensor();
      g.sub_(lse_s.narrow(0, r0, rows).unsqueeze(1)).exp_();  // p_s
      at::Tensor lt =
          scaled_logits(teacher_hidden.narrow(0, r0, rows), teacher_weight, temperature, acc, teacher_cap);
      if (top_k > 0) {
        auto [values, index] = lt.topk(top_k, 1);
        lt = at::Tensor();
        g.scatter_add_(1, index, at::softmax(values, 1).neg_());
      } else {
        lt.sub_(lse_t.narrow(0, r0, rows).unsqueeze(1)).exp_();  // p_t
        g.sub_(lt);
        lt = at::Tensor();
      }
      if (slope.defined()) g.mul_(slope);
      g.mul_(coef.narrow(0, r0, rows).unsqueeze(1));
      if (need_h) dh.narrow(0, r0, rows).copy_(at::matmul(g, wf));
      if (need_w) dw.add_(at::matmul(g.t(), h.to(acc)));
    }
    return {need_h ? dh.to(hidden.scalar_type()) : at::Tensor(),
            need_w ? dw.to(weight.scalar_type()) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor chunked_kd_loss(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                           const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                           const at::Tensor& targets, const KdLossOptions& o) {
  CONDENSE_CHECK(o.temperature > 0, "chunked_kd_loss: temperature must be > 0, got {}",
                 o.temperature);
  CONDENSE_CHECK(o.kd_ratio >= 0 && o.kd_ratio <= 1,
                 "chunked_kd_loss: kd_ratio must be in [0, 1], got {}", o.kd_ratio);
  CONDENSE_CHECK(o.token_chunk > 0, "chunked_kd_loss: token_chunk must be positive, got {}",
                 o.token_chunk);
  CONDENSE_CHECK(student_weight.dim() == 2 && teacher_weight.dim() == 2,
                 "chunked_kd_loss: LM head weights must be [V, H], got {} and {} dimensions",
                 student_weight.dim(), teacher_weight.dim());
  at::Tensor hs = student_hidden.reshape({-1, student_hidden.size(-1)});
  at::Tensor ht = teacher_hidden.detach().reshape({-1, teacher_hidden.size(-1)});
  at::Tensor wt = teacher_weight.detach();
  at::Tensor t = targets.reshape({-1});
  int64_t n = hs.size(0), v = student_weight.size(0);
  CONDENSE_CHECK(ht.size(0) == n && t.size(0) == n,
                 "chunked_kd_loss: token counts differ: student hidden {} tokens, teacher hidden "
                 "{} tokens, targets {}", n, ht.size(0), t.size(0));
  CONDENSE_CHECK(wt.size(0) == v, "chunked_kd_loss: student vocabulary {} vs teacher vocabulary {}",
                 v, wt.size(0));
  CONDENSE_CHECK(student_weight.size(1) == hs.size(1),
                 "chunked_kd_loss: student hidden width {} vs student LM head [{}, {}]",
                 hs.size(1), v, student_weight.size(1));
  CONDENSE_CHECK(wt.size(1) == ht.size(1),
                 "chunked_kd_loss: teacher hidden width {} vs teacher LM head [{}, {}]",
                 ht.size(1), v, wt.size(1));
  CONDENSE_CHECK(o.top_k >= 0 && o.top_k <= v,
                 "chunked_kd_loss: top_k must be in [0, {}] (the vocabulary), got {}", v, o.top_k);

  at::Tensor kd, ce;
  if (o.kd_ratio > 0) {
    double scale = o.temperature_squared ? o.temperature * o.temperature : 1.0;
    // Tiles in the LM head's compute dtype (autocast's bf16 in a bf16 run; see
    // memory/chunked_cross_entropy.h): backward runs outside the autocast scope.
    const at::ScalarType student = lm_head_compute_type(hs, student_weight);
    const at::ScalarType teacher = lm_head_compute_type(ht, wt);
    kd = ChunkedKd::apply(hs.to(student), student_weight.to(student), ht.to(teacher), wt.to(teacher),
                          t.ne(o.ignore_index), o.token_chunk, o.temperature, scale, o.top_k, o.softcap,
                          o.teacher_softcap);
    if (o.kd_ratio == 1) return kd;
  }
  ChunkedLossOptions ce_options;
  ce_options.token_chunk = o.token_chunk;
  ce_options.ignore_index = o.ignore_index;
  ce_options.softcap = o.softcap;
  ce = chunked_cross_entropy(hs, student_weight, t, ce_options);
  if (o.kd_ratio == 0) return ce;
  return kd * o.kd_ratio + ce * (1 - o.kd_ratio);
}

at::Tensor hidden_state_loss(const std::vector<at::Tensor>& student_states,
                             const std::vector<at::Tensor>& teacher_states,
                             const std::vector<std::pair<int64_t, int64_t>>& layer_pairs,
                             const std::string& kind) {
  CONDENSE_CHECK(kind == "mse" || kind == "cosine",
                 "hidden_state_loss: unknown kind '{}' (expected one of: mse, cosine)", kind);
  CONDENSE_CHECK(!layer_pairs.empty(), "hidden_state_loss: no layer pairs given");
  auto n_s = static_cast<int64_t>(student_states.size());
  auto n_t = static_cast<int64_t>(teacher_states.size());
  at::Tensor total;
  for (const auto& [i, j] : layer_pairs) {
    CONDENSE_CHECK(i >= 0 && i < n_s,
                   "hidden_state_loss: student state index {} out of range [0, {})", i, n_s);
    CONDENSE_CHECK(j >= 0 && j < n_t,
                   "hidden_state_loss: teacher state index {} out of range [0, {})", j, n_t);
    const at::Tensor& s = student_states[i];
    at::Tensor t = teacher_states[j].detach();
    CONDENSE_CHECK(s.size(-1) == t.size(-1),
                   "hidden_state_loss: pair (student {}, teacher {}) has hidden widths {} vs {}",
                   i, j, s.size(-1), t.size(-1));
    CONDENSE_CHECK(s.numel() == t.numel(),
                   "hidden_state_loss: pair (student {}, teacher {}) has {} vs {} tokens", i, j,
                   s.numel() / s.size(-1), t.numel() / t.size(-1));
    // bf16 states are compared in float: the differences are small relative to the values.
    at::ScalarType acc = accumulate_type(s);
    at::Tensor sf = s.reshape({-1, s.size(-1)}).to(acc);
    at::Tensor tf = t.reshape({-1, t.size(-1)}).to(acc);
    at::Tensor term = kind == "mse" ? at::mse_loss(sf, tf)
                                    : (1 - at::cosine_similarity(sf, tf, 1)).mean();
    total = total.defined() ? total + term : term;
  }
  return total / static_cast<double>(layer_pairs.size());
}

}  // namespace condense
