// MetricsLogger: JSONL through nlohmann::ordered_json (keys keep the order they were logged
// in, "step" and "split" first) and TensorBoard scalars through io/tensorboard_writer.
#include "trainer/metrics_logger.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/tensorboard_writer.h"

namespace condense {

MetricsLogger::MetricsLogger(const std::string& out_dir, bool enabled) {
  if (!enabled) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  CONDENSE_CHECK(!ec, "cannot create metrics directory {}: {}", out_dir, ec.message());
  jsonl_path_ = (fs::path(out_dir) / "metrics.jsonl").string();
  jsonl_ = std::fopen(jsonl_path_.c_str(), "a");
  CONDENSE_CHECK(jsonl_ != nullptr, "cannot open {} for appending: {}", jsonl_path_,
                 std::strerror(errno));
  try {
    tensorboard_ =
        std::make_unique<TensorBoardWriter>((fs::path(out_dir) / "tensorboard").string());
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
