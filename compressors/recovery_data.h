// Choosing the windows a recovery run trains on (PASER's idea, "Post-training data selection
// for efficient pruned LLM recovery"): spend a budget of windows where pruning hurt most.
//   1. score every candidate window by the Jensen-Shannon divergence between the teacher's
//      (unpruned) and the pruned model's next-token distributions, averaged over its tokens;
//   2. cluster the candidates by the teacher's mean final hidden state (k-means, k-means++
//      start, deterministic), so capabilities (kinds of text) are told apart;
//   3. give each cluster a share of the budget proportional to its summed divergence (largest
//      remainders, capped at the cluster's size) and take its most degraded windows.
// `random` draws the same number of candidates uniformly, the baseline PASER is compared with.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

struct DataSelectionOptions {
  std::string method = "all";  // all | random | paser
  double budget = 0.2;         // share of the candidates kept, in (0, 1]
  int64_t candidates = 2000;   // windows scored (a seeded sample of the split); 0: all
  int64_t clusters = 8;
  int64_t batch = 8;           // windows per scoring forward
  int64_t seed = 0;
};

struct DataSelection {
  std::vector<int64_t> windows;        // chosen window indices of the split, ascending
  std::vector<int64_t> candidates;     // scored window indices
  std::vector<double> divergence;      // per candidate: mean JSD (paser only)
  std::vector<int64_t> cluster;        // per candidate (paser only)
  std::string describe() const;
};

// ids: the training split; windows as in data/loader.h (window w = tokens [w*T, w*T + T + 1)).
DataSelection select_recovery_windows(LlamaForCausalLM& teacher, LlamaForCausalLM& pruned,
                                      const at::Tensor& ids, int64_t seq_len,
                                      const DataSelectionOptions& opt);

// Exposed for tests.
// Mean over rows of JSD(softmax(a_row) || softmax(b_row)) for logits [N, V], in nats.
at::Tensor mean_jsd(const at::Tensor& logits_a, const at::Tensor& logits_b);
// k-means on rows of x [N, D]; returns the cluster of each row (k clusters, k <= N).
std::vector<int64_t> kmeans(const at::Tensor& x, int64_t k, int64_t seed, int64_t iterations = 25);
// Budget split: per cluster, round(budget * weight_c / sum weights) by largest remainders,
// capped at sizes_c (the overflow goes to the others in the same proportion).
std::vector<int64_t> allocate_budget(const std::vector<double>& weights,
                                     const std::vector<int64_t>& sizes, int64_t budget);

}  // namespace condense
