// Tests for KV-cache projections (compressors/kv_project.h) on tiny random models:
//   - the PCA bases are orthonormal and ordered by captured energy;
//   - at full rank the projected model equals the original (MHA and GQA), at every position;
//   - closed form: the keys' mean is the calibration mean, and the centered keys' rank-r
//     reconstruction error over the calibration tokens equals the sum of the discarded
//     eigenvalues of their covariance (PCA), below a random orthonormal basis's; a projection
//     without means (older checkpoints) is the uncentered one and still exact at full rank;
//   - at rank r < head_dim the cache stores r coordinates (bytes scale by r / head_dim), and
//     decoding with the cache equals the projected model's full forward;
//   - ragged per-head ranks (a layer's KV heads at different ranks, MHA and GQA) give the same
//     logits as the training path's masks at full width, cache exactly the sum of the ranks
//     (packed), and decode equal to the full forward (fp) and close to it (int8);
//   - checkpoint entries round-trip through HDF5, and bad ranks and shapes are refused;
//   - training (MatryoshkaKV): the Cayley bases stay orthogonal to 1e-6 through AdamW steps
//     that move them, full rank stays exact, only the generators get gradients, sampled ranks
//     come from the nested set and act as truncation, and a checkpoint with generators loads as
//     the composed bases.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <tuple>

#include "compressors/kv_project.h"
#include "core/error.h"
#include "tests/test_support.h"
#include "model/generate.h"
#include "model/kv_cache.h"

namespace condense {
namespace {

LlamaConfig tiny(int64_t heads, int64_t kv) { return test::tiny_llama(heads, kv); }

// Keys after RoPE of every layer [B, Hkv, T, d], as the model computes them.
class KeyTap : public KVHook {
 public:
  Projected project(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) override {
    keys[layer].push_back(k.detach().clone());
    return {q, k, v};
  }
  at::Tensor restore(int64_t, const at::Tensor& out) override { return out; }
  std::map<int64_t, std::vector<at::Tensor>> keys;
};

TEST(KVProject, FullRankEqualsTheOriginalAndBasesAreOrthonormal) {
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 4}, {4, 2}}) {
    at::manual_seed(2);
    LlamaForCausalLM m(tiny(heads, kv));
    at::Tensor ids = at::randint(0, 61, {2, 20}, at::kLong);
    at::Tensor ref = test::eval_logits(m, ids);
    auto proj = KVProjection::from_calibration(m, test::token_windows(4));
    EXPECT_FALSE(m->kv_hook());  // calibration leaves no hook behind
    for (const auto& [name, u] : proj->entries()) {
      if (name.find("_mean") != std::string::npos) continue;
      at::Tensor eye = at::eye(8).expand({kv, 8, 8});
      EXPECT_LT((at::matmul(u.transpose(1, 2), u) - eye).abs().max().item<double>(), 1e-5) << name;
    }
    m->set_kv_hook(proj);
    EXPECT_LT((test::eval_logits(m, ids) - ref).abs().max().item<double>(), 1e-5) << heads << "/" << kv;
    proj->set_rank(4, 4);
    EXPECT_GT((test::eval_logits(m, ids) - ref).abs().max().item<double>(), 1e-3);
    // Without means (a checkpoint made before them): the uncentered projection, exact too.
    std::vector<std::pair<at::Tensor, at::Tensor>> bases;
    for (int64_t l = 0; l < 2; ++l)
      bases.emplace_back(proj->bases(l));
    m->set_kv_hook(std::make_shared<KVProjection>(m->config(), bases));
    EXPECT_LT((test::eval_logits(m, ids) - ref).abs().max().item<double>(), 1e-5) << heads << "/" << kv;
  }
}

TEST(KVProject, KeyReconstructionErrorIsTheDiscardedEigenvalues) {
  at::manual_seed(3);
  LlamaForCausalLM m(tiny(4, 2));
  std::vector<at::Tensor> win = test::token_windows(4);
  auto proj = KVProjection::from_calibration(m, win);
  auto tap = std::make_shared<KeyTap>();
  m->set_kv_hook(tap);
  {
    at::NoGradGuard g;
    for (const at::Tensor& ids : win) m->hidden({ids});
  }
  m->set_kv_hook(nullptr);
  at::Tensor k = at::cat(tap->keys[1], 2).to(at::kDouble);  // layer 1 [B, 2, T, 8]
  k = k.transpose(0, 1).reshape({2, -1, 8});                 // [heads, tokens, d]
  at::Tensor mean = k.mean(1);
  EXPECT_LT((proj->entries().at("kv_proj/layers.1.key_mean").to(at::kDouble) - mean).abs().max().item<double>(), 1e-5);
  EXPECT_GT(mean.abs().max().item<double>(), 1e-2);  // a mean worth removing
  k = k - mean.unsqueeze(1);
  at::Tensor u = proj->entries().at("kv_proj/layers.1.key").to(at::kDouble);
  at::Tensor eig = at::linalg_eigvalsh(at::matmul(k.transpose(1, 2), k)).flip({1});  // descending
  at::manual_seed(5);
  at::Tensor random = std::get<0>(at::linalg_qr(at::randn({2, 8, 8}, at::kDouble)));
  for (int64_t r : {2, 4, 6}) {
    auto error = [&](const at::Tensor& basis) {
      at::Tensor ur = basis.narrow(2, 0, r);
      at::Tensor rec = at::matmul(at::matmul(k, ur), ur.transpose(1, 2));
      return (k - rec).square().sum({1, 2});  // per head
    };
    at::Tensor expect = eig.narrow(1, r, 8 - r).sum(1);
    at::Tensor got = error(u);
    EXPECT_LT(((got - expect).abs() / expect).max().item<double>(), 1e-4) << r;
    EXPECT_TRUE((got < error(random)).all().item<bool>()) << r;
  }
}

TEST(KVProject, ReducedRankCachesFewerCoordinatesAndDecodesExactly) {
  at::manual_seed(4);
  LlamaForCausalLM m(tiny(4, 2));
  auto proj = KVProjection::from_calibration(m, test::token_windows(4));
  proj->set_rank(3, 5);
  m->set_kv_hook(proj);
  m->eval();
  at::NoGradGuard g;
  at::Tensor ids = at::randint(0, 61, {2, 21}, at::kLong);
  at::Tensor full = m->forward(ids);
  KVCache cache(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat));
  EXPECT_LT((test::decode_logits(m, ids, cache, 9) - full).abs().max().item<double>(), 1e-5);
  // 2 layers x 2 KV heads x (3 + 5) floats.
  EXPECT_EQ(cache.bytes_per_token(), 2 * 2 * (3 + 5) * 4);
  KVCache q8(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat), {KVCacheType::kInt8, 4});
  at::Tensor a = m->logits(prefill(m, ids, q8));
  EXPECT_LT((a - full).abs().max().item<double>(), 5e-2);
  EXPECT_EQ(q8.bytes_per_token(), 2 * 2 * (3 + 8 * 3 / 4.0 + 5 + 8));
}

TEST(KVProject, RaggedHeadRanksArePackedAndExact) {
  for (auto [heads, kv] : {std::pair<int64_t, int64_t>{4, 2}, {4, 4}}) {
    at::manual_seed(12);
    LlamaForCausalLM m(tiny(heads, kv));
    auto proj = KVProjection::from_calibration(m, test::token_windows(4));
    m->set_kv_hook(proj);
    m->eval();
    at::NoGradGuard g;
    at::Tensor ids = at::randint(0, 61, {2, 21}, at::kLong);
    // Reference: the masked path (sampled ranks zero the coordinates beyond each head's rank
    // at full width), an independent implementation of the same truncation.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
    std::vector<std::vector<int64_t>> keys, values;
    bool ragged = false;
    for (int draw = 0; draw < 50 && !ragged; ++draw) {
      proj->sample_ranks(gen);
      keys.clear();
      values.clear();
      for (int64_t l = 0; l < 2; ++l) {
        auto [kr, vr] = proj->sampled_ranks(l);
        keys.push_back(kr);
        values.push_back(vr);
        for (const auto* r : {&kr, &vr})
          ragged = ragged || std::any_of(r->begin(), r->end(), [&](int64_t x) { return x != (*r)[0]; });
      }
    }
    ASSERT_TRUE(ragged);
    at::Tensor masked = m->forward(ids);
    proj->set_head_ranks(keys, values);
    at::Tensor packed = m->forward(ids);
    EXPECT_LT((packed - masked).abs().max().item<double>(), 1e-5) << heads << "/" << kv;
    KVCache cache(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat));
    EXPECT_LT((test::decode_logits(m, ids, cache, 9) - packed).abs().max().item<double>(), 1e-5);
    double coords = 0;
    for (const auto* part : {&keys, &values})
      for (const auto& layer : *part)
        for (int64_t r : layer) coords += static_cast<double>(r);
    EXPECT_EQ(cache.bytes_per_token(), coords * 4);
    KVCache q8(m->config(), 2, 21, at::TensorOptions().dtype(at::kFloat), {KVCacheType::kInt8, 4});
    EXPECT_LT((m->logits(prefill(m, ids, q8)) - packed).abs().max().item<double>(), 5e-2);
  }
  // Bad head ranks are refused naming the range.
  LlamaForCausalLM m(tiny(4, 2));
  auto proj = KVProjection::from_calibration(m, test::token_windows(2));
  for (auto bad : {std::vector<std::vector<int64_t>>{{8, 9}, {8, 8}}, {{8, 0}, {8, 8}}, {{8}, {8}}}) {
    try {
      proj->set_head_ranks(bad, {{8, 8}, {8, 8}});
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KV projection"), std::string::npos) << e.what();
    }
  }
}

TEST(KVProject, CheckpointEntriesRoundTripAndBadInputIsRefused) {
  at::manual_seed(6);
  LlamaConfig c = tiny(4, 2);
  LlamaForCausalLM m(c);
  auto proj = KVProjection::from_calibration(m, test::token_windows(4));
  const std::string path = (std::filesystem::temp_directory_path() / "kv_project_test.h5").string();
  {
    H5File f = H5File::create(path);
    for (const auto& [name, t] : proj->entries()) f.write_tensor(name, t);
  }
  H5File f = H5File::open_read(path);
  auto back = KVProjection::from_file(f, c);
  ASSERT_TRUE(back);
  for (const auto& [name, t] : proj->entries()) EXPECT_TRUE(at::equal(back->entries().at(name), t)) << name;
  EXPECT_EQ(back->entries().size(), 8u);  // 2 layers x {key, value} x {basis, mean}
  try {
    KVProjection::from_file(f, tiny(4, 4));
    ADD_FAILURE() << "bases of 2 KV heads accepted for a model with 4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected [4, 8, 8]"), std::string::npos) << e.what();
  }
  for (int64_t bad : {0, 9}) {
    try {
      proj->set_rank(bad, 4);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--kv-rank " + std::to_string(bad) + ": valid is 1..8"),
                std::string::npos) << e.what();
    }
  }
  std::filesystem::remove(path);
}

TEST(KVProjectTraining, CayleyBasesStayOrthogonalAndFullRankStaysExact) {
  at::manual_seed(7);
  LlamaForCausalLM m(tiny(4, 2));
  for (auto& p : m->parameters()) p.requires_grad_(false);
  auto proj = KVProjection::from_calibration(m, test::token_windows(4));
  const auto pca = proj->entries();
  proj->make_trainable();
  m->set_kv_hook(proj);
  std::vector<at::Tensor> params;
  for (const auto& [name, p] : proj->parameters()) params.push_back(p);
  ASSERT_EQ(params.size(), 4u);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(0.05));
  at::Tensor ids = at::randint(0, 61, {2, 16}, at::kLong);
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  m->train();
  for (int step = 0; step < 20; ++step) {
    proj->sample_ranks(gen);
    at::Tensor logits = m->forward(ids);
    at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, 15).reshape({-1, 61}),
                                             ids.narrow(1, 1, 15).reshape({-1}));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  for (const auto& p : m->parameters()) EXPECT_FALSE(p.grad().defined());
  double moved = 0;
  for (const auto& [name, u] : proj->entries()) {
    if (name.find("_mean") != std::string::npos) continue;
    at::Tensor ud = u.to(at::kDouble);
    at::Tensor eye = at::eye(8, at::kDouble).expand({2, 8, 8});
    EXPECT_LT((at::matmul(ud.transpose(1, 2), ud) - eye).abs().max().item<double>(), 1e-6) << name;
    moved = std::max(moved, (u - pca.at(name)).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-2);  // training did move the bases
  at::Tensor test_ids = at::randint(0, 61, {2, 20}, at::kLong);
  proj->set_rank(8, 8);
  at::Tensor with = test::eval_logits(m, test_ids);
  m->set_kv_hook(nullptr);
  EXPECT_LT((with - test::eval_logits(m, test_ids)).abs().max().item<double>(), 1e-5);

  // A checkpoint with generators loads as the composed bases.
  const std::string path = (std::filesystem::temp_directory_path() / "kv_project_trained.h5").string();
  {
    H5File f = H5File::create(path);
    for (const auto& [name, t] : proj->state()) f.write_tensor(name, t);
    for (const auto& [name, t] : proj->parameters()) f.write_tensor(name, t.detach());
  }
  auto back = KVProjection::from_file(H5File::open_read(path), m->config());
  for (const auto& [name, t] : proj->entries())
    EXPECT_LT((back->entries().at(name) - t).abs().max().item<double>(), 1e-6) << name;
  std::filesystem::remove(path);
}

TEST(KVProjectTraining, SampledRanksAreNestedTruncations) {
  at::manual_seed(8);
  LlamaForCausalLM m(tiny(4, 2));
  auto proj = KVProjection::from_calibration(m, test::token_windows(4));
  const auto bases = proj->entries();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  std::set<int64_t> seen;
  at::Tensor q = at::randn({1, 4, 5, 8}), k = at::randn({1, 2, 5, 8}), v = at::randn({1, 2, 5, 8});
  for (int trial = 0; trial < 30; ++trial) {
    proj->sample_ranks(gen);
    for (int64_t layer = 0; layer < 2; ++layer) {
      auto [kr, vr] = proj->sampled_ranks(layer);
      KVHook::Projected p = proj->project(layer, q, k, v);
      at::Tensor uk = bases.at("kv_proj/layers." + std::to_string(layer) + ".key");
      at::Tensor uv = bases.at("kv_proj/layers." + std::to_string(layer) + ".value");
      at::Tensor mk = bases.at("kv_proj/layers." + std::to_string(layer) + ".key_mean");
      at::Tensor mv = bases.at("kv_proj/layers." + std::to_string(layer) + ".value_mean");
      for (int64_t h = 0; h < 2; ++h) {
        for (auto [ranks, x, u, mu, got] :
             {std::tuple{kr, k, uk, mk, p.k}, std::tuple{vr, v, uv, mv, p.v}}) {
          const int64_t r = ranks[h];
          seen.insert(r);
          ASSERT_TRUE(r == 2 || r == 4 || r == 6 || r == 8) << r;
          at::Tensor want = at::matmul(x.select(1, h) - mu[h], u[h].narrow(1, 0, r));
          EXPECT_LT((got.select(1, h).narrow(-1, 0, r) - want).abs().max().item<double>(), 1e-5);
          if (r < 8) EXPECT_EQ(got.select(1, h).narrow(-1, r, 8 - r).abs().max().item<double>(), 0.0);
        }
      }
      // Query heads 0, 1 read KV head 0 and 2, 3 KV head 1: projected with that head's basis.
      at::Tensor q_want = at::matmul(q.select(1, 3), uk[1].narrow(1, 0, kr[1]));
      EXPECT_LT((p.q.select(1, 3).narrow(-1, 0, kr[1]) - q_want).abs().max().item<double>(), 1e-5);
    }
  }
  EXPECT_EQ(seen, (std::set<int64_t>{2, 4, 6, 8}));
  proj->set_rank(8, 8);  // a fixed rank ends the sampled masks
  EXPECT_EQ(proj->sampled_ranks(0).first, std::vector<int64_t>({8, 8}));
}

}  // namespace
}  // namespace condense
