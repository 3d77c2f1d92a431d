#include "model/huge_pages.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

namespace condense {

int64_t place_on_huge_pages(torch::nn::Module& module) {
  constexpr int64_t kHuge = int64_t{2} << 20;
  torch::NoGradGuard no_grad;
  int64_t moved = 0;
  for (at::Tensor& p : module.parameters()) {
    const int64_t bytes = static_cast<int64_t>(p.nbytes());
    if (!p.device().is_cpu() || !p.is_contiguous() || bytes < kHuge) continue;
    const int64_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* mem = std::aligned_alloc(static_cast<size_t>(kHuge), static_cast<size_t>(rounded));
    if (mem == nullptr) continue;  // keep the tensor where it is
    madvise(mem, static_cast<size_t>(rounded), MADV_HUGEPAGE);  // advice: failure is harmless
    std::memcpy(mem, p.data_ptr(), static_cast<size_t>(bytes));
    p.set_data(at::from_blob(mem, p.sizes(), [](void* q) { std::free(q); }, p.options()));
    moved += bytes;
  }
  return moved;
}

}  // namespace condense
