#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace condense {

void init_logging(int rank, int world_size, bool verbose) {
  std::string name = "condense_" + std::to_string(rank);
  spdlog::drop(name);
  auto logger = spdlog::stderr_color_mt(name);
  std::string prefix = world_size > 1 ? fmt::format("[rank {}] ", rank) : "";
  logger->set_pattern("%H:%M:%S %^%l%$ " + prefix + "%v");
  spdlog::level::level_enum level = verbose ? spdlog::level::debug : spdlog::level::info;
  if (rank != 0) level = spdlog::level::warn;
  logger->set_level(level);
  spdlog::set_default_logger(logger);
}

}  // namespace condense
