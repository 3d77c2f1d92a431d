// Training metrics on disk: one JSON object per line in `<out_dir>/metrics.jsonl` (the
// machine-readable record that scripts and tests read) and the same values as TensorBoard
// scalars under `<out_dir>/tensorboard/`. Only rank 0 logs; other ranks construct a disabled
// logger so call sites need no rank checks.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace condense {

class TensorBoardWriter;

class MetricsLogger {
 public:
  // enabled=false: every call is a no-op and no file or directory is created.
  // enabled=true: creates out_dir if needed and opens metrics.jsonl for appending, so a
  // resumed run continues the same file. Records of steps after `start_step` (the step the run
  // starts from: its checkpoint's, 0 for a fresh start) are what a run that died after its
  // last checkpoint wrote: they are removed from metrics.jsonl (along with a torn last line),
  // and TensorBoard is told to drop them (a SessionLog START event at start_step + 1), so that
  // the resumed run's file holds each step once. Throws condense::Error naming the file on
  // failure.
  MetricsLogger(const std::string& out_dir, bool enabled, int64_t start_step = 0);
  ~MetricsLogger();
  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;

  // Appends {"step": step, "split": prefix, name: value, ...} (names in the given order;
  // NaN and infinities become null) and flushes the line to the OS, so a crash loses at most
  // the call in progress. Each value also becomes the TensorBoard scalar "<prefix>/<name>".
  // A value may not be named "step" or "split".
  void log(int64_t step, const std::vector<std::pair<std::string, double>>& values,
           const std::string& prefix = "train");
  void flush();
  bool enabled() const { return jsonl_ != nullptr; }

 private:
  std::string jsonl_path_;
  std::FILE* jsonl_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

}  // namespace condense
