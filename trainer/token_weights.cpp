#include "trainer/token_weights.h"

namespace condense {

TokenWeights token_weights(const std::vector<Batch>& micro_batches,
                           const std::function<int64_t(const Batch&)>& tokens, Communicator* exchange) {
  TokenWeights w;
  std::vector<double> count;
  for (const Batch& b : micro_batches) {
    count.push_back(static_cast<double>(tokens(b)));
    w.tokens += count.back();
  }
  const double ranks = exchange ? static_cast<double>(exchange->size()) : 1.0;
  const double all = exchange ? all_reduce_mean(*exchange, {w.tokens})[0] * ranks : w.tokens;
  for (double c : count) {
    w.backward.push_back(all > 0 ? c * ranks / all : 0.0);
    w.report.push_back(w.tokens > 0 ? c / w.tokens : 0.0);
  }
  return w;
}

}  // namespace condense
