// Learning-rate schedule: linear warm-up from 0 to lr over warmup_steps, then cosine decay
// to min_lr at total_steps (constant min_lr after).
#pragma once
#include <cstdint>

namespace condense {

struct LrSchedule {
  double lr;
  double min_lr;
  int64_t warmup_steps;
  int64_t total_steps;
  // Learning rate for the update that produces step `step + 1` (step counts from 0).
  double at(int64_t step) const;
};

}  // namespace condense
