// Batch loader: windows, per-epoch permutations and rank slicing (see loader.h for the rules).
#include "data/loader.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/random.h"

namespace condense {
namespace {

int64_t count_windows(int64_t tokens, int64_t seq_len) {
  return tokens > seq_len ? (tokens - 1) / seq_len : 0;
}

at::Tensor as_int32_stream(const at::Tensor& ids, const char* who) {
  CONDENSE_CHECK(ids.defined() && ids.dim() == 1, "{}: token ids must be a 1-D tensor", who);
  CONDENSE_CHECK(!at::isFloatingType(ids.scalar_type()) && ids.scalar_type() != at::kBool,
                 "{}: token ids must be integers, got {}", who, c10::toString(ids.scalar_type()));
  return ids.to(at::kCPU, at::kInt).contiguous();
}

// Rows = the given windows of `stream` (int32); targets are inputs shifted by one.
Batch make_batch(const at::Tensor& stream, const int64_t* windows, int64_t count,
                 int64_t seq_len) {
  Batch b{at::empty({count, seq_len}, at::kLong), at::empty({count, seq_len}, at::kLong),
          at::empty({count}, at::kLong)};
  const int32_t* src = stream.data_ptr<int32_t>();
  std::copy(windows, windows + count, b.rows.data_ptr<int64_t>());
  int64_t* in = b.inputs.data_ptr<int64_t>();
  int64_t* tg = b.targets.data_ptr<int64_t>();
  for (int64_t r = 0; r < count; ++r) {
    const int32_t* w = src + windows[r] * seq_len;
    for (int64_t t = 0; t < seq_len; ++t) {
      in[r * seq_len + t] = w[t];
      tg[r * seq_len + t] = w[t + 1];
    }
  }
  return b;
}

void check_sharding(int64_t seq_len, int64_t batch_size, int rank, int world_size,
                    const char* who) {
  CONDENSE_CHECK(seq_len > 0 && batch_size > 0, "{}: seq_len {} and batch_size {} must be > 0",
                 who, seq_len, batch_size);
  CONDENSE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size,
                 "{}: rank {} is outside a world of size {}", who, rank, world_size);
}

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, int64_t seed, int64_t epoch) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  uint64_t state = static_cast<uint64_t>(seed) * 0xD1B54A32D192ED03ull;
  state = splitmix64(state) ^ static_cast<uint64_t>(epoch);
  splitmix64(state);
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

BatchLoader::BatchLoader(at::Tensor ids, LoaderOptions options)
    : ids_(as_int32_stream(ids, "loader")), options_(options) {
  check_sharding(options_.seq_len, options_.batch_size, options_.rank, options_.world_size,
                 "loader");
  windows_ = count_windows(ids_.numel(), options_.seq_len);
  if (!options_.subset.empty()) {
    for (int64_t w : options_.subset)
      CONDENSE_CHECK(w >= 0 && w < windows_, "loader: window {} of the subset is outside the "
                     "stream's {} windows", w, windows_);
    windows_ = static_cast<int64_t>(options_.subset.size());
  }
  global_batch_ = options_.batch_size * options_.world_size;
  CONDENSE_CHECK(options_.subset.empty() || windows_ >= global_batch_,
                 "loader: the chosen subset holds {} windows, fewer than one global batch of {} "
                 "(batch_size {} x world_size {}); choose more windows (recovery.budget, "
                 "recovery.candidates)", windows_, global_batch_, options_.batch_size,
                 options_.world_size);
  CONDENSE_CHECK(windows_ >= global_batch_,
                 "loader: {} tokens make {} windows of seq_len {} + 1, fewer than one global "
                 "batch of {} (batch_size {} x world_size {})",
                 ids_.numel(), windows_, options_.seq_len, global_batch_, options_.batch_size,
                 options_.world_size);
}

void BatchLoader::ensure_permutation() {
  if (permutation_epoch_ == cursor_.epoch) return;
  permutation_ = epoch_permutation(windows_, options_.seed, cursor_.epoch);
  permutation_epoch_ = cursor_.epoch;
}

Batch BatchLoader::next() {
  if (cursor_.position + global_batch_ > windows_) {
    ++cursor_.epoch;
    cursor_.position = 0;
  }
  ensure_permutation();
  const int64_t* slice =
      permutation_.data() + cursor_.position + options_.rank * options_.batch_size;
  cursor_.position += global_batch_;
  if (options_.subset.empty()) return make_batch(ids_, slice, options_.batch_size, options_.seq_len);
  std::vector<int64_t> mapped(slice, slice + options_.batch_size);
  for (int64_t& w : mapped) w = options_.subset[w];
  return make_batch(ids_, mapped.data(), options_.batch_size, options_.seq_len);
}

void BatchLoader::restore(const LoaderCursor& c) {
  CONDENSE_CHECK(c.epoch >= 0 && c.position >= 0 && c.position <= windows_ &&
                     c.position % global_batch_ == 0,
                 "loader: cursor (epoch {}, position {}) does not fit this loader ({} windows "
                 "per epoch, global batch {}): was it saved with another dataset, seq_len or "
                 "global batch size?",
                 c.epoch, c.position, windows_, global_batch_);
  cursor_ = c;
}

std::vector<Batch> validation_batches(const at::Tensor& ids, int64_t seq_len, int64_t batch_size,
                                      int64_t max_batches, int rank, int world_size) {
  check_sharding(seq_len, batch_size, rank, world_size, "validation");
  at::Tensor stream = as_int32_stream(ids, "validation");
  int64_t windows = count_windows(stream.numel(), seq_len);
  if (windows == 0) return {};
  CONDENSE_CHECK(windows >= world_size,
                 "validation: {} tokens make only {} windows of seq_len {} + 1, fewer than the "
                 "{} ranks", stream.numel(), windows, seq_len, world_size);
  int64_t per_rank = batch_size;
  int64_t count = windows / (batch_size * world_size);
  if (count == 0) {
    per_rank = windows / world_size;
    count = 1;
  }
  if (max_batches > 0) count = std::min(count, max_batches);
  std::vector<int64_t> order(windows);
  for (int64_t i = 0; i < windows; ++i) order[i] = i;
  std::vector<Batch> out;
  out.reserve(count);
  for (int64_t k = 0; k < count; ++k) {
    int64_t first = k * per_rank * world_size + rank * per_rank;
    out.push_back(make_batch(stream, order.data() + first, per_rank, seq_len));
  }
  return out;
}

void warn_past_half(const std::string& what, int64_t begin, int64_t end, int64_t total, bool first_half) {
  const int64_t half = total / 2;
  if (first_half ? end <= half : begin >= half) return;
  spdlog::warn("{} reads held-out tokens [{}, {}) of {}: past the {} half, where {} reads; a model "
               "calibrated (prune, --kv-budget, the kv kinds) on this store {} partly on its "
               "calibration text", what, begin, end, total, first_half ? "first" : "second",
               first_half ? "calibration" : "evaluation", first_half ? "is then scored" : "is then evaluated");
}

std::vector<at::Tensor> calibration_windows(const at::Tensor& ids, int64_t seq_len, int64_t count,
                                            int64_t batch_size) {
  CONDENSE_CHECK(count > 0 && batch_size > 0, "calibration needs a positive window count and batch size");
  at::Tensor stream = as_int32_stream(ids, "calibration");
  int64_t windows = count_windows(stream.numel(), seq_len);
  CONDENSE_CHECK(windows >= count, "calibration: the split holds {} windows of {} tokens, fewer than "
                 "the {} asked for", windows, seq_len, count);
  warn_past_half("calibration", (windows - count) * seq_len, windows * seq_len + 1, stream.numel(),
                 /*first_half=*/false);
  std::vector<int64_t> order(count);
  for (int64_t i = 0; i < count; ++i) order[i] = windows - count + i;
  std::vector<at::Tensor> out;
  for (int64_t first = 0; first < count; first += batch_size) {
    int64_t n = std::min(batch_size, count - first);
    out.push_back(make_batch(stream, order.data() + first, n, seq_len).inputs);
  }
  return out;
}

}  // namespace condense
