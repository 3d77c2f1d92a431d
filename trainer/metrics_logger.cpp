// MetricsLogger: JSONL through nlohmann::ordered_json (keys keep the order they were logged
// in, "step" and "split" first) and TensorBoard scalars through io/tensorboard_writer.
#include "trainer/metrics_logger.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/tensorboard_writer.h"

namespace condense {

namespace {

// Drops the records of steps after `start_step` (and lines that do not parse: a write torn by
// a crash) from an existing metrics.jsonl, atomically. Returns how many were dropped.
int64_t drop_records_after(const std::string& path, int64_t start_step) {
  std::ifstream in(path);
  if (!in) return 0;
  std::string line, kept;
  int64_t dropped = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
        record["step"].get<int64_t>() <= start_step) {
      kept += line + "\n";
    } else {
      ++dropped;
    }
  }
  if (dropped > 0) write_text_atomically(path, kept);
  return dropped;
}

}  // namespace

MetricsLogger::MetricsLogger(const std::string& out_dir, bool enabled, int64_t start_step) {
  if (!enabled) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  CONDENSE_CHECK(!ec, "cannot create metrics directory {}: {}", out_dir, ec.message());
  jsonl_path_ = (fs::path(out_dir) / "metrics.jsonl").string();
  if (const int64_t dropped = drop_records_after(jsonl_path_, start_step); dropped > 0)
    spdlog::info("{}: dropped {} record(s) past step {} (written after the last checkpoint by "
                 "the run that stopped)", jsonl_path_, dropped, start_step);
  jsonl_ = std::fopen(jsonl_path_.c_str(), "a");
  CONDENSE_CHECK(jsonl_ != nullptr, "cannot open {} for appending: {}", jsonl_path_,
                 std::strerror(errno));
  try {
    tensorboard_ =
        std::make_unique<TensorBoardWriter>((fs::path(out_dir) / "tensorboard").string());
    tensorboard_->add_session_start(start_step + 1);
  } catch (...) {
    std::fclose(jsonl_);
    jsonl_ = nullptr;
    throw;
  }
}

MetricsLogger::~MetricsLogger() {
  if (jsonl_ != nullptr) std::fclose(jsonl_);
}

void MetricsLogger::log(int64_t step, const std::vector<std::pair<std::string, double>>& values,
                        const std::string& prefix) {
  if (jsonl_ == nullptr) return;
  nlohmann::ordered_json line;
  line["step"] = step;
  line["split"] = prefix;
  for (const auto& [name, value] : values) {
    CONDENSE_CHECK(name != "step" && name != "split",
                   "metric name '{}' is reserved in {} (the keys 'step' and 'split' are set "
                   "by the logger)", name, jsonl_path_);
    if (std::isfinite(value))
      line[name] = value;
    else
      line[name] = nullptr;
  }
  std::string text = line.dump() + "\n";
  CONDENSE_CHECK(std::fwrite(text.data(), 1, text.size(), jsonl_) == text.size() &&
                     std::fflush(jsonl_) == 0,
                 "cannot write {}: {}", jsonl_path_, std::strerror(errno));
  // TensorBoard keeps NaN/inf as they are: a diverging loss should show up on the plot.
  for (const auto& [name, value] : values)
    tensorboard_->add_scalar(prefix + "/" + name, value, step);
  tensorboard_->flush();
}

void MetricsLogger::flush() {
  if (jsonl_ == nullptr) return;
  CONDENSE_CHECK(std::fflush(jsonl_) == 0, "cannot write {}: {}", jsonl_path_,
                 std::strerror(errno));
  tensorboard_->flush();
}

}  // namespace condense
