// The per-element work of the quantizing codecs (qsgd, sign; comm/codec_quantized.cpp) as free
// functions, for the codec itself, tests and bench/codec_device_bench.cpp. Each has three
// implementations that give the same bytes (the per-element arithmetic of the loops and the
// kernels is one definition, comm/quantized_element.h):
//  - CPU loops (tensor_ops = false): contiguous CPU tensors; the path for CPU buckets (a
//    tensor on another device takes tensor ops whatever tensor_ops says);
//  - CUDA kernels (comm/quantized_cuda_kernels.h): CUDA tensors, whatever tensor_ops says, when
//    they are enabled (comm/cuda_kernels_switch.h) and blocks start on byte boundaries
//    (block % (8 / bits) == 0);
//  - ATen tensor ops (tensor_ops = true): any device; the path for other CUDA buckets, and on
//    CPU what tests compare with the loops (CI has no GPU).
// Top-K's selection in tensor ops is topk_abs_indices_tensor_ops (comm/topk_select.h).
//
// Payload format (both paths): `blocks` fp32 scales (native byte order), then the codes, packed
// `8 / bits` to a byte with element i of a byte at bit (i % per_byte) * bits; unused high bits
// of the last byte are zero.
//   qsgd (levels s >= 1): scale = ||v_block||_2 (summed in double in one order on every path,
//        quantized::block_sum, rounded to float);
//        step = s / scale (float; 0 if scale is not > 0), a = |v_i| * step (float; if the
//        step overflowed, a = |v_i| / scale * s),
//        level = floor(a) + [u_i < a - floor(a)], at most s,
//        code = sign(v_i) * level + s; decoded as (code - s) * scale / s.
//   sign (levels 0): scale = mean |v_block| (summed as qsgd's, divided, rounded to float);
//        code = [v_i >= 0]; decoded as code ? scale : -scale.
// u_i is counter_uniform(seed, n)[i], a function of (seed, i) only, so the draws are the same
// on every device and thread count.
// The one way the paths can differ: a block's scale is a double sum rounded to float, and the
// loops add sequentially while tensor ops and the kernels (pairwise over 64 strided partial sums,
// comm/quantized_element.h) add in other orders. The double sums then differ
// by a few units in their last place at most, so the float scales differ only when the exact
// value lies that close (relative 2^-53 times a small factor) to a float rounding boundary,
// which float's 2^-24 spacing makes a chance of the order of 2^-25 per qsgd block. For sign the
// double sum is exact, hence independent of the order, unless a block's magnitudes span more
// than 2^20. Every other step is one correctly rounded IEEE operation, in the same order.
#pragma once
#include <cstdint>

#include <ATen/core/Tensor.h>

namespace condense {

struct QuantizedFormat {
  // levels 0 means sign; else qsgd with s = levels in [1, 127]. Checks its arguments.
  QuantizedFormat(int64_t numel, int64_t levels, int64_t block);
  int64_t numel, levels, block;
  int bits = 1;                         // per code: 1 (sign), 2, 4 or 8 (qsgd, for 2s + 1 codes)
  int64_t blocks = 0, code_bytes = 0;   // ceil(numel / block), ceil(numel * bits / 8)
  int per_byte() const { return 8 / bits; }
  int64_t payload_bytes() const { return 4 * blocks + code_bytes; }
};

// payload (uint8, payload_bytes(), on v's device) = encode(v); v: fp32, contiguous, numel.
// `seed` drives qsgd's stochastic rounding (unused by sign).
void quantized_encode(const QuantizedFormat& f, const at::Tensor& v, uint64_t seed,
                      at::Tensor& payload, bool tensor_ops);
// out += decode(payload), elementwise (one correctly rounded add per element, so decoding the
// ranks' payloads in rank order gives the same sums on every device). payload: uint8,
// payload_bytes() elements, at any byte offset (e.g. a slice of a gathered buffer).
void quantized_decode_add(const QuantizedFormat& f, const at::Tensor& payload, at::Tensor& out,
                          bool tensor_ops);

// u_i = quantized::uniform_at(uniform_key(seed), i) (comm/quantized_element.h: a 32-bit hash of
// i keyed by the seed, top 24 bits times 2^-24) for i in [0, n), fp32 in [0, 1), computed with
// int64 tensor ops on `device` that never overflow, on CPU and CUDA alike.
at::Tensor counter_uniform(uint64_t seed, int64_t n, at::Device device);

}  // namespace condense
