#include "comm/flat_buckets.h"

#include "core/error.h"

namespace condense {

FlatBuckets group_into_buckets(const std::vector<at::Tensor>& tensors, double cap_mb) {
  FlatBuckets out;
  if (tensors.empty()) return out;
  const at::Device device = tensors.front().device();
  const auto cap = static_cast<int64_t>(cap_mb * 1e6 / 4);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    CONDENSE_CHECK(t.device() == device, "group_into_buckets: tensors on {} and {}", device.str(),
                   t.device().str());
    if (out.layouts.empty() || (out.layouts.back().numel > 0 && out.layouts.back().numel + t.numel() > cap)) {
      out.layouts.push_back(BucketLayout{{}, {}, 0, device});
      out.members.emplace_back();
    }
    BucketLayout& layout = out.layouts.back();
    out.members.back().push_back(i);
    layout.offsets.push_back(layout.numel);
    layout.shapes.push_back(t.sizes().vec());
    layout.numel += t.numel();
  }
  return out;
}

}  // namespace condense
