// Quantizing codecs with one fp32 scale per block of `block` elements and bit-packed codes:
//   qsgd  (Alistarh et al., NeurIPS 2017): scale = ||v_block||_2; each |v_i| / scale * s is
//         rounded stochastically to one of its two neighbouring integer levels so that the
//         expectation is exact (unbiased); code = sign * level + s in [0, 2s], packed in the
//         smallest of 2, 4 or 8 bits that holds 2s + 1 values (s = 7: 4 bits per element).
//         Per-block scales keep the variance bounded (the paper's "bucketing", d = block).
//   sign  scaled sign (Karimireddy et al., ICML 2019, EF-SignSGD): scale = mean |v_block|,
//         code = [v_i >= 0], 1 bit per element; biased, meant for error feedback.
// Payloads are not summable (each rank has its own scales), so they travel by all-gather and
// every rank decodes them in rank order into the same mean.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>

#include "comm/codec_impl.h"
#include "core/error.h"
#include "core/random.h"

namespace condense {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task

class QuantizedCodec : public Codec {
 public:
  // levels == 0 means sign.
  QuantizedCodec(int64_t numel, int64_t levels, int64_t block)
      : numel_(numel), levels_(levels), block_(block) {
    CONDENSE_CHECK(block > 0, "compression block must be > 0, got {}", block);
    if (levels == 0) {
      bits_ = 1;
    } else {
      CONDENSE_CHECK(levels >= 1 && levels <= 127, "qsgd levels must be in [1, 127], got {}", levels);
      int64_t codes = 2 * levels + 1;
      bits_ = codes <= 4 ? 2 : codes <= 16 ? 4 : 8;
    }
    blocks_ = (numel + block - 1) / block;
    code_bytes_ = (numel * bits_ + 7) / 8;
  }
  std::string name() const override { return levels_ ? "qsgd" : "sign"; }
  int64_t payload_bytes() const override { return 4 * blocks_ + code_bytes_; }
  bool summable() const override { return false; }

  void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                ExchangeContext& ctx) override {
    const int world = ctx.comm.size();
    at::Tensor payload = at::empty({payload_bytes()}, at::kByte);
    {
      ScopedSeconds t(ctx.stats.compress_s);
      encode(v.data_ptr<float>(), payload.data_ptr<uint8_t>(), ctx.rank_seed);
      if (local) {
        local->zero_();
        decode_add(payload.data_ptr<uint8_t>(), local->data_ptr<float>());
      }
    }
    at::Tensor all = at::empty({world * payload_bytes()}, at::kByte);
    {
      ScopedSeconds t(ctx.stats.exchange_s);
      ctx.comm.all_gather(payload, all);
    }
    ScopedSeconds t(ctx.stats.decompress_s);
    mean.zero_();
    const uint8_t* base = all.data_ptr<uint8_t>();
    for (int r = 0; r < world; ++r)  // rank order; each element's sum is sequential in r
      decode_add(base + r * payload_bytes(), mean.data_ptr<float>());
    mean.div_(world);
    ctx.stats.add_all_gather(payload_bytes(), world);
  }

 private:
  int per_byte() const { return 8 / bits_; }

  void encode(const float* v, uint8_t* out, uint64_t seed) const {
    float* scales = reinterpret_cast<float*>(out);  // payload starts 4-byte aligned
    at::parallel_for(0, blocks_, std::max<int64_t>(1, kGrain / block_), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t lo = b * block_, hi = std::min(numel_, lo + block_);
        double acc = 0;
        for (int64_t i = lo; i < hi; ++i) acc += levels_ ? double(v[i]) * v[i] : std::fabs(v[i]);
        scales[b] = levels_ ? static_cast<float>(std::sqrt(acc)) : static_cast<float>(acc / (hi - lo));
      }
    });
    uint8_t* codes = out + 4 * blocks_;
    const int epb = per_byte();
    const int64_t s = levels_;
    at::parallel_for(0, code_bytes_, kGrain / epb, [&](int64_t y0, int64_t y1) {
      for (int64_t y = y0; y < y1; ++y) {
        uint8_t byte = 0;
        for (int j = 0; j < epb; ++j) {
          int64_t i = y * epb + j;
          if (i >= numel_) break;
          uint32_t code;
          if (s == 0) {
            code = v[i] >= 0.0f ? 1u : 0u;
          } else {
            float scale = scales[i / block_];
            float a = scale > 0 ? std::fabs(v[i]) / scale * static_cast<float>(s) : 0.0f;
            float level = std::floor(a);
            // Uniform in [0, 1) from (seed, i): counter-based, so threads need no shared state.
            float u = static_cast<float>(mix64(seed + 0x9E3779B97F4A7C15ull * (i + 1)) >> 40) *
                      (1.0f / 16777216.0f);
            if (u < a - level) level += 1.0f;
            level = std::min(level, static_cast<float>(s));
            int64_t q = static_cast<int64_t>(level);
            code = static_cast<uint32_t>((v[i] < 0 ? -q : q) + s);
          }
          byte |= static_cast<uint8_t>(code << (j * bits_));
        }
        codes[y] = byte;
      }
    });
  }

  // out += decode(payload), element by element (parallel over elements). Scales are read with
  // memcpy: inside a gathered buffer a payload need not start 4-byte aligned.
  void decode_add(const uint8_t* payload, float* out) const {
    const uint8_t* codes = payload + 4 * blocks_;
    const int epb = per_byte();
    const uint32_t mask = (1u << bits_) - 1;
    const int64_t s = levels_;
    at::parallel_for(0, numel_, kGrain, [&](int64_t i0, int64_t i1) {
      int64_t cached_block = -1;
      float scale = 0;
      for (int64_t i = i0; i < i1; ++i) {
        int64_t b = i / block_;
        if (b != cached_block) {
          std::memcpy(&scale, payload + 4 * b, 4);
          cached_block = b;
        }
        uint32_t code = (codes[i / epb] >> ((i % epb) * bits_)) & mask;
        float value = s == 0 ? (code ? scale : -scale)
                             : static_cast<float>(static_cast<int64_t>(code) - s) * scale / static_cast<float>(s);
        out[i] += value;
      }
    });
  }

  int64_t numel_, levels_, block_;
  int bits_ = 1;
  int64_t blocks_ = 0, code_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Codec> make_qsgd_codec(int64_t numel, int64_t levels, int64_t block) {
  CONDENSE_CHECK(levels >= 1, "qsgd levels must be >= 1, got {}", levels);
  return std::make_unique<QuantizedCodec>(numel, levels, block);
}

std::unique_ptr<Codec> make_sign_codec(int64_t numel, int64_t block) {
  return std::make_unique<QuantizedCodec>(numel, 0, block);
}

}  // namespace condense
