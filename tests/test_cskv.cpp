// Tests for the low-rank KV cache (compressors/cskv.h, CSKV) on tiny random models:
//   - at full rank (min(hidden, kv_heads x head_dim)) the model equals the original (MHA and
//     GQA, plain and activation-aware SVD);
//   - closed form: the factors' error is the discarded singular values of W^T (svd), of
//     diag(s) W^T with s = rms(x)^0.5 from the calibration statistics (asvd), and the discarded
//     eigenvalues of the output covariance W G W^T (whiten), the least of the three on the data;
//   - the cache stores the latents (bytes per token = layers x (r_k + r_v) floats), and
//     decoding with it, chunked or token by token, fp or int8, equals the full forward;
//   - fold_into() gives a plain Llama with the same logits;
//   - training: the reconstruction loss is the layer-wise relative error on the recorded
//     inputs, only the factors get gradients, and Adam steps lower it;
//   - checkpoint entries round-trip through HDF5, and bad ranks and shapes are refused.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>

#include "compressors/calibration.h"
#include "compressors/cskv.h"
#include "core/error.h"
#include "model/generate.h"
#include "model/kv_cache.h"
#include "tests/test_support.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t heads, int64_t kv) { return test::tiny_llama(heads, kv); }

std::shared_ptr<LowRankKV> low_rank(LlamaForCausalLM& m, int64_t rk, int64_t rv,
                                    const std::string& init) {
  CalibrationStats stats;
  if (init != "svd") stats = calibrate(m, test::token_windows(4), low_rank_kv_gram_weights(m->config()));
  return LowRankKV::from_model(m, {rk, rv, init}, init == "svd" ? nullptr : &stats);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(Cskv, FullRankEqualsTheOriginal) {
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 4}, {4, 2}}) {
    for (std::string init : {"svd", "asvd", "whiten"}) {
      at::manual_seed(2);
      LlamaForCausalLM m(tiny(heads, kv));
      at::Tensor ids = at::randint(0, 61, {2, 20}, at::kLong);
      at::Tensor ref = test::eval_logits(m, ids);
      const int64_t full = std::min<int64_t>(32, kv * 8);
      m->set_kv_hook(low_rank(m, full, full, init));
      EXPECT_LT(max_diff(test::eval_logits(m, ids), ref), 1e-5) << heads << "/" << kv << " " << init;
      m->set_kv_hook(low_rank(m, 3, 5, init));
      EXPECT_GT(max_diff(test::eval_logits(m, ids), ref), 1e-3);
    }
  }
}

TEST(Cskv, FactorErrorIsTheDiscardedSingularValues) {
  at::manual_seed(3);
  LlamaForCausalLM m(tiny(4, 4));
  CalibrationStats stats = calibrate(m, test::token_windows(4), low_rank_kv_gram_weights(m->config()));
  const int64_t r = 12;
  std::map<std::string, double> data_error;  // init -> sum over layers of ||X (W^T - A B)||^2
  for (std::string init : {"svd", "asvd", "whiten"}) {
    auto low = LowRankKV::from_model(m, {r, r, init}, &stats);
    std::map<std::string, at::Tensor> e = low->entries();
    for (int64_t l = 0; l < 2; ++l) {
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn.q_proj.weight";
      at::Tensor wt = m->model->layer_list[l]->self_attn->k_proj->weight.detach().to(at::kDouble).t();
      at::Tensor ab = at::matmul(e.at("cskv/layers." + std::to_string(l) + ".key_down"),
                                 e.at("cskv/layers." + std::to_string(l) + ".key_up")).to(at::kDouble);
      at::Tensor gram = stats.input_grams.at(name);
      at::Tensor diff = wt - ab;
      const double layer_error = at::trace(at::matmul(at::matmul(diff.t(), gram), diff)).item<double>();
      data_error[init] += layer_error;
      if (init == "whiten") {
        // The best rank-r approximation of the outputs: the discarded eigenvalues of W G W^T.
        at::Tensor ev = at::linalg_eigvalsh(at::matmul(at::matmul(wt.t(), gram), wt));
        EXPECT_NEAR(layer_error, ev.narrow(0, 0, ev.size(0) - r).sum().item<double>(),
                    1e-6 * ev.sum().item<double>()) << "layer " << l;
        continue;
      }
      at::Tensor s = at::ones({32}, at::kDouble);
      if (init == "asvd") s = (stats.input_sq_norms.at(name) / static_cast<double>(stats.tokens)).sqrt().sqrt();
      at::Tensor err = (diff * s.unsqueeze(1)).pow(2).sum();
      at::Tensor sv = at::linalg_svdvals(wt * s.unsqueeze(1));
      at::Tensor discarded = sv.narrow(0, r, sv.size(0) - r).pow(2).sum();
      EXPECT_NEAR(err.item<double>(), discarded.item<double>(), 1e-6 * sv.pow(2).sum().item<double>())
          << "layer " << l << " " << init;
    }
  }
  // whiten is optimal on the calibration data.
  EXPECT_LE(data_error["whiten"], data_error["svd"] * (1 + 1e-9));
  EXPECT_LE(data_error["whiten"], data_error["asvd"] * (1 + 1e-9));
}

TEST(Cskv, CacheStoresLatentsAndDecodesExactly) {
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 2}, {4, 4}}) {
    at::manual_seed(4);
    LlamaForCausalLM m(tiny(heads, kv));
    m->set_kv_hook(low_rank(m, 5, 3, "whiten"));
    m->eval();
    at::NoGradGuard g;
    at::Tensor ids = at::randint(0, 61, {2, 21}, at::kLong);
    // 21 queries rebuild the values; blocks of at most 16 (the prefix of 9, then one token at a
    // time, and the 12-token forward) read the value latent and map attention's output up.
    ASSERT_GT(ids.size(1), LowRankKV::kLatentValueQueries);
    at::Tensor full = m->forward(ids);
    EXPECT_LT(max_diff(m->forward(ids.narrow(1, 0, 12)), full.narrow(1, 0, 12)), 1e-5);
    KVCache cache(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat));
    EXPECT_LT(max_diff(test::decode_logits(m, ids, cache, 9), full), 1e-5) << heads << "/" << kv;
    // 2 layers x one latent of 5 + 3 floats (not 2 KV heads x 2 x 8).
    EXPECT_EQ(cache.bytes_per_token(), 2 * (5 + 3) * 4);
    // int8 latents (keys per channel in groups of 4 positions): chunked prefill = token by token.
    KVCache q8(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat), {KVCacheType::kInt8, 4});
    at::Tensor a = m->logits(prefill(m, ids, q8));
    EXPECT_LT(max_diff(a, full), 5e-2);
    KVCache q8b(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat), {KVCacheType::kInt8, 4});
    EXPECT_LT(max_diff(test::decode_logits(m, ids, q8b, 0), a), 1e-5);
    EXPECT_EQ(q8.bytes_per_token(), 2 * (5 + 8 * 5 / 4.0 + 3 + 8));
  }
}

TEST(Cskv, RecentWindowIsExactAndDecodesLikeTheForward) {
  at::manual_seed(8);
  LlamaForCausalLM m(tiny(4, 2));
  at::Tensor ids = at::randint(0, 61, {2, 21}, at::kLong);
  at::Tensor original = test::eval_logits(m, ids);
  auto low = low_rank(m, 3, 5, "whiten");
  m->set_kv_hook(low);
  at::Tensor rebuilt = test::eval_logits(m, ids);
  // A window covering every position reads only original keys and values: the original model.
  low->set_window(21);
  EXPECT_LT(max_diff(test::eval_logits(m, ids), original), 1e-5);
  // Window 1: each query reads its own position exactly and the rest rebuilt.
  for (int64_t w : {1, 4}) {
    low->set_window(w);
    at::Tensor full = test::eval_logits(m, ids);
    EXPECT_GT(max_diff(full, rebuilt), 1e-4) << w;
    EXPECT_GT(max_diff(full, original), 1e-4) << w;
    at::NoGradGuard g;
    for (KVCacheOptions kind : {KVCacheOptions{}, KVCacheOptions{KVCacheType::kInt8, 4}}) {
      KVCache cache(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat), kind);
      const bool fp = kind.type == KVCacheType::kFp;  // int8 appends may not cross a group
      EXPECT_LT(max_diff(test::decode_logits(m, ids, cache, fp ? 9 : 0), full), fp ? 1e-5 : 5e-2) << w;
      // The latents per token, plus w - 1 positions of 2 KV heads x 8 keys and values per layer.
      EXPECT_EQ(cache.window_bytes(), 2 * (w - 1) * 2 * 2 * 8 * 4) << w;
    }
  }
  try {
    low->set_window(-1);
    ADD_FAILURE() << "negative window";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-window -1: must be >= 0"), std::string::npos) << e.what();
  }
}

TEST(Cskv, FoldedPlainLlamaMatches) {
  at::manual_seed(5);
  LlamaForCausalLM m(tiny(4, 2));
  auto low = low_rank(m, 6, 4, "asvd");
  m->set_kv_hook(low);
  at::Tensor ids = at::randint(0, 61, {2, 20}, at::kLong);
  at::Tensor hooked = test::eval_logits(m, ids);
  low->fold_into(m);
  m->set_kv_hook(nullptr);
  EXPECT_LT(max_diff(test::eval_logits(m, ids), hooked), 1e-5);
}

TEST(CskvTraining, ReconstructionLossTrainsOnlyTheFactors) {
  at::manual_seed(6);
  LlamaForCausalLM m(tiny(4, 2));
  for (auto& p : m->parameters()) p.requires_grad_(false);
  auto low = low_rank(m, 4, 4, "svd");
  low->make_trainable();
  m->set_kv_hook(low);
  at::Tensor ids = at::randint(0, 61, {2, 16}, at::kLong);
  auto loss_now = [&] {
    {
      at::NoGradGuard g;
      low->record_inputs(true);
      m->hidden({ids});
    }
    at::Tensor loss = low->reconstruction_loss(m);
    low->record_inputs(false);
    return loss;
  };
  // The loss is the mean over layers of the relative errors of keys and values on the inputs
  // the compressed model's attention saw.
  std::vector<at::Tensor> inputs;
  class Tap : public ProjectionHook {
   public:
    bool observing() const override { return true; }
    void observe(const std::string& name, const at::Tensor& x) override {
      if (name.find("q_proj") != std::string::npos) seen.push_back(x.detach());
    }
    std::vector<at::Tensor> seen;
  };
  auto tap = std::make_shared<Tap>();
  m->set_projection_hook(tap);
  at::Tensor loss0 = loss_now();
  m->set_projection_hook(nullptr);
  ASSERT_EQ(tap->seen.size(), 2u);
  double expect = 0;
  for (int64_t l = 0; l < 2; ++l) {
    auto& attn = m->model->layer_list[l]->self_attn;
    std::map<std::string, at::Tensor> e = low->entries();
    const std::string p = "cskv/layers." + std::to_string(l) + ".";
    for (auto [w, part] : {std::pair{attn->k_proj->weight, "key"}, {attn->v_proj->weight, "value"}}) {
      at::Tensor x = tap->seen[l];
      at::Tensor target = at::linear(x, w);
      at::Tensor rebuilt = at::matmul(at::matmul(x, e.at(p + part + "_down")), e.at(p + part + "_up"));
      expect += ((rebuilt - target).pow(2).sum() / target.pow(2).sum()).item<double>();
    }
  }
  EXPECT_NEAR(loss0.item<double>(), expect / 4, 1e-5 * expect);
  loss0.backward();
  for (auto& p : m->parameters()) EXPECT_FALSE(p.grad().defined());
  std::vector<at::Tensor> params;
  for (auto& [name, t] : low->parameters()) {
    EXPECT_TRUE(t.grad().defined() && t.grad().abs().sum().item<double>() > 0) << name;
    params.push_back(t);
  }
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 30; ++i) {
    opt.zero_grad();
    loss_now().backward();
    opt.step();
  }
  EXPECT_LT(loss_now().item<double>(), 0.8 * loss0.item<double>());
}

TEST(Cskv, CheckpointEntriesRoundTripAndBadInputIsRefused) {
  at::manual_seed(7);
  LlamaConfig c = tiny(4, 2);
  LlamaForCausalLM m(c);
  auto low = low_rank(m, 6, 4, "asvd");
  const std::string path = (std::filesystem::temp_directory_path() / "cskv_test.h5").string();
  {
    H5File f = H5File::create(path);
    for (const auto& [name, t] : low->entries()) f.write_tensor(name, t);
  }
  H5File f = H5File::open_read(path);
  auto back = LowRankKV::from_file(f, c);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->key_rank(), 6);
  EXPECT_EQ(back->value_rank(), 4);
  for (const auto& [name, t] : low->entries()) EXPECT_TRUE(at::equal(back->entries().at(name), t)) << name;
  try {
    LowRankKV::from_file(f, tiny(4, 4));
    ADD_FAILURE() << "factors for 2 KV heads accepted for a model with 4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("should be [32, r] and [r, 32]"), std::string::npos) << e.what();
  }
  for (auto [rk, rv, option] : {std::tuple<int64_t, int64_t, std::string>{0, 4, "--key-rank 0"},
                                {4, 17, "--value-rank 17"}}) {
    try {
      check_low_rank_kv(c, {rk, rv, "svd"});
      ADD_FAILURE() << option;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(option + ": valid is 1..16"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace condense
