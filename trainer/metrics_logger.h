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
  // resumed run continues the same file. Throws condense::Error naming the file on failure.
  MetricsLogger(const std::string& out_dir, bool enabled);
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
