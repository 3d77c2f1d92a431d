#include "compressors/recovery_data.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "data/loader.h"

namespace condense {
namespace {

// Inputs [b, T] of the given windows of the stream (int32, as the loader reads it).
at::Tensor window_inputs(const at::Tensor& stream, const int64_t* windows, int64_t count,
                         int64_t seq_len) {
  at::Tensor out = at::empty({count, seq_len}, at::kLong);
  const int32_t* src = stream.data_ptr<int32_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < count; ++r)
    for (int64_t t = 0; t < seq_len; ++t) dst[r * seq_len + t] = src[windows[r] * seq_len + t];
  return out;
}

}  // namespace

std::string DataSelection::describe() const {
  if (divergence.empty())
    return fmt::format("{} of {} candidate windows", windows.size(), candidates.size());
  double all = 0, chosen = 0;
  for (double d : divergence) all += d;
  for (int64_t w : windows) {
    auto it = std::lower_bound(candidates.begin(), candidates.end(), w);
    chosen += divergence[it - candidates.begin()];
  }
  return fmt::format("{} of {} candidate windows; mean JSD {:.4f} chosen vs {:.4f} all",
                     windows.size(), candidates.size(), chosen / std::max<size_t>(windows.size(), 1),
                     all / std::max<size_t>(divergence.size(), 1));
}

at::Tensor mean_jsd(const at::Tensor& logits_a, const at::Tensor& logits_b) {
  at::Tensor la = at::log_softmax(logits_a.to(at::kDouble), -1);
  at::Tensor lb = at::log_softmax(logits_b.to(at::kDouble), -1);
  at::Tensor lm = at::logaddexp(la, lb) - std::log(2.0);
  at::Tensor kl_a = (la.exp() * (la - lm)).sum(-1);
  at::Tensor kl_b = (lb.exp() * (lb - lm)).sum(-1);
  return (0.5 * (kl_a + kl_b)).mean();
}

std::vector<int64_t> kmeans(const at::Tensor& x_in, int64_t k, int64_t seed, int64_t iterations) {
  at::Tensor x = x_in.to(at::kDouble).contiguous();
  const int64_t n = x.size(0);
  CONDENSE_CHECK(k >= 1 && k <= n, "k-means: {} clusters for {} points", k, n);
  // k-means++ start (Arthur & Vassilvitskii 2007) from a private generator: deterministic.
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  std::vector<int64_t> chosen = {at::randint(n, {1}, gen, at::kLong).item<int64_t>()};
  at::Tensor d2 = (x - x[chosen[0]]).square().sum(1);
  while (static_cast<int64_t>(chosen.size()) < k) {
    at::Tensor p = d2.sum().item<double>() > 0 ? d2 : at::ones_like(d2);
    int64_t next = at::multinomial(p, 1, false, gen).item<int64_t>();
    chosen.push_back(next);
    d2 = at::minimum(d2, (x - x[next]).square().sum(1));
  }
  at::Tensor centers = x.index_select(0, at::tensor(chosen, at::kLong));
  at::Tensor assign;
  for (int64_t it = 0; it < iterations; ++it) {
    at::Tensor next_assign = at::cdist(x, centers).argmin(1);
    if (assign.defined() && at::equal(next_assign, assign)) break;
    assign = next_assign;
    for (int64_t c = 0; c < k; ++c) {
      at::Tensor members = assign.eq(c);
      if (members.any().item<bool>()) centers[c] = x.index({members}).mean(0);
    }
  }
  std::vector<int64_t> out(assign.data_ptr<int64_t>(), assign.data_ptr<int64_t>() + n);
  return out;
}

std::vector<int64_t> allocate_budget(const std::vector<double>& weights,
                                     const std::vector<int64_t>& sizes, int64_t budget) {
  const size_t k = weights.size();
  std::vector<int64_t> out(k, 0);
  std::vector<bool> open(k);
  for (size_t c = 0; c < k; ++c) open[c] = sizes[c] > 0;
  int64_t left = std::min<int64_t>(budget, std::accumulate(sizes.begin(), sizes.end(), int64_t{0}));
  while (left > 0) {
    double total = 0;
    for (size_t c = 0; c < k; ++c) if (open[c]) total += std::max(weights[c], 1e-12);
    std::vector<std::pair<double, size_t>> remainders;
    int64_t given = 0;
    for (size_t c = 0; c < k; ++c) {
      if (!open[c]) continue;
      double share = left * std::max(weights[c], 1e-12) / total;
      int64_t whole = std::min<int64_t>(static_cast<int64_t>(share), sizes[c] - out[c]);
      out[c] += whole;
      given += whole;
      remainders.emplace_back(share - static_cast<double>(static_cast<int64_t>(share)), c);
    }
    std::stable_sort(remainders.begin(), remainders.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (const auto& [r, c] : remainders) {
      if (given == left) break;
      if (out[c] < sizes[c]) {
        ++out[c];
        ++given;
      }
    }
    left -= given;
    bool any_open = false;
    for (size_t c = 0; c < k; ++c) {
      open[c] = open[c] && out[c] < sizes[c];
      any_open = any_open || open[c];
    }
    if (!any_open || given == 0) break;
  }
  return out;
}

DataSelection select_recovery_windows(LlamaForCausalLM& teacher, LlamaForCausalLM& pruned,
                                      const at::Tensor& ids, int64_t seq_len,
                                      const DataSelectionOptions& opt) {
  CONDENSE_CHECK(opt.method == "all" || opt.method == "random" || opt.method == "paser",
                 "recovery.selection '{}': valid: all, random, paser", opt.method);
  CONDENSE_CHECK(opt.budget > 0 && opt.budget <= 1, "recovery.budget must be in (0, 1], got {}",
                 opt.budget);
  at::Tensor stream = ids.to(at::kCPU, at::kInt).contiguous();
  const int64_t total = stream.numel() > seq_len ? (stream.numel() - 1) / seq_len : 0;
  CONDENSE_CHECK(total > 0, "recovery data selection: the split has no window of {} tokens", seq_len);
  DataSelection sel;
  // Candidates: a seeded sample of the split's windows (all of them when it is small).
  std::vector<int64_t> perm = epoch_permutation(total, opt.seed, /*epoch=*/-1);
  int64_t n = opt.candidates > 0 ? std::min(opt.candidates, total) : total;
  sel.candidates.assign(perm.begin(), perm.begin() + n);
  std::sort(sel.candidates.begin(), sel.candidates.end());
  const int64_t budget = std::max<int64_t>(1, static_cast<int64_t>(std::llround(opt.budget * n)));
  if (opt.method == "all") {
    sel.windows = sel.candidates;
    return sel;
  }
  if (opt.method == "random") {
    std::vector<int64_t> pick = epoch_permutation(n, opt.seed, /*epoch=*/-2);
    for (int64_t i = 0; i < budget; ++i) sel.windows.push_back(sel.candidates[pick[i]]);
    std::sort(sel.windows.begin(), sel.windows.end());
    return sel;
  }
  CONDENSE_CHECK(opt.clusters >= 1, "recovery.clusters must be >= 1, got {}", opt.clusters);
  at::NoGradGuard no_grad;
  bool teacher_training = teacher->is_training(), pruned_training = pruned->is_training();
  teacher->eval();
  pruned->eval();
  std::vector<at::Tensor> means;
  for (int64_t first = 0; first < n; first += opt.batch) {
    int64_t b = std::min(opt.batch, n - first);
    at::Tensor x = window_inputs(stream, sel.candidates.data() + first, b, seq_len)
                       .to(teacher->parameters().front().device());
    at::Tensor th = teacher->hidden({x});
    at::Tensor tl = teacher->logits(th), pl = pruned->forward(x);
    if (tl.size(-1) != pl.size(-1)) {  // two paddings of one tokenizer: the common rows
      const int64_t v = std::min(tl.size(-1), pl.size(-1));
      tl = tl.narrow(-1, 0, v);
      pl = pl.narrow(-1, 0, v);
    }
    for (int64_t r = 0; r < b; ++r) sel.divergence.push_back(mean_jsd(tl[r], pl[r]).item<double>());
    means.push_back(th.mean(1).to(at::kCPU));
  }
  teacher->train(teacher_training);
  pruned->train(pruned_training);
  at::Tensor features = at::cat(means, 0);
  features = features / features.norm(2, 1, true).clamp_min(1e-12);
  sel.cluster = kmeans(features, std::min(opt.clusters, n), opt.seed);
  const int64_t k = std::min(opt.clusters, n);
  std::vector<double> weight(k, 0.0);
  std::vector<std::vector<int64_t>> members(k);
  for (int64_t i = 0; i < n; ++i) {
    weight[sel.cluster[i]] += sel.divergence[i];
    members[sel.cluster[i]].push_back(i);
  }
  std::vector<int64_t> sizes(k);
  for (int64_t c = 0; c < k; ++c) sizes[c] = static_cast<int64_t>(members[c].size());
  std::vector<int64_t> share = allocate_budget(weight, sizes, budget);
  for (int64_t c = 0; c < k; ++c) {
    std::vector<int64_t>& m = members[c];
    std::stable_sort(m.begin(), m.end(), [&](int64_t a, int64_t b) {
      return sel.divergence[a] > sel.divergence[b];
    });
    for (int64_t j = 0; j < share[c]; ++j) sel.windows.push_back(sel.candidates[m[j]]);
  }
  std::sort(sel.windows.begin(), sel.windows.end());
  return sel;
}

}  // namespace condense
