// Tests for the float32 decode kernels (model/decode_kernels.h, model/decode_attention.h) and the fast decoder
// (model/fast_decoder.h), each against ATen computing the same thing:
//   - every decode kernel against its ATen expression, at sizes with vector tails (cols 1..67),
//     and the training row kernels the decoder applies in place;
//   - the decoder's logits at every step against the ATen forward with a KV cache, within
//     1e-5, for GQA and MHA, tied and untied heads, a head_dim that is not hidden / heads;
//   - its keys and values land in the cache where the ATen path puts them;
//   - thread count does not change a bit (every row is summed by one thread, attention in parts of
//     fixed length combined in order), fp and int8, one part and two;
//   - moving weights onto huge pages keeps every value and every tensor identity, moves only
//     tensors of at least 2 MiB (to 2 MiB-aligned memory), and the model computes the same bits;
//   - generate() takes the fast path on a plain float32 model (greedy and seeded sampling give
//     the ATen path's tokens) and the ATen path, with the reason, where the decoder does not
//     apply (a KV hook, bfloat16 weights, asked for);
//   - int8 caches: attend_int8 over the codes equals attention over the dequantized cache (1e-5),
//     quantize_row is the cache's quantization bit for bit, and the decoder's steps match the
//     ATen forward on an int8 cache (rings, windows, caps), generate() included;
//   - split-K: parts combined equal the whole attention (fp, int8, parts across key groups), and
//     past 256 positions the decoder (three parts) matches the ATen forward, fp and int8.
#include <gtest/gtest.h>

#include <map>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "model/decode_attention.h"
#include "model/decode_kernels.h"
#include "model/fused_kernels.h"
#include "model/fast_decoder.h"
#include "model/generate.h"
#include "model/huge_pages.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "tests/test_support.h"

namespace condense {
namespace {

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LE(err, tol * scale) << "max abs error " << err << " at scale " << scale;
}

// Both blockings (16 rows of 16 floats with AVX-512, 8 of 8 elsewhere) on whatever CPU runs
// this, through full blocks, 4-row blocks and single rows.
TEST(DecodeKernels, MatvecRowsMatchesATenAtEveryTailLength) {
  at::manual_seed(1);
  for (int lanes : {16, 8}) {
    for (int64_t cols : {1, 7, 15, 16, 17, 31, 32, 33, 64, 67}) {
      for (int64_t rows : {1, 3, 4, 5, 13, 40}) {
        SCOPED_TRACE(std::to_string(lanes) + " lanes, " + std::to_string(rows) + " x " + std::to_string(cols));
        at::Tensor w = at::randn({rows, cols}), x = at::randn({cols});
        at::Tensor y = at::full({rows}, 12345.0f);
        // Rows [1, rows) only: row 0 stays untouched.
        decode::matvec_rows_blocked(lanes, w.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(),
                                    1, rows, cols);
        EXPECT_EQ(y[0].item<float>(), 12345.0f);
        if (rows > 1) expect_close(y.narrow(0, 1, rows - 1), at::mv(w, x).narrow(0, 1, rows - 1), 1e-5);
      }
    }
  }
}

// The decoder applies the training kernels (model/fused_kernels.h, tested in test_fused_ops.cpp)
// to one row, RoPE and SwiGLU in place: checked here.
TEST(DecodeKernels, InPlaceRowKernelsAndAddMatchATen) {
  at::manual_seed(2);
  Rope rope(10, 10000.0);
  auto [cos, sin] = rope.cos_sin(5, 1, at::kCPU);  // one position: [1, 10]
  at::Tensor q = at::randn({1, 3, 1, 10});
  at::Tensor mine = q.clone();
  for (int64_t h = 0; h < 3; ++h) {
    float* row = mine.data_ptr<float>() + h * 10;
    fused::rope_row_forward(row, row, cos.data_ptr<float>(), sin.data_ptr<float>(), 5);
  }
  expect_close(mine, apply_rope(q, cos, sin), 1e-6);

  at::Tensor g = at::randn({45}) * 4, u = at::randn({45});
  at::Tensor want = at::silu(g) * u;
  fused::swiglu_forward(g.data_ptr<float>(), u.data_ptr<float>(), g.data_ptr<float>(), 0, 45);
  expect_close(g, want, 1e-6);
  at::Tensor a = at::randn({45}), b = at::randn({45});
  at::Tensor sum = a + b;
  decode::add(a.data_ptr<float>(), b.data_ptr<float>(), 45);
  EXPECT_TRUE(at::equal(a, sum));
}

TEST(DecodeKernels, AttendIsSoftmaxWeightedValues) {
  at::manual_seed(3);
  for (int64_t d : {8, 16, 20}) {
    for (int64_t length : {1, 2, 9}) {
      at::Tensor q = at::randn({d}), k = at::randn({length, d}), v = at::randn({length, d});
      at::Tensor out = at::empty({d}), scores = at::empty({length});
      const float scale = 0.3f;
      decode::attend(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                     out.data_ptr<float>(), scores.data_ptr<float>(), d, length, scale);
      at::Tensor p = at::softmax(at::mv(k, q) * scale, 0);
      expect_close(out, at::mv(v.t(), p), 1e-6);
    }
  }
}

// attend_int8 against the attention of the dequantized keys and values, on a head laid out as
// the int8 cache lays one out: groups of 4 positions, complete ones quantized (codes, per-channel
// scale and minimum), the current one in full precision, values per position; with and without
// a ring (key group slot G % groups, value slot p % slots), from the first position or a window's.
// Every ISA level of its byte loops this CPU has (AVX-512, AVX2, scalar).
TEST(DecodeKernels, AttendInt8IsAttentionOverTheDequantizedCache) {
  at::manual_seed(4);
  int levels = 0;
  for (int level : {4, 3, 0}) {
    if (!decode::set_int8_level(level)) continue;
    ++levels;
    for (int64_t g : {4, 32}) {
      for (int64_t d : {8, 16, 20, 40}) {
        for (bool ring : {false, true}) {
          const int64_t key_groups = ring ? 3 : 4, value_slots = key_groups * g;
          for (int64_t last : {2, 4, 9, 14, 70, 100}) {
            for (int64_t window : {0, 3, 6, 40}) {
              const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
              // Without a ring the positions fit the buffers; a ring (positions wrap past its
              // slots) holds the current group and the key_groups - 1 complete ones before it.
              if (!ring && last >= key_groups * g) continue;
              if (ring && first < (last / g - (key_groups - 1)) * g) continue;
              SCOPED_TRACE("level " + std::to_string(level) + ", group " + std::to_string(g) + ", d " +
                           std::to_string(d) + (ring ? ", ring" : "") + ", positions " +
                           std::to_string(first) + ".." + std::to_string(last));
              at::Tensor codes = at::randint(0, 256, {key_groups * g, d}, at::kInt).to(at::kByte);
              at::Tensor kscale = at::rand({key_groups, d}) * 0.02 + 1e-3, kmin = at::randn({key_groups, d});
              at::Tensor tail = at::randn({g, d});
              at::Tensor vcodes = at::randint(0, 256, {value_slots, d}, at::kInt).to(at::kByte);
              at::Tensor vscale = at::rand({value_slots}) * 0.02 + 1e-3, vmin = at::randn({value_slots});
              const decode::Int8Head head{codes.data_ptr<uint8_t>(), kscale.data_ptr<float>(),
                                          kmin.data_ptr<float>(), tail.data_ptr<float>(),
                                          vcodes.data_ptr<uint8_t>(), vscale.data_ptr<float>(),
                                          vmin.data_ptr<float>(), g, key_groups, value_slots};
              // The reference: each position's key and value dequantized from where it lives.
              const int64_t done = last / g * g;
              std::vector<at::Tensor> keys, values;
              for (int64_t p = first; p <= last; ++p) {
                const int64_t slot = (p / g) % key_groups, vs = p % value_slots;
                keys.push_back(p < done ? codes[slot * g + p % g].to(at::kFloat) * kscale[slot] + kmin[slot]
                                        : tail[p - done]);
                values.push_back(vcodes[vs].to(at::kFloat) * vscale[vs] + vmin[vs]);
              }
              at::Tensor q = at::randn({d}), out = at::empty({d}), scores = at::empty({last + 1});
              at::Tensor qs = at::empty({d});
              for (float cap : {0.0f, 0.5f}) {
                decode::attend_int8(q.data_ptr<float>(), head, first, last, out.data_ptr<float>(),
                                    scores.data_ptr<float>(), qs.data_ptr<float>(), d, 0.3f, cap);
                at::Tensor logits = at::mv(at::stack(keys), q) * 0.3;
                if (cap > 0) logits = at::tanh(logits / cap) * cap;
                expect_close(out, at::mv(at::stack(values).t(), at::softmax(logits, 0)), 1e-5);
              }
            }
          }
        }
      }
    }
  }
  decode::set_int8_level(-1);
  EXPECT_GE(levels, 2);  // the scalar loops run anywhere; x86-64-v3 on any CPU CI runs on
  EXPECT_FALSE(decode::set_int8_level(7));
}

LlamaConfig config(int64_t heads, int64_t kv, bool tied, int64_t head_dim = 0) {
  LlamaConfig c = test::tiny_llama(heads, kv, 97, 64);
  c.tie_word_embeddings = tied;
  c.head_dim = head_dim;
  c.finalize();
  return c;
}

// The fast decoder quantizes values with quantize_row, the ATen path with the cache's own
// quantization: the same codes, scales and minima bit for bit (a constant row included: its
// scale is the floor 1e-12 and every code 0).
TEST(DecodeKernels, QuantizeRowIsTheCacheQuantizationBitForBit) {
  LlamaConfig c = config(4, 2, false);
  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  at::manual_seed(5);
  KVCache cache(c, 1, 32, at::TensorOptions().dtype(at::kFloat), int8);
  const int64_t d = c.head_size();
  at::Tensor v = at::randn({1, 2, 3, d}) * 3;
  v[0][1][2].fill_(0.25f);
  cache.append(0, at::randn({1, 2, 3, d}), v);
  const KVCache::Int8Buffers b = cache.int8_buffers(0);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t p = 0; p < 3; ++p) {
      at::Tensor row = v[0][h][p].contiguous();
      at::Tensor codes = at::empty({d}, at::kByte);
      float scale = 0, min = 0;
      decode::quantize_row(row.data_ptr<float>(), d, codes.data_ptr<uint8_t>(), &scale, &min);
      EXPECT_TRUE(at::equal(codes, b.value_codes[0][h][p])) << h << " " << p;
      EXPECT_EQ(scale, b.value_scale[0][h][p][0].item<float>());
      EXPECT_EQ(min, b.value_min[0][h][p][0].item<float>());
    }
  }
  EXPECT_EQ(b.value_scale[0][1][2][0].item<float>(), 1e-12f);

  // A NaN in a row: ATen's minimum and maximum propagate it (scale and minimum NaN, codes 0); an
  // infinity makes the codes NaN before the cast (0).
  KVCache odd(c, 1, 32, at::TensorOptions().dtype(at::kFloat), int8);
  at::Tensor w = at::randn({1, 2, 1, d});
  w[0][0][0][3] = NAN;
  w[0][1][0][5] = INFINITY;
  odd.append(0, at::randn({1, 2, 1, d}), w);
  const KVCache::Int8Buffers o = odd.int8_buffers(0);
  for (int64_t h = 0; h < 2; ++h) {
    at::Tensor row = w[0][h][0].contiguous(), codes = at::empty({d}, at::kByte);
    float scale = 0, min = 0;
    decode::quantize_row(row.data_ptr<float>(), d, codes.data_ptr<uint8_t>(), &scale, &min);
    EXPECT_TRUE(at::equal(codes, o.value_codes[0][h][0])) << h;
    const float want_scale = o.value_scale[0][h][0][0].item<float>(), want_min = o.value_min[0][h][0][0].item<float>();
    EXPECT_TRUE(scale == want_scale || (std::isnan(scale) && std::isnan(want_scale))) << h << ": " << scale;
    EXPECT_TRUE(min == want_min || (std::isnan(min) && std::isnan(want_min))) << h << ": " << min;
  }
}

// Gemma 2: one RoPE, caps that bind on these weights, layer 0 windowed.
LlamaConfig gemma2_config() {
  LlamaConfig c = config(4, 2, true, 12);
  c.gemma = 2;
  c.query_pre_attn_scalar = 10;
  c.attn_logit_softcapping = 1.0;
  c.final_logit_softcapping = 2.0;
  c.sliding_window = 4;
  c.sliding_window_layers = {1, 0};
  c.finalize();
  return c;
}

// Codes held by two int8 caches of the same length that differ, and by at most how much:
// value codes of the positions held and key codes of the complete groups held.
std::pair<int64_t, int64_t> code_differences(KVCache& a, KVCache& b, int64_t layers) {
  int64_t count = 0, most = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const KVCache::Int8Buffers x = a.int8_buffers(l), y = b.int8_buffers(l);
    const int64_t g = x.key_tail.size(2), groups = std::min(a.length() / g, x.key_groups);
    const int64_t values = std::min(a.length(), x.value_slots);
    for (auto [p, q] : {std::pair{x.value_codes.narrow(2, 0, values), y.value_codes.narrow(2, 0, values)},
                        std::pair{x.key_codes.narrow(2, 0, groups * g), y.key_codes.narrow(2, 0, groups * g)}}) {
      at::Tensor diff = (p.to(at::kInt) - q.to(at::kInt)).abs();
      count += diff.gt(0).sum().item<int64_t>();
      if (diff.numel() > 0) most = std::max(most, diff.max().item<int64_t>());
    }
  }
  return {count, most};
}

// Logits of `steps` tokens after `prompt`, one position at a time, by the fast decoder and by
// the ATen forward on caches of type `kind` filled by the same ATen prefill.
//
// int8: both paths quantize a value row alike (decode::quantize_row is the cache's ATen
// quantization bit for bit, tested below), but their keys and values differ by float rounding
// (~1e-7), which can carry a value across a rounding boundary: a code one apart, and logits
// 1e-4..1e-3 apart from then on. So the logits must agree to 1e-5 while every code held agrees,
// and to 1e-2 after a code moved by one (a layout error is off by O(1)); the codes may differ by
// at most one, in a few places (a reviewer's 40 seeds x 11 steps: none moved).
void compare_steps(const LlamaConfig& c, uint64_t seed, KVCacheOptions kind = {}, int64_t prompt_len = 5) {
  at::manual_seed(seed);
  LlamaForCausalLM m(c);
  m->eval();
  torch::NoGradGuard ng;
  {  // larger weights than HF's init, so that the logits differ visibly between tokens
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.2);
    for (auto& p : m->named_parameters()) {  // Qwen2's q/k/v biases, Qwen3's q/k norms: felt clearly
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0, 0.5);
      if (p.key().find("_norm.weight") != std::string::npos) p.value().normal_(1, 0.5);
    }
  }
  at::Tensor prompt = at::randint(0, c.vocab_size, {1, prompt_len}, at::kLong);
  at::Tensor steps = at::randint(0, c.vocab_size, {11}, at::kLong);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  const int64_t capacity = prompt_len + 11;
  KVCache fast_cache(c, 1, capacity, opts, kind), ref_cache(c, 1, capacity, opts, kind);
  prefill(m, prompt, fast_cache);
  prefill(m, prompt, ref_cache);
  FastDecoder fast(m, fast_cache);
  const bool int8 = kind.type == KVCacheType::kInt8;
  for (int64_t i = 0; i < steps.size(0); ++i) {
    const int64_t tok = steps[i].item<int64_t>();
    at::Tensor got = fast.step(tok).clone();
    at::Tensor h = m->hidden({at::full({1, 1}, tok, at::kLong), {}, &ref_cache});
    at::Tensor want = m->logits(h).flatten();
    ASSERT_EQ(fast_cache.length(), ref_cache.length());
    const auto [moved, most] = int8 ? code_differences(fast_cache, ref_cache, c.num_hidden_layers)
                                    : std::pair<int64_t, int64_t>{0, 0};
    ASSERT_LE(most, 1);
    ASSERT_LE(moved, 4);  // of 2 x 16 x 4 x 32 = 4096 or more codes held (flips are ~1e-4 rare)
    SCOPED_TRACE("step " + std::to_string(i) + ", codes one apart: " + std::to_string(moved));
    expect_close(got, want, moved == 0 ? 1e-5 : 1e-2);
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    // Both caches hold a windowed layer's ring in the same slots (position p in slot p % slots).
    const int64_t n = std::min(ref_cache.length(), ref_cache.slots(l));
    if (int8) {  // the scales and minima, and the current group's keys in full precision
      const KVCache::Int8Buffers f = fast_cache.int8_buffers(l), r = ref_cache.int8_buffers(l);
      const int64_t g = f.key_tail.size(2), groups = std::min(ref_cache.length() / g, f.key_groups);
      ASSERT_GT(groups, 0);
      // The tail keeps the last group's keys (written, and quantized if complete).
      const int64_t tail = ref_cache.length() % g == 0 ? g : ref_cache.length() % g;
      expect_close(f.key_tail.narrow(2, 0, tail), r.key_tail.narrow(2, 0, tail), 1e-5);
      expect_close(f.key_scale.narrow(2, 0, groups), r.key_scale.narrow(2, 0, groups), 1e-5);
      expect_close(f.key_min.narrow(2, 0, groups), r.key_min.narrow(2, 0, groups), 1e-5);
      expect_close(f.value_scale.narrow(2, 0, n), r.value_scale.narrow(2, 0, n), 1e-5);
      expect_close(f.value_min.narrow(2, 0, n), r.value_min.narrow(2, 0, n), 1e-5);
      continue;
    }
    auto [fk, fv] = fast_cache.fp_buffers(l);
    auto [rk, rv] = ref_cache.fp_buffers(l);
    ASSERT_EQ(fk.size(2), ref_cache.slots(l));
    expect_close(fk.narrow(2, 0, n), rk.narrow(2, 0, n), 1e-5);
    expect_close(fv.narrow(2, 0, n), rv.narrow(2, 0, n), 1e-5);
  }
}

TEST(FastDecoder, StepsMatchTheATenForwardWithACache) {
  compare_steps(config(4, 2, false), 10);       // GQA, untied
  compare_steps(config(4, 4, true), 11);        // MHA, tied
  compare_steps(config(4, 1, false, 6), 12);    // one KV head, head_dim 6 != 32 / 4
  compare_steps(config(2, 2, true, 24), 13);    // head_dim with a vector tail
  LlamaConfig scaled = config(4, 2, false);     // Llama 3's RoPE scaling, felt within 12 positions
  scaled.rope_scaling = {"llama3", 4.0, 1.0, 4.0, 8};
  compare_steps(scaled, 14);
  LlamaConfig qwen2 = config(4, 2, true);  // q/k/v biases
  qwen2.qkv_bias = true;
  compare_steps(qwen2, 15);
  LlamaConfig qwen3 = config(4, 2, false, 12);  // q/k norms, head_dim 12 != 32 / 4
  qwen3.qk_norm = true;
  compare_steps(qwen3, 16);
  LlamaConfig smollm3 = config(4, 2, true);  // layer 1 without RoPE
  smollm3.no_rope_layers = {1, 0};
  compare_steps(smollm3, 17);
  LlamaConfig phi4 = config(4, 2, true, 16);  // RoPE over the first 12 of 16 channels (Phi-4-mini's 0.75)
  phi4.partial_rotary_factor = 0.75;
  compare_steps(phi4, 18);
  LlamaConfig mistral = config(4, 2, false);  // every layer windowed: 3 of the 5..12 positions
  mistral.sliding_window = 3;
  compare_steps(mistral, 19);
  LlamaConfig qwen2_window = config(4, 2, false);  // layer 0 windowed, layer 1 full
  qwen2_window.qkv_bias = true;
  qwen2_window.sliding_window = 4;
  qwen2_window.sliding_window_layers = {1, 0};
  qwen2_window.finalize();
  compare_steps(qwen2_window, 20);
  LlamaConfig gemma = config(4, 2, true, 12);  // Gemma 3: layer 0 windowed on its own RoPE base
  gemma.qk_norm = true;
  gemma.gemma = 3;
  gemma.query_pre_attn_scalar = 10;
  gemma.rope_local_theta = 100;
  gemma.sliding_window = 4;
  gemma.sliding_window_layers = {1, 0};
  gemma.finalize();
  compare_steps(gemma, 21);
  compare_steps(gemma2_config(), 22);
}

// The same on int8 caches of groups of 4 (16 positions: complete groups at 4, 8, 12, 16): the
// decoder reads codes where the ATen path reads dequantized copies.
TEST(FastDecoder, StepsMatchTheATenForwardWithAnInt8Cache) {
  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  int8.group = 4;
  compare_steps(config(4, 2, false), 50, int8);     // GQA, untied
  compare_steps(config(4, 4, true), 51, int8);      // MHA, tied
  compare_steps(config(2, 2, true, 24), 52, int8);  // head_dim 24: a vector tail in every dot
  LlamaConfig mistral = config(4, 2, false);        // window 3: a ring of 2 groups, wrapped
  mistral.sliding_window = 3;
  compare_steps(mistral, 53, int8);
  LlamaConfig wide = config(4, 2, false);  // window 9: a ring would be the whole capacity, so none;
  wide.sliding_window = 9;                 // the window still masks
  compare_steps(wide, 54, int8);
  compare_steps(gemma2_config(), 55, int8);  // Gemma 2: caps, layer 0 windowed (a ring)
}

// Past 256 positions the decoder splits each KV head's positions into parts of 256 that threads
// take independently and combines them (split-K): 520 + 11 positions are three parts, for fp and
// int8 caches (groups of 32), a windowed layer (window 300: a ring of 300 slots, or of 11 whole
// groups) and GQA with 3 query heads per KV head.
TEST(FastDecoder, LongContextsSplitIntoPartsMatchTheATenForward) {
  LlamaConfig c = test::tiny_config(2);
  c.num_attention_heads = 6;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_position_embeddings = 600;
  c.finalize();
  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  compare_steps(c, 60, {}, 520);
  compare_steps(c, 61, int8, 520);
  LlamaConfig windowed = c;  // Qwen2's layout: q/k/v biases, some layers windowed
  windowed.qkv_bias = true;
  windowed.sliding_window = 300;
  windowed.sliding_window_layers = {1, 0};
  windowed.finalize();
  compare_steps(windowed, 62, {}, 520);
  compare_steps(windowed, 63, int8, 520);
}

// attend_part over positions cut into parts, combined, equals one part over all of them, for the
// query heads of one KV head at once (fp and int8 heads; parts not aligned to key groups).
TEST(DecodeKernels, PartsCombineToTheWholeAttention) {
  at::manual_seed(6);
  const int64_t d = 24, n = 100, nq = 3, g = 8;
  at::Tensor q = at::randn({nq, d}), k = at::randn({n, d}), v = at::randn({n, d});
  at::Tensor codes = at::randint(0, 256, {n, d}, at::kInt).to(at::kByte), vcodes = codes.flip(0).contiguous();
  at::Tensor kscale = at::rand({n / g + 1, d}) * 0.02 + 1e-3, kmin = at::randn({n / g + 1, d});
  at::Tensor tail = at::randn({g, d}), vscale = at::rand({n}) * 0.02 + 1e-3, vmin = at::randn({n});
  const decode::Int8Head head{codes.data_ptr<uint8_t>(), kscale.data_ptr<float>(), kmin.data_ptr<float>(),
                              tail.data_ptr<float>(), vcodes.data_ptr<uint8_t>(), vscale.data_ptr<float>(),
                              vmin.data_ptr<float>(), g, n / g + 1, n};
  for (bool int8 : {false, true}) {
    for (int64_t part : {n, int64_t{37}, int64_t{8}, int64_t{1}}) {
      SCOPED_TRACE(std::string(int8 ? "int8" : "fp") + ", parts of " + std::to_string(part));
      const int64_t parts = (n + part - 1) / part;
      at::Tensor out = at::empty({parts, nq, d}), max = at::empty({parts, nq}), sum = at::empty({parts, nq});
      at::Tensor scores = at::empty({nq * part}), qs = at::empty({d});
      for (int64_t p = 0; p < parts; ++p) {
        const int64_t begin = p * part, end = std::min(n, begin + part);
        const decode::Partial partial{out[p].data_ptr<float>(), max[p].data_ptr<float>(), sum[p].data_ptr<float>()};
        if (int8)
          decode::attend_int8_part(q.data_ptr<float>(), nq, head, begin, end, n - 1, d, 0.3f, 0, scores.data_ptr<float>(),
                                   qs.data_ptr<float>(), partial);
        else
          decode::attend_part(q.data_ptr<float>(), nq, k[begin].data_ptr<float>(), v[begin].data_ptr<float>(),
                              end - begin, d, 0.3f, 0, scores.data_ptr<float>(), partial);
      }
      for (int64_t h = 0; h < nq; ++h) {
        at::Tensor got = at::empty({d}), want = at::empty({d}), all = at::empty({n});
        decode::combine(out.data_ptr<float>() + h * d, max.data_ptr<float>() + h, sum.data_ptr<float>() + h, parts,
                        nq, d, got.data_ptr<float>());
        if (int8)
          decode::attend_int8(q[h].data_ptr<float>(), head, 0, n - 1, want.data_ptr<float>(), all.data_ptr<float>(),
                              qs.data_ptr<float>(), d, 0.3f);
        else
          decode::attend(q[h].data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), want.data_ptr<float>(),
                         all.data_ptr<float>(), d, n, 0.3f);
        expect_close(got, want, 1e-6);
      }
    }
  }
}

TEST(FastDecoder, ThreadCountDoesNotChangeABit) {
  // Wide enough that every matrix-vector product is split across threads; 300 positions are two
  // split-K parts of attention, fp and int8.
  LlamaConfig c = config(4, 2, false);
  c.hidden_size = 256;
  c.intermediate_size = 320;
  c.vocab_size = 1000;
  c.max_position_embeddings = 320;
  c.finalize();
  at::manual_seed(20);
  LlamaForCausalLM m(c);
  m->eval();
  torch::NoGradGuard ng;
  const int threads_before = at::get_num_threads();
  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  for (const KVCacheOptions& kind : {KVCacheOptions{}, int8}) {
    for (int64_t prompt : {3, 300}) {
      at::Tensor ids = at::randint(0, c.vocab_size, {1, prompt}, at::kLong);
      std::vector<at::Tensor> out;
      for (int threads : {1, 2}) {
        at::set_num_threads(1);  // the same ATen prefill for both
        KVCache cache(c, 1, prompt + 2, at::TensorOptions().dtype(at::kFloat), kind);
        prefill(m, ids, cache);
        at::set_num_threads(threads);
        FastDecoder fast(m, cache);
        out.push_back(at::cat({fast.step(7).clone(), fast.step(8).clone()}));
      }
      at::set_num_threads(threads_before);
      EXPECT_TRUE(at::equal(out[0], out[1])) << prompt << " positions";
    }
  }
}

TEST(FastDecoder, GenerateUsesItWhereItAppliesAndSaysWhyNot) {
  const LlamaConfig c = config(4, 2, false);
  at::manual_seed(30);
  LlamaForCausalLM m(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.2);
    for (auto& p : m->named_parameters())  // Qwen2's q/k/v biases, felt clearly
      if (p.key().find(".bias") != std::string::npos) p.value().normal_(0, 0.5);
  }
  std::vector<int64_t> prompt = {3, 14, 15, 92};
  SamplingOptions greedy;
  greedy.max_new_tokens = 12;
  SamplingOptions aten = greedy;
  aten.aten_decode = true;
  GenerationResult f = generate(m, prompt, greedy), a = generate(m, prompt, aten);
  EXPECT_EQ(f.decode_path, "fast");
  EXPECT_EQ(a.decode_path, "aten (asked for)");
  EXPECT_EQ(f.tokens, a.tokens);
  SamplingOptions sample = greedy;
  sample.temperature = 0.8;
  sample.top_k = 20;
  sample.seed = 4;
  SamplingOptions sample_aten = sample;
  sample_aten.aten_decode = true;
  EXPECT_EQ(generate(m, prompt, sample).tokens, generate(m, prompt, sample_aten).tokens);

  KVCacheOptions int8;
  int8.type = KVCacheType::kInt8;
  GenerationResult f8 = generate(m, prompt, greedy, int8), a8 = generate(m, prompt, aten, int8);
  EXPECT_EQ(f8.decode_path, "fast");
  EXPECT_EQ(f8.tokens, a8.tokens);
  m->set_kv_hook(std::make_shared<KVHook>());
  EXPECT_EQ(generate(m, prompt, greedy).decode_path,
            "aten (a KV hook (projected or latent KV cache) is set)");
  m->set_kv_hook(nullptr);
  m->to(at::kBFloat16);
  const std::string why = generate(m, prompt, greedy).decode_path;
  EXPECT_NE(why.find("is not float32"), std::string::npos) << why;
}

TEST(HugePages, WeightsMoveWithTheirValuesAndTheModelComputesTheSameBits) {
  LlamaConfig c = config(4, 2, false);
  c.vocab_size = 4096;  // the embedding and LM head: 4096 x 32 floats = 512 KiB, below 2 MiB
  c.hidden_size = 256;  // ... 4096 x 256 floats = 4 MiB each, moved
  c.finalize();
  at::manual_seed(40);
  LlamaForCausalLM m(c);
  m->eval();
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 6}, at::kLong);
  at::Tensor before = test::eval_logits(m, ids);
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> params;  // the tensor, a copy
  for (auto& p : m->named_parameters()) params[p.key()] = {p.value(), p.value().clone()};
  std::map<std::string, void*> old_ptr;
  for (auto& [name, pc] : params) old_ptr[name] = pc.first.data_ptr();

  const int64_t moved = place_on_huge_pages(*m);
  int64_t expect = 0;
  for (auto& [name, pc] : params) {
    const at::Tensor& t = pc.first;
    EXPECT_TRUE(at::equal(t, pc.second)) << name;
    EXPECT_TRUE(m->named_parameters()[name].is_same(t)) << name;  // same tensor, new storage
    const bool big = t.nbytes() >= (size_t{2} << 20);
    EXPECT_EQ(t.data_ptr() != old_ptr[name], big) << name;
    if (big) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % (uintptr_t{2} << 20), 0u) << name;
      expect += static_cast<int64_t>(t.nbytes());
    }
  }
  EXPECT_GT(expect, 0);
  EXPECT_EQ(moved, expect);
  EXPECT_TRUE(at::equal(test::eval_logits(m, ids), before));
}

}  // namespace
}  // namespace condense
