// MemoryMeter (see memory_meter.h). The CUDA branch compiles against the CUDA LibTorch on every
// machine and only runs where a GPU is.
#include "memory/memory_meter.h"

#include <c10/cuda/CUDACachingAllocator.h>

#include "core/error.h"
#include "memory/counting_allocator.h"

namespace condense {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr size_t kAllPools = 0;  // StatType::AGGREGATE

c10::CachingDeviceAllocator::DeviceStats cuda_stats(c10::DeviceIndex d) {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(d);
}

}  // namespace

MemoryMeter::MemoryMeter(c10::Device device) : device_(device) {
  CONDENSE_CHECK(device.is_cpu() || device.is_cuda(), "the memory meter measures CPU or CUDA, not {}",
                 device.str());
  if (device_.is_cpu()) install_counting_cpu_allocator();
  if (device_.is_cuda() && !device_.has_index()) device_.set_index(0);
}

double MemoryMeter::live_mb() const {
  if (device_.is_cpu()) return cpu_memory_counters().live_bytes / kMiB;
  return cuda_stats(device_.index()).allocated_bytes[kAllPools].current / kMiB;
}

double MemoryMeter::peak_mb() const {
  if (device_.is_cpu()) return cpu_memory_counters().peak_bytes / kMiB;
  return cuda_stats(device_.index()).allocated_bytes[kAllPools].peak / kMiB;
}

void MemoryMeter::reset_peak() {
  if (device_.is_cpu()) {
    reset_cpu_peak();
  } else {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
  }
}

void MemoryMeter::begin(const std::string& phase) {
  end();
  reset_peak();
  current_ = phase;
  PhaseMemory& p = phases_[phase];
  p.start_mb = live_mb();
  p.peak_mb = p.start_mb;
}

void MemoryMeter::end() {
  if (current_.empty()) return;
  PhaseMemory& p = phases_[current_];
  p.peak_mb = peak_mb();
  p.end_mb = live_mb();
  current_.clear();
}

std::map<std::string, double> MemoryMeter::metrics() const {
  std::map<std::string, double> m;
  for (const auto& [name, p] : phases_) m["mem_" + name + "_peak_mb"] = p.peak_mb;
  m["mem_live_mb"] = live_mb();
  return m;
}

}  // namespace condense
