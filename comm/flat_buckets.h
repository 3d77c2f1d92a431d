// Tensors grouped in order into flat fp32 buckets of at most cap_mb (a tensor larger than the cap
// gets one of its own), for exchanges that do not overlap backward (local-update training's
// pseudo-gradients, 1-bit Adam's momentum) and so need none of GradientSync's ordering.
#pragma once
#include <vector>

#include <ATen/core/Tensor.h>

#include "comm/codec.h"

namespace condense {

struct FlatBuckets {
  std::vector<BucketLayout> layouts;          // offsets and shapes of each bucket's tensors
  std::vector<std::vector<size_t>> members;   // indices into the tensor list, per bucket
};

// All tensors must be on one device (the buckets' device).
FlatBuckets group_into_buckets(const std::vector<at::Tensor>& tensors, double cap_mb);

}  // namespace condense
