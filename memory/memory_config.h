// MemoryConfig: the `memory:` section of a recipe. How activations are kept between forward and
// backward (recomputation, offload, compression), which loss is used (full logits or chunked),
// WTA-CRS sampled linears and the memory meter. Parsed strictly in recipes/recipe_parser.cpp;
// the policy that executes it is memory/memory_policy.h.
#pragma once
#include <cstdint>
#include <string>

namespace condense {

struct MemoryConfig {
  std::string recompute = "none";   // none | full | every_k | selective | attention | budget
  int64_t recompute_every = 2;      // every_k: recompute layers 0, k, 2k, ...
  double budget_mb = 0;             // budget: activation bytes of the decoder layers to fit
  std::string offload = "none";     // none | host (CUDA -> pinned host) | disk (spill files)
  std::string offload_dir;          // disk: spill directory; empty: the system temp directory
  int64_t offload_min_bytes = 65536;  // smaller saved tensors stay where they are
  std::string activations = "fp32";   // fp32 | bf16 | int8 (blockwise absmax) saved tensors
  int64_t int8_block = 256;           // int8: elements per scale
  std::string loss = "full";        // full | chunked (never builds [tokens x vocab] logits)
  int64_t loss_chunk = 1024;        // chunked: tokens per tile
  int64_t loss_vocab_chunk = 8192;  // chunked: vocabulary entries per tile
  double loss_filter_eps = 0;       // chunked: skip backward tiles whose softmax max is below it
  bool wta_crs = false;             // sampled weight gradients in the MLP projections
  double wta_crs_ratio = 0.3;       // fraction of token rows kept for weight gradients
  bool meter = true;                // counting allocator; per-phase peak bytes in metrics
};

}  // namespace condense
