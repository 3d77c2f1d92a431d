// MemoryMeter: live and peak tensor bytes per training phase (forward, backward, optimizer),
// exact rather than RSS-based. On CPU it reads the counting allocator (counting_allocator.h);
// on CUDA the caching allocator's device statistics (allocated_bytes, all pools), whose peak is
// reset at the start of each phase.
//
// Contract: not thread-safe (the training loop drives it); begin() ends the previous phase.
#pragma once
#include <map>
#include <string>

#include <c10/core/Device.h>

namespace condense {

struct PhaseMemory {
  double start_mb = 0;  // live bytes when the phase began
  double peak_mb = 0;   // highest live bytes during the phase
  double end_mb = 0;    // live bytes when it ended
};

class MemoryMeter {
 public:
  // CPU: installs the counting allocator. CUDA: uses the device's caching-allocator stats.
  explicit MemoryMeter(c10::Device device = c10::Device(c10::kCPU));
  void begin(const std::string& phase);
  void end();  // ends the current phase, if any
  const std::map<std::string, PhaseMemory>& phases() const { return phases_; }
  // "mem_<phase>_peak_mb" and "mem_live_mb", for metrics.
  std::map<std::string, double> metrics() const;
  double live_mb() const;

 private:
  double peak_mb() const;
  void reset_peak();

  c10::Device device_;
  std::string current_;
  std::map<std::string, PhaseMemory> phases_;
};

}  // namespace condense
