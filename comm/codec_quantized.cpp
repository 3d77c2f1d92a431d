// Quantizing codecs with one fp32 scale per block of `block` elements and bit-packed codes:
//   qsgd  (Alistarh et al., NeurIPS 2017): scale = ||v_block||_2; each |v_i| / scale * s is
//         rounded stochastically to one of its two neighbouring integer levels so that the
//         expectation is exact (unbiased); code = sign * level + s in [0, 2s], packed in the
//         smallest of 2, 4 or 8 bits that holds 2s + 1 values (s = 7: 4 bits per element).
//         Per-block scales keep the variance bounded (the paper's "bucketing", d = block).
//   sign  scaled sign (Karimireddy et al., ICML 2019, EF-SignSGD): scale = mean |v_block|,
//         code = [v_i >= 0], 1 bit per element; biased, meant for error feedback.
// Payloads are not summable (each rank has its own scales), so they travel by all-gather and
// every rank decodes them in rank order into the same mean. The per-element work and the
// payload format are in comm/codec_kernels.h (CPU loops and a tensor-op path for other devices).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "comm/codec_impl.h"
#include "comm/codec_kernels.h"
#include "comm/cuda_kernels_switch.h"
#include "comm/quantized_element.h"
#include "core/error.h"

#if CONDENSE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "comm/quantized_cuda_kernels.h"
#endif

namespace condense {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task

// The CPU loops (the CPU path, unchanged from before the tensor-op path existed).
void encode_cpu(const QuantizedFormat& f, const float* v, uint8_t* out, uint64_t seed) {
  const int64_t numel = f.numel, block = f.block, levels = f.levels;
  float* scales = reinterpret_cast<float*>(out);  // payload starts 4-byte aligned
  at::parallel_for(0, f.blocks, std::max<int64_t>(1, kGrain / block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t lo = b * block, hi = std::min(numel, lo + block);
      scales[b] = quantized::block_scale(quantized::block_sum(v, lo, hi, levels), levels, hi - lo);
    }
  });
  uint8_t* codes = out + 4 * f.blocks;
  const int epb = f.per_byte(), bits = f.bits;
  const int64_t s = levels;
  at::parallel_for(0, f.code_bytes, kGrain / epb, [&](int64_t y0, int64_t y1) {
    // The block of element i, advanced as i walks forward: a 64-bit division per element was
    // 12% of the encode's time on an AVX2 EPYC (the branches qsgd_code avoids, another 33%).
    int64_t b = y0 * epb / block, block_end = (b + 1) * block;
    float step = quantized::level_step(scales[b], s);
    const uint32_t key = quantized::uniform_key(seed);
    for (int64_t y = y0; y < y1; ++y) {
      uint8_t byte = 0;
      for (int j = 0; j < epb; ++j) {
        int64_t i = y * epb + j;
        if (i >= numel) break;
        if (i == block_end) {
          ++b;
          block_end += block;
          step = quantized::level_step(scales[b], s);
        }
        // The uniform is a function of (seed, i), so threads need no shared state.
        const uint32_t code = s == 0 ? quantized::sign_code(v[i])
                                     : quantized::qsgd_code(v[i], scales[b], step, s, quantized::uniform_at(key, i));
        byte |= static_cast<uint8_t>(code << (j * bits));
      }
      codes[y] = byte;
    }
  });
}

// out += decode(payload), parallel over blocks. Each block's values are a table of at most
// 2^bits entries (the same expression per code as element by element, so bitwise the same
// floats), and codes are walked by byte and shift: no division per element. Scales are read
// with memcpy: inside a gathered buffer a payload need not start 4-byte aligned.
void decode_add_cpu(const QuantizedFormat& f, const uint8_t* payload, float* out) {
  const uint8_t* codes = payload + 4 * f.blocks;
  const int epb = f.per_byte(), bits = f.bits;
  const uint32_t mask = (1u << bits) - 1;
  const int64_t s = f.levels, block = f.block, numel = f.numel;
  at::parallel_for(0, f.blocks, std::max<int64_t>(1, kGrain / block), [&](int64_t b0, int64_t b1) {
    float table[256];
    for (int64_t b = b0; b < b1; ++b) {
      float scale;
      std::memcpy(&scale, payload + 4 * b, 4);
      for (uint32_t c = 0; c <= mask; ++c)  // codes a valid payload never holds decode as before
        table[c] = quantized::decoded_value(c, scale, s);
      const int64_t lo = b * block, hi = std::min(numel, lo + block);
      const uint8_t* byte = codes + lo / epb;
      int shift = static_cast<int>(lo % epb) * bits;
      for (int64_t i = lo; i < hi; ++i) {
        out[i] += table[(*byte >> shift) & mask];
        shift += bits;
        if (shift == 8) {
          shift = 0;
          ++byte;
        }
      }
    }
  });
}

// [0, bits, 2 bits, ...]: the bit offset of each code within its byte, as uint8 on `device`.
at::Tensor code_shifts(const QuantizedFormat& f, at::Device device) {
  return at::arange(0, 8, f.bits, at::TensorOptions(device).dtype(at::kByte));
}

// The tensor-op path of encode (same steps as encode_cpu; see codec_kernels.h).
void encode_tensor_ops(const QuantizedFormat& f, const at::Tensor& v, uint64_t seed, at::Tensor& payload) {
  const int64_t n = f.numel, block = f.block, blocks = f.blocks, padded = blocks * block;
  const int64_t s = f.levels;
  // (blocks, block) with the last block padded by zeros (they add nothing to the scales and
  // their codes are dropped before packing).
  at::Tensor vb = (padded == n ? v : at::constant_pad_nd(v, {0, padded - n}, 0)).view({blocks, block});
  at::Tensor scales;
  // Each block's terms in double (float squares and |x| are exact there), summed in
  // quantized::block_sum's order: kCudaThreads strided partial sums (column t of the rows of
  // kCudaThreads elements, zero-padded: adding +0 to a sum of non-negative terms, inf or NaN
  // changes nothing), then pairwise. at::sum's order is its own, hence the explicit adds. A
  // block shorter than kCudaThreads has only zeros past its next power of two, which the first
  // tree steps would add: rows that wide instead (the same bits, less padding).
  at::Tensor terms = vb.to(at::kDouble);
  if (s) terms.mul_(terms); else terms.abs_();
  int64_t width = 1;
  while (width < std::min<int64_t>(block, quantized::kCudaThreads)) width *= 2;
  const int64_t rows = (block + width - 1) / width;
  if (rows * width != block) terms = at::constant_pad_nd(terms, {0, rows * width - block}, 0);
  terms = terms.view({blocks, rows, width});
  at::Tensor sum = terms.select(1, 0).clone(at::MemoryFormat::Contiguous);  // (blocks, width)
  for (int64_t r = 1; r < rows; ++r) sum.add_(terms.select(1, r));
  for (int64_t w = width / 2; w > 0; w /= 2) sum.narrow(1, 0, w).add_(sum.narrow(1, w, w));
  // Standard strides (a view of one block keeps its stride, which byte views refuse).
  sum = sum.select(1, 0).clone(at::MemoryFormat::Contiguous);
  if (s) {
    scales = sum.sqrt_().to(at::kFloat);
  } else {
    at::Tensor counts = at::full({blocks}, static_cast<double>(block), vb.options().dtype(at::kDouble));
    counts.narrow(0, blocks - 1, 1).fill_(static_cast<double>(n - (blocks - 1) * block));
    // Divided by a tensor: CUDA divides by a CPU scalar as a product with its reciprocal,
    // which is not the loop's correctly rounded division.
    scales = sum.div_(counts).to(at::kFloat);
  }
  at::Tensor codes;  // one code per element, (blocks, block)
  if (s == 0) {
    codes = vb.ge(0).to(at::kByte);
  } else {
    at::Tensor scale = scales.unsqueeze(1);
    // a = |v| * step, step = s / scale (a tensor divided by a tensor: correctly rounded on CUDA
    // too), 0 where scale is not > 0 (all-zero block, NaN); |v| / scale * s where the step
    // overflowed (a tiny positive scale), as quantized::qsgd_code.
    at::Tensor step = at::where(scale.gt(0), at::full_like(scale, static_cast<double>(s)).div_(scale), 0.0);
    at::Tensor absv = vb.abs();
    at::Tensor a = at::where(step.isfinite(), absv * step, absv / scale * static_cast<double>(s));
    at::Tensor level = a.floor();
    at::Tensor u = counter_uniform(seed, padded, v.device()).view({blocks, block});
    level.add_(u.lt(a.sub_(level)));  // round up with probability a - floor(a)
    level.clamp_max_(static_cast<double>(s)).nan_to_num_(0.0);  // at most s; NaN -> level 0 (code s)
    at::Tensor q = level.to(at::kInt);
    codes = at::where(vb.lt(0), q.neg(), q).add_(s).to(at::kByte);
  }
  // Pack per_byte codes into each byte: shift each to its bit offset and add (no two codes of a
  // byte share a bit, so the sum is their bitwise or).
  const int epb = f.per_byte();
  at::Tensor flat = codes.view({-1}).narrow(0, 0, n);
  const int64_t slots = f.code_bytes * epb;
  if (slots != n) flat = at::constant_pad_nd(flat, {0, slots - n}, 0);
  at::Tensor packed = at::sum(flat.view({f.code_bytes, epb}).bitwise_left_shift(code_shifts(f, v.device())),
                              {1}, /*keepdim=*/false, at::kByte);
  payload.narrow(0, 0, 4 * blocks).copy_(scales.view(at::kByte));
  payload.narrow(0, 4 * blocks, f.code_bytes).copy_(packed);
}

void decode_add_tensor_ops(const QuantizedFormat& f, const at::Tensor& payload, at::Tensor& out) {
  const int64_t n = f.numel, block = f.block, blocks = f.blocks;
  const int64_t s = f.levels;
  // clone(): a float view needs a 4-byte aligned start, which a slice of a gathered buffer may
  // not have.
  at::Tensor scales = payload.narrow(0, 0, 4 * blocks).clone().view(at::kFloat);
  const uint8_t mask = static_cast<uint8_t>((1u << f.bits) - 1);
  at::Tensor codes = payload.narrow(0, 4 * blocks, f.code_bytes)
                         .unsqueeze(1)
                         .bitwise_right_shift(code_shifts(f, payload.device()))
                         .bitwise_and_(mask)
                         .view({-1})
                         .narrow(0, 0, n);
  at::Tensor scale = scales.unsqueeze(1).expand({blocks, block}).reshape({-1}).narrow(0, 0, n);
  at::Tensor value;
  if (s == 0) {
    value = at::where(codes.ne(0), scale, scale.neg());
  } else {
    // ((code - s) * scale) / s; the divisor is a tensor on the device (see encode_tensor_ops).
    at::Tensor divisor = at::scalar_tensor(static_cast<double>(s), out.options());
    value = codes.to(at::kFloat).sub_(s).mul_(scale).div_(divisor);
  }
  out.add_(value);
}

class QuantizedCodec : public Codec {
 public:
  // levels == 0 means sign.
  QuantizedCodec(int64_t numel, int64_t levels, int64_t block) : format_(numel, levels, block) {}
  std::string name() const override { return format_.levels ? "qsgd" : "sign"; }
  int64_t payload_bytes() const override { return format_.payload_bytes(); }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    const int world = ctx.comm.size();
    const bool ops = use_tensor_ops(v, ctx);
    const int64_t bytes = payload_bytes();
    at::Tensor payload = at::empty({bytes}, v.options().dtype(at::kByte));
    {
      ScopedSeconds t(ctx.stats.compress_s);
      quantized_encode(format_, v, ctx.rank_seed, payload, ops);
      if (local) {
        local->zero_();
        quantized_decode_add(format_, payload, *local, ops);
      }
    }
    at::Tensor all = at::empty({world * bytes}, payload.options());
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_();
    for (int r = 0; r < world; ++r)  // rank order; each element's sum is sequential in r
      quantized_decode_add(format_, all.narrow(0, r * bytes, bytes), mean, ops);
    div_exact_(mean, world);
    ctx.stats.add_all_gather(bytes, world);
  }

 private:
  QuantizedFormat format_;
};

}  // namespace

QuantizedFormat::QuantizedFormat(int64_t numel_, int64_t levels_, int64_t block_)
    : numel(numel_), levels(levels_), block(block_) {
  CONDENSE_CHECK(block > 0, "compression block must be > 0, got {}", block);
  if (levels == 0) {
    bits = 1;
  } else {
    CONDENSE_CHECK(levels >= 1 && levels <= 127, "qsgd levels must be in [1, 127], got {}", levels);
    int64_t codes = 2 * levels + 1;
    bits = codes <= 4 ? 2 : codes <= 16 ? 4 : 8;
  }
  blocks = (numel + block - 1) / block;
  code_bytes = (numel * bits + 7) / 8;
}

// A contiguous fp32 vector of f.numel elements and a uint8 payload of f.payload_bytes() on its
// device, as encode and decode exchange them.
static void check_io(const QuantizedFormat& f, const at::Tensor& x, const at::Tensor& payload,
              const char* who) {
  CONDENSE_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() == f.numel &&
                     payload.scalar_type() == at::kByte && payload.is_contiguous() &&
                     payload.numel() == f.payload_bytes() && payload.device() == x.device(),
                 "{}: expected a contiguous fp32 vector of {} elements and a uint8 payload of {} "
                 "bytes on its device", who, f.numel, f.payload_bytes());
}

// The CUDA kernels (comm/quantized_cuda_kernels.h) take a CUDA vector's encode and decode when
// they are enabled (comm/cuda_kernels_switch.h) and the format's blocks start on byte
// boundaries; tensor ops otherwise.
static bool use_cuda_kernels(const QuantizedFormat& f, const at::Tensor& t) {
  return t.is_cuda() && quantized::groups_fit(f.block, f.bits) &&
         f.blocks <= std::numeric_limits<int32_t>::max() && cuda_kernels_enabled();
}

void quantized_encode(const QuantizedFormat& f, const at::Tensor& v, uint64_t seed,
                      at::Tensor& payload, bool tensor_ops) {
  check_io(f, v, payload, "quantized_encode");
  if (f.numel == 0) return;
#if CONDENSE_WITH_CUDA_KERNELS
  // The kernel stores the scales as floats: the payload must start 4-byte aligned (at::empty's do).
  if (use_cuda_kernels(f, v) && reinterpret_cast<uintptr_t>(payload.data_ptr()) % 4 == 0) {
    c10::cuda::CUDAGuard guard(v.device());
    void* stream = at::cuda::getCurrentCUDAStream(v.device().index()).stream();
    return check_cuda_launch(quantized::cuda_encode(v.data_ptr<float>(), f.numel, f.block, f.levels, f.bits,
                                                    seed, payload.data_ptr<uint8_t>(), stream),
                             "quantized_encode");
  }
#endif
  // The CPU loops read host memory: other devices take tensor ops (a CUDA vector gets here
  // with the kernels off, or with a payload the kernel cannot store floats into).
  if (tensor_ops || !v.is_cpu()) return encode_tensor_ops(f, v, seed, payload);
  encode_cpu(f, v.data_ptr<float>(), payload.data_ptr<uint8_t>(), seed);
}

void quantized_decode_add(const QuantizedFormat& f, const at::Tensor& payload, at::Tensor& out,
                          bool tensor_ops) {
  check_io(f, out, payload, "quantized_decode_add");
  if (f.numel == 0) return;
#if CONDENSE_WITH_CUDA_KERNELS
  if (use_cuda_kernels(f, out)) {
    c10::cuda::CUDAGuard guard(out.device());
    void* stream = at::cuda::getCurrentCUDAStream(out.device().index()).stream();
    return check_cuda_launch(quantized::cuda_decode_add(payload.data_ptr<uint8_t>(), f.numel, f.block, f.levels,
                                                        f.bits, out.data_ptr<float>(), stream),
                             "quantized_decode_add");
  }
#endif
  if (tensor_ops || !out.is_cpu()) return decode_add_tensor_ops(f, payload, out);
  decode_add_cpu(f, payload.data_ptr<uint8_t>(), out.data_ptr<float>());
}

at::Tensor counter_uniform(uint64_t seed, int64_t n, at::Device device) {
  // quantized::uniform_at in int64 tensors holding 32-bit words: every product stays inside
  // int64 (the second multiplier taken as its negative residue mod 2^32), and a mask keeps the
  // low 32 bits.
  constexpr int64_t kLow32 = 0xffffffffll;
  auto mul32 = [&](at::Tensor& z, uint32_t c) {
    const int64_t m = c < 0x80000000u ? static_cast<int64_t>(c) : static_cast<int64_t>(c) - (int64_t{1} << 32);
    z.mul_(m).bitwise_and_(kLow32);
  };
  at::Tensor z = at::arange(1, n + 1, at::TensorOptions(device).dtype(at::kLong));
  mul32(z, 0x9E3779B9u);
  z.bitwise_xor_(static_cast<int64_t>(quantized::uniform_key(seed)));
  z.bitwise_xor_(z.bitwise_right_shift(16));
  mul32(z, 0x7feb352du);
  z.bitwise_xor_(z.bitwise_right_shift(15));
  mul32(z, 0x846ca68bu);
  z.bitwise_xor_(z.bitwise_right_shift(16));
  // The top 24 bits, exactly representable in fp32, times 2^-24 (exact).
  return z.bitwise_right_shift(8).to(at::kFloat).mul_(1.0 / 16777216.0);
}

std::unique_ptr<Codec> make_qsgd_codec(int64_t numel, int64_t levels, int64_t block) {
  CONDENSE_CHECK(levels >= 1, "qsgd levels must be >= 1, got {}", levels);
  return std::make_unique<QuantizedCodec>(numel, levels, block);
}

std::unique_ptr<Codec> make_sign_codec(int64_t numel, int64_t block) {
  return std::make_unique<QuantizedCodec>(numel, 0, block);
}

}  // namespace condense
