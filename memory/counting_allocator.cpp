// Counting CPU allocator (see counting_allocator.h). Each allocation asks the previously
// installed allocator for kHeader extra bytes and returns the address just past a header that
// records the inner allocation (its context and deleter) and the size. The returned DataPtr's
// context is its data pointer and the deleter is a plain function, so raw_allocate() and
// raw_deleter() work as with LibTorch's default allocator, and the 64-byte alignment is kept.
#include "memory/counting_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <mutex>

#include "core/error.h"

namespace condense {
namespace {

std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_count{0};
std::atomic<bool> g_installed{false};

constexpr size_t kHeader = 64;  // keeps the 64-byte alignment of the inner allocation

struct Header {
  void* inner_context;
  c10::DeleterFnPtr inner_deleter;
  int64_t bytes;
};
static_assert(sizeof(Header) <= kHeader, "header must fit");

void release(void* data) {
  if (!data) return;
  auto* h = reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader);
  g_live.fetch_sub(h->bytes, std::memory_order_relaxed);
  h->inner_deleter(h->inner_context);
}

void raise_peak(int64_t live) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (live > peak && !g_peak.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
  }
}

class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = inner_->allocate(n + kHeader);
    CONDENSE_CHECK(inner.get() != nullptr, "CPU allocation of {} bytes failed", n);
    c10::Device device = inner.device();
    char* base = static_cast<char*>(inner.get());
    auto* h = reinterpret_cast<Header*>(base);
    h->bytes = static_cast<int64_t>(n);
    h->inner_deleter = inner.get_deleter();
    h->inner_context = inner.release_context();  // freed by release() through inner_deleter
    int64_t live = g_live.fetch_add(h->bytes, std::memory_order_relaxed) + h->bytes;
    g_count.fetch_add(1, std::memory_order_relaxed);
    raise_peak(live);
    void* data = base + kHeader;
    return {data, data, &release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  c10::Allocator* inner_;
};

}  // namespace

void install_counting_cpu_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors freed during static destruction still call into it.
    static auto* allocator = new CountingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(allocator, /*priority=*/100);
    g_installed = true;
  });
}

bool counting_cpu_allocator_installed() { return g_installed.load(); }

CpuMemoryCounters cpu_memory_counters() {
  return {g_live.load(), g_peak.load(), g_count.load()};
}

void reset_cpu_peak() { g_peak.store(g_live.load()); }

}  // namespace condense
