// Compressed saved activations (see compressed_activations.h). The stored form keeps the
// original sizes, strides and dtype; tensors are compressed in their dense storage order
// (non-overlapping dense tensors) so unpack restores the same layout without a permute.
#include "memory/compressed_activations.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

struct Compressed {
  at::Tensor data;         // bf16 values, or int8 codes
  at::Tensor scales;       // int8 only
  int64_t numel = 0;
  at::ScalarType dtype;
  std::vector<int64_t> sizes, strides;
  bool dense_layout = false;  // stored in storage order with `strides`; else contiguous
};

// The elements of a non-overlapping dense tensor in memory order, as a flat view.
at::Tensor storage_order(const at::Tensor& t, bool& dense) {
  dense = t.is_non_overlapping_and_dense();
  if (!dense) return t.contiguous().view(-1);
  return at::as_strided(t, {t.numel()}, {1}, t.storage_offset());
}

at::Tensor restore_layout(const at::Tensor& flat, const Compressed& c) {
  if (!c.dense_layout) return flat.view(c.sizes);
  at::Tensor out = at::empty_strided(c.sizes, c.strides, flat.options());
  at::as_strided(out, {c.numel}, {1}, 0).copy_(flat);
  return out;
}

}  // namespace

ActivationFormat activation_format_from_name(const std::string& name) {
  if (name == "fp32") return ActivationFormat::kFp32;
  if (name == "bf16") return ActivationFormat::kBf16;
  if (name == "int8") return ActivationFormat::kInt8;
  fail("unknown activation format '{}'; valid: fp32, bf16, int8", name);
}

Int8Blocks quantize_int8(const at::Tensor& t, int64_t block) {
  CONDENSE_CHECK(block > 0, "int8 block must be positive, got {}", block);
  at::Tensor flat = t.reshape(-1).to(at::kFloat);
  int64_t n = flat.numel();
  int64_t blocks = (n + block - 1) / block;
  if (blocks * block != n) flat = at::constant_pad_nd(flat, {0, blocks * block - n}, 0);
  at::Tensor x = flat.view({blocks, block});
  at::Tensor scales = x.abs().amax(1, /*keepdim=*/true).div_(127.0).clamp_min_(1e-30);
  at::Tensor q = x.div(scales).round_().clamp_(-127, 127).to(at::kChar);
  return {q.view(-1), scales.view(-1), n};
}

at::Tensor dequantize_int8(const Int8Blocks& q, at::ScalarType dtype) {
  int64_t blocks = q.scales.numel();
  at::Tensor x = q.q.view({blocks, -1}).to(at::kFloat).mul_(q.scales.view({blocks, 1}));
  return x.view(-1).narrow(0, 0, q.numel).to(dtype);
}

CompressedActivationHooks::CompressedActivationHooks(ActivationFormat format, KeepRule rule,
                                                     int64_t int8_block)
    : format_(format), rule_(std::move(rule)), block_(int8_block) {}

std::any CompressedActivationHooks::pack(const at::Tensor& t) {
  bool compressible = format_ != ActivationFormat::kFp32 && t.defined() &&
                      at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kBFloat16 &&
                      !rule_.keep(t);
  if (!compressible) return t.detach();
  auto c = std::make_shared<Compressed>();
  c->numel = t.numel();
  c->dtype = t.scalar_type();
  c->sizes = t.sizes().vec();
  c->strides = t.strides().vec();
  at::Tensor flat = storage_order(t.detach(), c->dense_layout);
  if (format_ == ActivationFormat::kBf16) {
    c->data = flat.to(at::kBFloat16);
  } else {
    Int8Blocks q = quantize_int8(flat, block_);
    c->data = q.q;
    c->scales = q.scales;
  }
  return c;
}

at::Tensor CompressedActivationHooks::unpack(const std::any& packed) {
  if (const auto* t = std::any_cast<at::Tensor>(&packed)) return *t;
  const auto& c = *std::any_cast<const std::shared_ptr<Compressed>&>(packed);
  at::Tensor flat = format_ == ActivationFormat::kBf16
                        ? c.data.to(c.dtype)
                        : dequantize_int8(Int8Blocks{c.data, c.scales, c.numel}, c.dtype);
  return restore_layout(flat, c);
}

}  // namespace condense
