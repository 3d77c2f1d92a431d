// A counting CPU allocator: wraps LibTorch's CPU allocator (c10::SetCPUAllocator) and keeps the
// exact number of live bytes and the peak since the last reset. Process RSS over-reports tensor
// memory by about a quarter (allocator caching, fragmentation); this counts what tensors hold.
//
// Contract: install_counting_cpu_allocator() is idempotent and should run before the tensors
// to be measured are allocated; memory allocated before it was installed is freed through its
// original deleter and never counted. Counters are atomic; any thread may allocate.
#pragma once
#include <cstdint>

namespace condense {

struct CpuMemoryCounters {
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;     // highest live_bytes since the last reset
  int64_t allocations = 0;    // allocations since install
};

void install_counting_cpu_allocator();
bool counting_cpu_allocator_installed();
CpuMemoryCounters cpu_memory_counters();
// Sets the peak to the current live bytes.
void reset_cpu_peak();

}  // namespace condense
