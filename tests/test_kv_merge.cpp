// Tests for KV-head merging (compressors/kv_merge.h) on tiny random models:
//   - closed form: when the heads of a group are related by maps the merge can represent (keys:
//     a complex scale per RoPE frequency pair, which commutes with RoPE, and any real map of the
//     channels RoPE passes through with a partial_rotary_factor; values: any d x d map), the svd
//     merge reproduces the original model's logits at every position (so RoPE is respected),
//     while mean pooling does not;
//   - mean pooling is the mean of the group's K/V rows with q/o and every other tensor unchanged;
//   - on a generic model the svd merge is no worse than mean pooling (KL to the original);
//   - the Gram matrices calibration records are X^T X;
//   - option errors name kv_heads / init and the valid range.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <regex>
#include <tuple>

#include "compressors/calibration.h"
#include "compressors/kv_merge.h"
#include "core/error.h"
#include "tests/test_support.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t heads, int64_t kv) { return test::tiny_llama(heads, kv); }

std::string w(int64_t layer, const char* proj) {
  return "model.layers." + std::to_string(layer) + ".self_attn." + proj + ".weight";
}

double kl(const at::Tensor& ref, const at::Tensor& got) {
  at::Tensor p = at::log_softmax(ref, -1), q = at::log_softmax(got, -1);
  return (p.exp() * (p - q)).sum(-1).mean().item<double>();
}

CalibrationStats grams(LlamaForCausalLM& m) {
  return calibrate(m, test::token_windows(4), kv_merge_gram_weights(m->config()));
}

// Makes every odd KV head a representable image of the even one before it: keys by a complex
// scale per frequency pair (i, i + r/2) of the r rotated channels and a random real map of the
// others, values by a random d x d matrix.
void make_pairs_mergeable(LlamaForCausalLM& m) {
  const LlamaConfig& c = m->config();
  const int64_t d = c.head_size(), r = c.rotary_dim(), half = r / 2;
  at::NoGradGuard g;
  auto params = m->named_parameters();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    at::Tensor wk = *params.find(w(l, "k_proj"));
    at::Tensor wv = *params.find(w(l, "v_proj"));
    for (int64_t h = 0; h + 1 < c.kv_heads(); h += 2) {
      at::Tensor k0 = wk.narrow(0, h * d, d), k1 = wk.narrow(0, (h + 1) * d, d);
      at::Tensor a = at::randn({half}) , b = at::randn({half});
      at::Tensor re = k0.narrow(0, 0, half), im = k0.narrow(0, half, half);
      k1.narrow(0, 0, half).copy_(a.unsqueeze(1) * re - b.unsqueeze(1) * im);
      k1.narrow(0, half, half).copy_(b.unsqueeze(1) * re + a.unsqueeze(1) * im);
      if (r < d) k1.narrow(0, r, d - r).copy_(at::matmul(at::randn({d - r, d - r}), k0.narrow(0, r, d - r)));
      wv.narrow(0, (h + 1) * d, d).copy_(at::matmul(at::randn({d, d}), wv.narrow(0, h * d, d)));
    }
  }
}

TEST(KVMerge, SvdMergeOfRepresentableHeadsKeepsLogitsAtEveryPosition) {
  for (auto [heads, kv, rotary] : {std::tuple<int64_t, int64_t, double>{4, 4, 1.0}, {8, 4, 1.0}, {4, 4, 0.5}}) {
    at::manual_seed(3);
    LlamaConfig config = tiny(heads, kv);
    config.partial_rotary_factor = rotary;  // 0.5: RoPE over half of each head (Phi-4-mini's kind)
    config.finalize();
    LlamaForCausalLM m(config);
    make_pairs_mergeable(m);
    at::Tensor ids = at::randint(0, 61, {2, 24}, at::kLong);
    at::Tensor ref = test::eval_logits(m, ids);
    CalibrationStats st = grams(m);
    LlamaForCausalLM svd = merge_kv_heads(m, {kv / 2, "svd"}, &st);
    EXPECT_EQ(svd->config().kv_heads(), kv / 2);
    EXPECT_EQ(svd->config().num_attention_heads, heads);
    EXPECT_LT((test::eval_logits(svd, ids) - ref).abs().max().item<double>(), 2e-5)
        << heads << "/" << kv << " rotary " << rotary;
    LlamaForCausalLM mean = merge_kv_heads(m, {kv / 2, "mean"}, nullptr);
    EXPECT_GT((test::eval_logits(mean, ids) - ref).abs().max().item<double>(), 1e-2);
    // The source model is unchanged.
    EXPECT_TRUE(at::equal(test::eval_logits(m, ids), ref));
  }
}

TEST(KVMerge, MeanPoolingAveragesTheGroupAndCopiesTheRest) {
  at::manual_seed(5);
  LlamaForCausalLM m(tiny(8, 8));
  LlamaForCausalLM out = merge_kv_heads(m, {2, "mean"}, nullptr);
  const int64_t d = m->config().head_size();
  auto a = m->named_parameters();
  auto b = out->named_parameters();
  for (const auto& item : b) {
    const std::string& name = item.key();
    const at::Tensor& src = *a.find(name);
    if (name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos) {
      ASSERT_EQ(item.value().size(0), 2 * d) << name;
      at::Tensor expect = src.view({2, 4, d, -1}).mean(1).reshape({2 * d, -1});
      EXPECT_LT((item.value() - expect).abs().max().item<double>(), 1e-6) << name;
    } else {
      EXPECT_TRUE(at::equal(item.value(), src)) << name;
    }
  }
}

TEST(KVMerge, SvdIsNoWorseThanMeanOnAGenericModel) {
  at::manual_seed(9);
  LlamaForCausalLM m(tiny(8, 8));
  CalibrationStats st = grams(m);
  at::Tensor ids = at::randint(0, 61, {4, 16}, at::kLong);
  at::Tensor ref = test::eval_logits(m, ids);
  for (int64_t kn : {4, 2, 1}) {
    LlamaForCausalLM svd = merge_kv_heads(m, {kn, "svd"}, &st);
    LlamaForCausalLM mean = merge_kv_heads(m, {kn, "mean"}, nullptr);
    EXPECT_LT(kl(ref, test::eval_logits(svd, ids)), kl(ref, test::eval_logits(mean, ids))) << kn;
  }
}

TEST(KVMerge, CalibrationRecordsInputGrams) {
  at::manual_seed(4);
  LlamaForCausalLM m(tiny(4, 2));
  std::vector<at::Tensor> win = test::token_windows(2);
  // The k_proj input of layer 0 is the first RMSNorm of the embeddings.
  at::Tensor x;
  {
    at::NoGradGuard g;
    std::vector<at::Tensor> xs;
    for (const at::Tensor& ids : win) {
      xs.push_back(m->model->layer_list[0]->input_layernorm(m->embed(ids)).reshape({-1, 32}));
    }
    x = at::cat(xs).to(at::kDouble);
  }
  CalibrationStats st = calibrate(m, win, {w(0, "k_proj")});
  ASSERT_EQ(st.input_grams.count(w(0, "k_proj")), 1u);
  EXPECT_EQ(st.input_grams.size(), 1u);
  at::Tensor expect = at::matmul(x.t(), x);
  EXPECT_LT((st.input_grams.at(w(0, "k_proj")) - expect).abs().max().item<double>(),
            1e-4 * expect.abs().max().item<double>());
  EXPECT_THROW(calibrate(m, win, {"model.layers.9.self_attn.k_proj.weight"}), Error);
}

void expect_error(const std::function<void()>& f, const std::string& pattern) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one matching " << pattern;
  } catch (const Error& e) {
    EXPECT_TRUE(std::regex_search(e.what(), std::regex(pattern))) << e.what();
  }
}

TEST(KVMerge, OptionErrorsNameTheKeyAndRange) {
  LlamaConfig c = tiny(8, 4);
  c.finalize();
  expect_error([&] { check_kv_merge(c, {0, "svd"}); }, "kv_heads 0.*valid is 1\\.\\.3");
  expect_error([&] { check_kv_merge(c, {4, "svd"}); }, "kv_heads 4.*4 KV heads");
  expect_error([&] { check_kv_merge(c, {3, "svd"}); }, "kv_heads 3: must divide.*4");
  expect_error([&] { check_kv_merge(c, {2, "pca"}); }, "init 'pca'.*svd.*mean");
  at::manual_seed(1);
  LlamaForCausalLM m(c);
  expect_error([&] { merge_kv_heads(m, {2, "svd"}, nullptr); }, "needs calibration");
  CalibrationStats empty;
  expect_error([&] { merge_kv_heads(m, {2, "svd"}, &empty); }, "no input Gram matrix");
}

}  // namespace
}  // namespace condense
