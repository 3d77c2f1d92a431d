// Logging: spdlog with a "[rank r]" prefix once the world is known. Rank 0 logs at info;
// other ranks log warnings and errors only, so multi-rank output stays readable.
#pragma once
#include <spdlog/spdlog.h>

namespace condense {

// Configures the default logger for this process; call once at start-up (main) and again
// when the rank is known.
void init_logging(int rank = 0, int world_size = 1, bool verbose = false);

}  // namespace condense
