// Tests for the KV cache's storage types (model/kv_cache.h):
//   - int8 values: per token, every element within half a quantization step of the input
//     (closed form: step = (max - min) / 255 of that token's head vector);
//   - int8 keys: the current group is returned exactly (KIVI's full-precision residual);
//     complete groups within half a step per channel of that group;
//   - an append within a key group returns one run of positions; one across groups returns the
//     groups it completes quantized and exact, with the mask of which each query sees;
//   - bytes per token: fp = layers * 2 * kv_heads * head_dim * element size; int8 adds the scales;
//   - a chunked prefill equals token-by-token decoding: exactly up to float noise for fp, and up
//     to quantization codes that noise flips for int8 (one step each), and the int8 model stays
//     close to the fp one;
//   - a sliding-window layer's fp cache is a ring of its window: whole sequences, chunks of any
//     length and single tokens through it score as the forward without a cache, its memory stays
//     the window's;
//   - parse errors name the option.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "core/error.h"
#include "tests/test_support.h"
#include "model/generate.h"
#include "model/kv_cache.h"

namespace condense {
namespace {

LlamaConfig tiny() { return test::tiny_llama(4, 2, 97, 128); }

KVCacheOptions int8(int64_t group = 4) {
  KVCacheOptions o;
  o.type = KVCacheType::kInt8;
  o.group = group;
  return o;
}

// Half a quantization step of x along dim, broadcastable to x.
at::Tensor half_step(const at::Tensor& x, int64_t dim) {
  return (x.amax(dim, true) - x.amin(dim, true)) / 255.0 / 2.0;
}

TEST(KVCacheInt8, ValuesWithinHalfAStepPerToken) {
  at::manual_seed(1);
  KVCache cache(tiny(), 2, 16, at::TensorOptions().dtype(at::kFloat), int8());
  at::Tensor k = at::randn({2, 2, 3, 8}), v = at::randn({2, 2, 3, 8}) * 5;
  auto [keys, values] = cache.append(0, k, v);
  ASSERT_EQ(values.sizes(), v.sizes());
  EXPECT_TRUE(((values - v).abs() <= half_step(v, 3) + 1e-6).all().item<bool>());
  EXPECT_FALSE(at::equal(values, v));  // it is quantized
  EXPECT_TRUE(at::equal(keys, k));     // the incomplete group stays exact
}

TEST(KVCacheInt8, CompleteKeyGroupsWithinHalfAStepPerChannel) {
  at::manual_seed(2);
  const int64_t g = 4;
  KVCache cache(tiny(), 1, 16, at::TensorOptions().dtype(at::kFloat), int8(g));
  std::vector<at::Tensor> ks;
  at::Tensor keys;
  for (int64_t step = 0; step < 10; ++step) {
    at::Tensor k = at::randn({1, 2, 1, 8}) + at::arange(8).view({1, 1, 1, 8});
    ks.push_back(k);
    for (int64_t l = 0; l < 2; ++l) keys = cache.append(l, k, k).first;
    cache.commit(1);
  }
  at::Tensor all = at::cat(ks, 2);  // [1, 2, 10, 8]
  ASSERT_EQ(keys.size(2), 10);
  for (int64_t grp = 0; grp < 2; ++grp) {  // positions 0..7: two complete groups
    at::Tensor x = all.narrow(2, grp * g, g), got = keys.narrow(2, grp * g, g);
    EXPECT_TRUE(((got - x).abs() <= half_step(x, 2) + 1e-6).all().item<bool>()) << grp;
    EXPECT_FALSE(at::equal(got, x));
  }
  // Positions 8 and 9 are the residual group: exact until it completes.
  EXPECT_TRUE(at::equal(keys.narrow(2, 8, 2), all.narrow(2, 8, 2)));
}

TEST(KVCacheInt8, AppendsWithinAGroupOrAcrossWithAMask) {
  KVCache cache(tiny(), 1, 12, at::TensorOptions().dtype(at::kFloat), int8(4));
  EXPECT_EQ(cache.max_append(), 4);
  at::Tensor k3 = at::randn({1, 2, 3, 8}), v3 = at::randn({1, 2, 3, 8});
  for (int64_t l = 0; l < 2; ++l) cache.append(l, k3, v3);
  EXPECT_FALSE(cache.append_mask().defined());  // within a group: one run of positions
  cache.commit(3);
  EXPECT_EQ(cache.max_append(), 1);
  EXPECT_EQ(cache.max_append(true), 9);

  // Positions 3..8 across groups [0, 4) and [4, 8) into [8, 12): returned, the quantized keys of
  // positions 0..7 (groups completed here), then positions 0..8 in full precision.
  at::Tensor k6 = at::randn({1, 2, 6, 8}), v6 = at::randn({1, 2, 6, 8});
  auto [keys, values] = cache.append(0, k6, v6);
  at::Tensor exact = at::cat({k3, k6}, 2), all_values = at::cat({v3, v6}, 2);
  ASSERT_EQ(keys.size(2), 8 + 9);
  EXPECT_TRUE(at::equal(keys.narrow(2, 8, 9), exact));
  for (int64_t grp = 0; grp < 2; ++grp) {
    at::Tensor x = exact.narrow(2, grp * 4, 4);
    EXPECT_TRUE(((keys.narrow(2, grp * 4, 4) - x).abs() <= half_step(x, 2) + 1e-6).all().item<bool>()) << grp;
  }
  // Values per position, those of 0..7 twice (beside both copies of their keys).
  ASSERT_EQ(values.size(2), 17);
  EXPECT_TRUE(at::equal(values.narrow(2, 0, 8), values.narrow(2, 8, 8)));
  EXPECT_TRUE(((values.narrow(2, 8, 9) - all_values).abs() <= half_step(all_values, 3) + 1e-6).all().item<bool>());
  // Query at position p (group start s) sees quantized keys j < s and exact keys s <= j <= p.
  const at::Tensor& mask = cache.append_mask();
  ASSERT_TRUE(mask.defined());
  EXPECT_TRUE(at::equal(cache.append_key_positions(), at::cat({at::arange(8), at::arange(9)})));
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{6, 17}));
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t p = 3 + i, s = p / 4 * 4;
    for (int64_t j = 0; j < 8; ++j) EXPECT_EQ(mask[i][j].item<bool>(), j < s) << p << " sees quantized " << j;
    for (int64_t j = 0; j < 9; ++j)
      EXPECT_EQ(mask[i][8 + j].item<bool>(), j >= s && j <= p) << p << " sees exact " << j;
  }
  cache.append(1, k6, v6);
  cache.commit(6);
  // A constant group (zero range) dequantizes exactly; the next single-group append has no mask.
  KVCache flat(tiny(), 1, 10, at::TensorOptions().dtype(at::kFloat), int8(4));
  for (int64_t l = 0; l < 2; ++l) flat.append(l, at::zeros({1, 2, 4, 8}), at::zeros({1, 2, 4, 8}));
  flat.commit(4);
  auto kv = flat.append(0, at::zeros({1, 2, 1, 8}), at::full({1, 2, 1, 8}, 3.5));
  EXPECT_FALSE(flat.append_mask().defined());
  EXPECT_TRUE(at::equal(kv.first.narrow(2, 0, 4), at::zeros({1, 2, 4, 8})));
  EXPECT_TRUE(at::equal(kv.second.narrow(2, 4, 1), at::full({1, 2, 1, 8}, 3.5)));
}

// One append across key groups leaves the cache as token-by-token appends of the same keys and
// values do, bit for bit, and each of its queries sees the same keys and values (by position)
// as that query's own token-by-token append returned: full attention and an int8 ring (window 5,
// groups of 4: 12 slots) fed chunks longer than the ring, ending on a group boundary or not.
TEST(KVCacheInt8, AnAppendAcrossGroupsIsTokenByTokenBitForBit) {
  LlamaConfig c = tiny();
  c.qkv_bias = true;  // layer 0 windowed (a partly windowed model is a Qwen2)
  c.sliding_window = 5;
  c.sliding_window_layers = {1, 0};
  c.finalize();
  at::manual_seed(9);
  const int64_t n = 40;
  at::Tensor k = at::randn({2, 2, n, 8}), v = at::randn({2, 2, n, 8});
  KVCache chunked(c, 2, n, at::TensorOptions().dtype(at::kFloat), int8(4));
  KVCache tokens(c, 2, n, at::TensorOptions().dtype(at::kFloat), int8(4));
  ASSERT_EQ(chunked.slots(0), 12);
  int64_t start = 0;
  for (int64_t size : {3, 13, 16, 1, 7}) {
    std::vector<std::vector<std::pair<at::Tensor, at::Tensor>>> seen(2);  // per layer, per query
    for (int64_t i = 0; i < size; ++i) {
      for (int64_t l = 0; l < 2; ++l) {
        auto [kk, vv] = tokens.append(l, k.narrow(2, start + i, 1), v.narrow(2, start + i, 1));
        const int64_t w = c.window(l), keep = w > 0 ? std::min<int64_t>(w, start + i + 1) : start + i + 1;
        seen[l].push_back({kk.narrow(2, kk.size(2) - keep, keep), vv.narrow(2, vv.size(2) - keep, keep)});
      }
      tokens.commit(1);
    }
    for (int64_t l = 0; l < 2; ++l) {
      auto [kk, vv] = chunked.append(l, k.narrow(2, start, size), v.narrow(2, start, size));
      at::Tensor mask = chunked.append_mask(), pos = chunked.append_key_positions();
      if (!mask.defined()) {  // one run of positions ending at the new ones
        pos = at::arange(start + size - kk.size(2), start + size);
        mask = pos.unsqueeze(0) <= at::arange(start, start + size).unsqueeze(1);
      }
      for (int64_t i = 0; i < size; ++i) {
        const int64_t p = start + i, w = c.window(l);
        at::Tensor sees = mask[i].logical_and(w > 0 ? pos > p - w : pos >= 0);
        at::Tensor idx = sees.nonzero().flatten();
        at::Tensor order = pos.index_select(0, idx).argsort();
        idx = idx.index_select(0, order);
        SCOPED_TRACE("layer " + std::to_string(l) + ", position " + std::to_string(p));
        EXPECT_TRUE(at::equal(kk.index_select(2, idx), seen[l][i].first));
        EXPECT_TRUE(at::equal(vv.index_select(2, idx), seen[l][i].second));
      }
    }
    chunked.commit(size);
    start += size;
    // The state: every held code, scale and minimum, and the current group's keys.
    for (int64_t l = 0; l < 2; ++l) {
      const KVCache::Int8Buffers x = chunked.int8_buffers(l), y = tokens.int8_buffers(l);
      const int64_t groups = std::min(start / 4, x.key_groups), values = std::min(start, x.value_slots);
      EXPECT_TRUE(at::equal(x.key_codes.narrow(2, 0, groups * 4), y.key_codes.narrow(2, 0, groups * 4))) << l;
      EXPECT_TRUE(at::equal(x.key_scale.narrow(2, 0, groups), y.key_scale.narrow(2, 0, groups))) << l;
      EXPECT_TRUE(at::equal(x.key_min.narrow(2, 0, groups), y.key_min.narrow(2, 0, groups))) << l;
      EXPECT_TRUE(at::equal(x.key_tail.narrow(2, 0, start % 4), y.key_tail.narrow(2, 0, start % 4))) << l;
      EXPECT_TRUE(at::equal(x.value_codes.narrow(2, 0, values), y.value_codes.narrow(2, 0, values))) << l;
      EXPECT_TRUE(at::equal(x.value_scale.narrow(2, 0, values), y.value_scale.narrow(2, 0, values))) << l;
      EXPECT_TRUE(at::equal(x.value_min.narrow(2, 0, values), y.value_min.narrow(2, 0, values))) << l;
    }
  }
}

TEST(KVCache, BytesPerToken) {
  LlamaConfig c = tiny();  // 2 layers, 2 KV heads of 8
  EXPECT_EQ(KVCache(c, 1, 4, at::TensorOptions().dtype(at::kFloat)).bytes_per_token(), 2 * 2 * 2 * 8 * 4);
  EXPECT_EQ(KVCache(c, 1, 4, at::TensorOptions().dtype(at::kBFloat16)).bytes_per_token(), 2 * 2 * 2 * 8 * 2);
  // int8, group 4: keys 16 + 8 * 16 / 4, values 16 + 8 * 2, per layer.
  EXPECT_EQ(KVCache(c, 1, 4, at::TensorOptions().dtype(at::kFloat), int8(4)).bytes_per_token(),
            2 * (16 + 32 + 16 + 16));
}

TEST(KVCache, ChunkedPrefillEqualsTokenByTokenDecoding) {
  torch::manual_seed(3);
  LlamaForCausalLM m(tiny());
  m->eval();
  torch::NoGradGuard ng;
  at::Tensor ids = at::randint(0, 97, {2, 37}, at::kLong);
  at::Tensor full = m->forward(ids);
  // How the positions arrive: prefill() (an int8 cache: one chunk across key groups), one group
  // at a time (KVCache::max_append()), or one token at a time.
  enum Arrival { kPrefill, kGroups, kTokens };
  auto run = [&](KVCacheOptions kind, Arrival arrival) {
    KVCache cache(m->config(), 2, 37, at::TensorOptions().dtype(at::kFloat), kind);
    if (arrival == kPrefill) return m->logits(prefill(m, ids, cache));
    std::vector<at::Tensor> parts;
    for (int64_t i = 0; i < 37;) {
      const int64_t n = arrival == kGroups ? cache.max_append() : 1;
      parts.push_back(m->logits(m->hidden({ids.narrow(1, i, n), {}, &cache})));
      EXPECT_FALSE(cache.append_mask().defined());
      i += n;
    }
    return at::cat(parts, 1);
  };
  // fp token by token is test_model's KvCacheDecodingMatchesFullForward; here the chunked prefill.
  EXPECT_LT((run({}, kPrefill) - full).abs().max().item<double>(), 1e-5);
  at::Tensor a = run(int8(8), kPrefill), b = run(int8(8), kTokens), c = run(int8(8), kGroups);
  // Float noise between the paths can flip a code by one step; nothing else differs.
  EXPECT_LT((a - b).abs().max().item<double>(), 5e-3);
  EXPECT_LT((a - c).abs().max().item<double>(), 5e-3);
  const double drift = (a - full).abs().max().item<double>();
  EXPECT_GT(drift, 0.0);
  EXPECT_LT(drift, 5e-2);
}

TEST(KVCache, SlidingWindowLayersKeepARingOfTheirWindow) {
  LlamaConfig c = tiny();  // layer 0 windowed (5 positions), layer 1 full attention
  c.qkv_bias = true;       // (a partly windowed model is a Qwen2)
  c.sliding_window = 5;
  c.sliding_window_layers = {1, 0};
  c.finalize();
  torch::manual_seed(4);
  LlamaForCausalLM m(c);
  m->eval();
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.normal_(0, 0.3);
  at::Tensor ids = at::randint(0, 97, {2, 23}, at::kLong);
  at::Tensor full = m->forward(ids);
  // Chunks of 1, 3, 7 (longer than the window), 1, 11 (over twice the window: attended block by block
  // with held keys before it): every append shape the ring takes.
  KVCache cache(c, 2, 40, at::TensorOptions().dtype(at::kFloat));
  std::vector<at::Tensor> parts;
  int64_t at = 0;
  for (int64_t n : {1, 3, 7, 1, 11}) {
    parts.push_back(m->logits(m->hidden({ids.narrow(1, at, n), {}, &cache})));
    at += n;
  }
  ASSERT_EQ(at, 23);
  EXPECT_LT((at::cat(parts, 1) - full).abs().max().item<double>(), 1e-4);
  // An int8 cache whose group (32) is longer than the sequence holds no ring: the same chunks read
  // every position (the blocked chunk from key 0), within the quantization's error of the forward.
  KVCache q8(c, 2, 40, at::TensorOptions().dtype(at::kFloat), int8(32));
  std::vector<at::Tensor> q8_parts;
  at = 0;
  for (int64_t n : {1, 3, 7, 1, 11}) {
    q8_parts.push_back(m->logits(m->hidden({ids.narrow(1, at, n), {}, &q8})));
    at += n;
  }
  EXPECT_LT((at::cat(q8_parts, 1) - full).abs().max().item<double>(), 5e-2);
  EXPECT_EQ(cache.slots(0), 5);
  EXPECT_EQ(cache.slots(1), 40);
  EXPECT_EQ(cache.fp_buffers(0).first.size(2), 5);
  // A position costs 2 x 2 heads x 8 floats in each layer, but the windowed layer holds 5 of the 23.
  EXPECT_EQ(cache.bytes_per_token(), 2 * (2 * 2 * 8 * 4));
  EXPECT_EQ(cache.held_bytes(), (23 + 5) * (2 * 2 * 8 * 4));
  EXPECT_EQ(cache.window_bytes(), 2 * 2 * 8 * 5 * 4);
  // int8 with groups of 2: the windowed layer holds a ring of ceil(5 / 2) + 1 = 4 groups (8 slots),
  // and every chunk split at the group boundaries (prefill) and single tokens read through it equal
  // the same int8 cache holding every position (a cache built for the model without the window; the
  // model masks alike): the same codes, only fewer masked keys.
  LlamaConfig open_cache = c;
  open_cache.sliding_window = 0;
  open_cache.sliding_window_layers.clear();
  KVCache ring8(c, 2, 40, at::TensorOptions().dtype(at::kFloat), int8(2));
  KVCache all8(open_cache, 2, 40, at::TensorOptions().dtype(at::kFloat), int8(2));
  EXPECT_EQ(ring8.slots(0), 8);
  EXPECT_EQ(ring8.slots(1), 40);
  EXPECT_EQ(all8.slots(0), 40);
  std::vector<at::Tensor> ring_parts, all_parts;
  at = 0;
  for (int64_t n : {1, 3, 7, 1, 11}) {
    if (n == 1) {
      ring_parts.push_back(m->logits(m->hidden({ids.narrow(1, at, 1), {}, &ring8})));
      all_parts.push_back(m->logits(m->hidden({ids.narrow(1, at, 1), {}, &all8})));
    } else {
      ring_parts.push_back(m->logits(prefill(m, ids.narrow(1, at, n), ring8)));
      all_parts.push_back(m->logits(prefill(m, ids.narrow(1, at, n), all8)));
    }
    at += n;
  }
  at::Tensor ring_logits = at::cat(ring_parts, 1), all_logits = at::cat(all_parts, 1);
  EXPECT_LT((ring_logits - all_logits).abs().max().item<double>(), 1e-5);
  EXPECT_LT((ring_logits - full).abs().max().item<double>(), 5e-2);
  // Layer 1 holds 23 positions, layer 0 its 8 slots: per position 2 heads x (8 + 8 * 8 / 2 key bytes
  // + 8 + 8 value bytes).
  const double per_position = 2 * (8 + 32 + 8 + 8);
  EXPECT_EQ(ring8.held_bytes(), (23 + 8) * per_position);
  EXPECT_EQ(all8.held_bytes(), (23 + 23) * per_position);
  // Without the window, the same weights give other logits past it: the ring's masking matters.
  LlamaConfig open = c;
  open.sliding_window = 0;
  open.sliding_window_layers.clear();
  LlamaForCausalLM m2(open);
  m2->eval();
  for (auto& p : m2->named_parameters()) p.value().copy_(m->named_parameters()[p.key()]);
  EXPECT_GT((m2->forward(ids) - full).abs().max().item<double>(), 1e-2);
}

TEST(KVCache, ParseNamesTheOption) {
  EXPECT_EQ(parse_kv_cache("int8", "--kv-cache").type, KVCacheType::kInt8);
  EXPECT_EQ(parse_kv_cache("fp", "--kv-cache").type, KVCacheType::kFp);
  try {
    parse_kv_cache("int4", "--kv-cache");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-cache 'int4': valid are fp"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace condense
