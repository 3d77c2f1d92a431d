// Batch loader: cuts a token stream into fixed windows and deals them to ranks, shuffled per
// epoch, deterministically and resumably.
//
// Window w covers tokens [w*T, w*T + T + 1) (T = seq_len): inputs are its first T tokens and
// targets its last T. Each epoch visits the windows in a permutation drawn from (seed, epoch)
// by a Fisher-Yates shuffle over splitmix64 (our own, so the order is the same with every
// standard library). A global batch is batch_size * world_size consecutive permuted windows;
// rank r takes slice r. Hence ranks see disjoint windows, and one rank with batch 2b sees
// exactly the union of what two ranks with batch b see. The tail of an epoch that cannot fill
// a global batch is skipped. The cursor (epoch, windows consumed) is the whole state.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace condense {

struct LoaderOptions {
  int64_t seq_len = 128;
  int64_t batch_size = 8;  // windows per rank per batch
  int64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  // When non-empty, only these windows (indices into the stream's windows, each < the count)
  // are drawn, shuffled per epoch like the whole set (recovery data selection).
  std::vector<int64_t> subset;
};

struct Batch {
  at::Tensor inputs;   // int64 [B, T]
  at::Tensor targets;  // int64 [B, T]: inputs shifted left by one token
  // int64 [B]: each row's window index in its split's stream (window w starts at token w * T).
  // Data laid out one record per window (xRAG's documents, compressors/context_documents.h)
  // looks its side information up by it.
  at::Tensor rows;
};

struct LoaderCursor {
  int64_t epoch = 0;
  int64_t position = 0;  // global windows consumed in this epoch (same on every rank)
};

class BatchLoader {
 public:
  // `ids`: 1-D integer tokens (any integer dtype, CPU). Throws if the stream holds fewer than
  // batch_size * world_size windows.
  BatchLoader(at::Tensor ids, LoaderOptions options);

  // This rank's next batch. Not collective, but every rank must call it equally often.
  Batch next();
  LoaderCursor cursor() const { return cursor_; }
  // Continues exactly as a loader that had produced the batches up to `cursor`.
  void restore(const LoaderCursor& cursor);
  int64_t windows_per_epoch() const { return windows_; }
  int64_t batches_per_epoch() const { return windows_ / global_batch_; }

 private:
  void ensure_permutation();

  at::Tensor ids_;  // int32, contiguous
  LoaderOptions options_;
  int64_t windows_ = 0;
  int64_t global_batch_ = 0;
  LoaderCursor cursor_;
  int64_t permutation_epoch_ = -1;
  std::vector<int64_t> permutation_;
};

// The permutation of [0, n) for (seed, epoch), as used by BatchLoader.
std::vector<int64_t> epoch_permutation(int64_t n, int64_t seed, int64_t epoch);

// Fixed, unshuffled evaluation batches: windows in order, global batches sharded by rank as
// in BatchLoader, at most max_batches (<= 0: all). A trailing partial global batch is dropped,
// except that a split too short for one full global batch still yields one batch of
// floor(windows / world_size) windows per rank. Empty if the split has no full window; throws
// if it has fewer windows than ranks.
std::vector<Batch> validation_batches(const at::Tensor& ids, int64_t seq_len, int64_t batch_size,
                                      int64_t max_batches, int rank, int world_size);

// Calibration windows for compressors: the last `count` windows of a split (evaluation reads the
// first ones, so the two do not overlap while the split holds both), in batches of at most
// `batch_size`, inputs only ([b, seq_len] int64). Throws naming the split's size if it holds
// fewer than `count` windows; warns when they reach into the split's first half (see
// warn_past_half).
// The convention that keeps evaluation and calibration text apart without recording which
// windows a model was calibrated on: evaluation reads the held-out stream from its start and
// stays in its first half, calibration reads from its end and stays in its second half. Warns,
// naming `what`, when tokens [begin, end) of a stream of `total` cross into the other half
// (first_half: the range belongs in the first half).
void warn_past_half(const std::string& what, int64_t begin, int64_t end, int64_t total, bool first_half);

std::vector<at::Tensor> calibration_windows(const at::Tensor& ids, int64_t seq_len, int64_t count,
                                            int64_t batch_size);

}  // namespace condense
