// Model weights on transparent huge pages, for memory-bound inference on CPU.
//
// Decoding one token reads every weight once (model/fast_decoder.h), so it runs at the rate one
// core streams memory. With 4 KiB pages each matrix row block touches several pages and the TLB
// misses on most of them; with 2 MiB pages it does not. Measured on this project's 2-core
// machine, one thread, a 49152 x 576 matrix-vector product: 12.2 GB/s on 4 KiB pages, 14.9 GB/s
// on huge pages (+22%). Linux gives anonymous memory huge pages when it is madvise(MADV_HUGEPAGE)d
// before it is touched (/sys/kernel/mm/transparent_hugepage/enabled: "madvise" or "always";
// with "never" the advice does nothing and the move is harmless).
#pragma once
#include <cstdint>

#include <torch/nn/module.h>

namespace condense {

// Moves every contiguous CPU parameter of at least 2 MiB into new 2 MiB-aligned memory advised
// for huge pages (same values, same tensors: Tensor::set_data, so every holder of a parameter
// sees the new storage; the old storage is freed tensor by tensor, so the peak grows by one
// tensor). For inference: an optimizer's state would keep pointing at the parameters (fine),
// but views taken of a parameter's old storage before the move would not follow it.
// Returns the bytes moved.
int64_t place_on_huge_pages(torch::nn::Module& module);

}  // namespace condense
