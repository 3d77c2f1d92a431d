#include "comm/codec.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "comm/codec_impl.h"
#include "core/error.h"

namespace condense {

void ExchangeStats::add_all_reduce(int64_t bytes, int world) {
  payload_bytes += bytes;
  wire_bytes += world > 1 ? 2 * (world - 1) * bytes / world : 0;
}

void ExchangeStats::add_all_gather(int64_t bytes, int world) {
  payload_bytes += bytes;
  wire_bytes += (world - 1) * bytes;
}

void ExchangeStats::add_all_to_all(int64_t bytes, int world) {
  payload_bytes += world * bytes;
  wire_bytes += (world - 1) * bytes;
}

void Codec::plan(ExchangeStats& s, int world) const {
  if (summable()) s.add_all_reduce(payload_bytes(), world);
  else s.add_all_gather(payload_bytes(), world);
}

void ExchangeStats::add_dense_reference(int64_t bytes, int world) {
  dense_wire_bytes += world > 1 ? 2 * (world - 1) * bytes / world : 0;
}

const std::vector<std::string>& codec_names() {
  static const std::vector<std::string> names = {"none", "fp16", "bf16", "topk",
                                                 "randk", "qsgd", "sign", "powersgd",
                                                 "int8", "sparseloco"};
  return names;
}

std::string unread_compression_key(const CompressionConfig& c) {
  const CompressionConfig d;
  struct Use {
    const char* key;
    bool set;                        // away from the default
    bool by_error_control;           // else the codec selects
    std::vector<std::string> readers;
  };
  const Use uses[] = {
      {"ratio", c.ratio != d.ratio, false, {"topk", "randk", "sparseloco"}},
      {"k", c.k != d.k, false, {"topk", "randk", "sparseloco"}},
      {"levels", c.levels != d.levels, false, {"qsgd"}},
      {"block", c.block != d.block, false, {"qsgd", "sign"}},
      {"rank", c.rank != d.rank, false, {"powersgd"}},
      {"bits", c.bits != d.bits, false, {"sparseloco"}},
      {"chunk", c.chunk != d.chunk, false, {"sparseloco"}},
      {"eta", c.eta != d.eta, true, {"econtrol"}},
      {"decay", c.decay != d.decay, true, {"ef"}}};
  for (const Use& u : uses) {
    const std::string& chosen = u.by_error_control ? c.error_control : c.codec;
    if (!u.set || std::find(u.readers.begin(), u.readers.end(), chosen) != u.readers.end()) continue;
    std::string readers;
    for (const auto& r : u.readers) readers += (readers.empty() ? "" : ", ") + r;
    return fmt::format("comm.compression.{} is set, but it applies to comm.compression.{} {} and "
                       "this recipe has '{}', which ignores it: remove the key or choose a {} that "
                       "reads it (nothing was changed)", u.key,
                       u.by_error_control ? "error_control" : "codec", readers, chosen,
                       u.by_error_control ? "error control" : "codec");
  }
  return "";
}

int64_t kept_elements(const CompressionConfig& c, int64_t numel) {
  int64_t k = c.k > 0 ? c.k : static_cast<int64_t>(std::llround(c.ratio * static_cast<double>(numel)));
  return std::clamp<int64_t>(k, 1, std::max<int64_t>(numel, 1));
}

std::vector<TensorSegment> tensor_segments(const BucketLayout& layout) {
  std::vector<TensorSegment> out;
  for (size_t i = 0; i < layout.offsets.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : layout.shapes[i]) n *= d;
    if (n > 0) out.push_back({layout.offsets[i], n, layout.shapes[i]});
  }
  if (out.empty() && layout.numel > 0) out.push_back({0, layout.numel, {layout.numel}});
  return out;
}

at::Tensor& div_exact_(at::Tensor& t, int64_t n) {
  return t.div_(at::scalar_tensor(static_cast<double>(n), t.options()));
}

at::Tensor div_exact(const at::Tensor& t, int64_t n) {
  return t.div(at::scalar_tensor(static_cast<double>(n), t.options()));
}

std::unique_ptr<Codec> make_codec(const CompressionConfig& c, const BucketLayout& layout,
                                  int world, bool error_control) {
  const std::string& n = c.codec;
  if (n == "none" || n == "fp16" || n == "bf16") return make_dense_codec(n, layout.numel, world);
  if (n == "topk") return make_topk_codec(c, layout, world);
  if (n == "randk") return make_randk_codec(layout.numel, kept_elements(c, layout.numel), !error_control);
  if (c.collective == "compressed_all_reduce" && (n == "sign" || n == "qsgd"))
    return make_compressed_all_reduce_codec(c, layout, world);
  if (n == "qsgd") return make_qsgd_codec(layout.numel, c.levels, c.block);
  if (n == "sign") return make_sign_codec(layout.numel, c.block);
  if (n == "powersgd") return make_powersgd_codec(layout, c.rank, static_cast<uint64_t>(c.seed));
  if (n == "int8") return make_int8_codec(layout, world);
  if (n == "sparseloco") return make_sparseloco_codec(c, layout, world);
  std::string valid;
  for (const auto& v : codec_names()) valid += (valid.empty() ? "" : ", ") + v;
  fail("unknown compression codec '{}'; valid: {}", n, valid);
}

}  // namespace condense
