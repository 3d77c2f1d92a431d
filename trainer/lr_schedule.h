// Learning-rate schedule: linear warm-up to lr over warmup_steps, then cosine decay toward
// min_lr (constant min_lr after total_steps). Update s (0-based) uses
//   s < W:  lr (s + 1) / W                      (the first update uses lr / W, not 0)
//   s >= W: min_lr + (lr - min_lr) (1 + cos(pi min(1, (s - W) / (T - W)))) / 2
// which is transformers' get_cosine_schedule_with_warmup (with a floor) except that its warm-up
// starts at 0: so the peak lr is used twice (updates W - 1 and W), and the last update (T - 1)
// is one decay step above min_lr, as in transformers (negligible for hundreds of steps:
// +9e-8 for the quickstart; 5.6e-4 vs 3e-4 for 10 steps with 5 of warm-up).
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
