// Tests for trainer/: AdamW and SGD against the textbook update, weight-decay groups, the schedule's
// closed form, global-norm clipping, checkpoint save/load round trip and pruning.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "trainer/adamw.h"
#include "io/atomic_file.h"
#include "trainer/checkpoint.h"
#include "trainer/stop_signal.h"
#include "trainer/grad_clip.h"
#include "trainer/lr_schedule.h"
#include "trainer/sgd.h"
#include "trainer/sign_descent.h"

namespace condense {
namespace fs = std::filesystem;

TEST(AdamW, MatchesTextbookUpdateWithDecoupledDecay) {
  at::manual_seed(0);
  at::Tensor w = at::randn({3, 4}).set_requires_grad(true);
  at::Tensor b = at::randn({4}).set_requires_grad(true);
  at::Tensor w_ref = w.detach().clone(), b_ref = b.detach().clone();
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  AdamW opt({{"w", w}, {"b", b}}, o);
  at::Tensor mw = at::zeros_like(w_ref), vw = at::zeros_like(w_ref);
  at::Tensor mb = at::zeros_like(b_ref), vb = at::zeros_like(b_ref);
  for (int t = 1; t <= 5; ++t) {
    double lr = 1e-2 * t;
    at::Tensor gw = at::randn({3, 4}), gb = at::randn({4});
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.step(lr);
    auto ref = [&](at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g, double wd) {
      p.mul_(1 - lr * wd);
      m = 0.9 * m + 0.1 * g;
      v = 0.95 * v + 0.05 * g * g;
      double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.95, t);
      p -= lr / bc1 * m / (v.sqrt() / std::sqrt(bc2) + 1e-8);
    };
    ref(w_ref, mw, vw, gw, 0.1);
    ref(b_ref, mb, vb, gb, 0.0);  // rank-1 parameters are not decayed
  }
  EXPECT_TRUE(at::allclose(w.detach(), w_ref, 1e-5, 1e-6)) << (w - w_ref).abs().max();
  EXPECT_TRUE(at::allclose(b.detach(), b_ref, 1e-5, 1e-6));
  auto state = opt.state();
  EXPECT_EQ(state.at("w/step").item<float>(), 5.0f);
}

// An optimizer restored from another's state() continues bit for bit; a state missing `slot`
// is refused.
template <typename Opt, typename Options>
void expect_state_round_trip(Options options, const std::string& slot) {
  at::manual_seed(1);
  at::Tensor w = at::randn({2, 2}).set_requires_grad(true);
  Opt a({{"w", w}}, options);
  w.mutable_grad() = at::randn({2, 2});
  a.step(0.1);
  at::Tensor w2 = w.detach().clone().set_requires_grad(true);
  Opt b({{"w", w2}}, options);
  b.load_state(a.state());
  at::Tensor g = at::randn({2, 2});
  w.mutable_grad() = g.clone();
  w2.mutable_grad() = g.clone();
  a.step(0.1);
  b.step(0.1);
  EXPECT_TRUE(at::equal(w, w2));
  std::map<std::string, at::Tensor> partial = a.state();
  ASSERT_EQ(partial.erase("w/" + slot), 1u);
  EXPECT_THROW(b.load_state(partial), Error);
}

TEST(AdamW, StateRoundTripsExactly) {
  expect_state_round_trip<AdamW>(AdamWOptions{}, "exp_avg");
}

TEST(Sgd, MatchesTorchSgdMomentumWithDecoupledDecay) {
  at::manual_seed(2);
  at::Tensor w = at::randn({3, 4}).set_requires_grad(true);
  at::Tensor b = at::randn({4}).set_requires_grad(true);
  at::Tensor w_ref = w.detach().clone(), b_ref = b.detach().clone();
  Sgd opt({{"w", w}, {"b", b}}, SgdOptions{0.9, 0.1});
  at::Tensor bw, bb;  // torch.optim.SGD: the buffer is the first gradient, then mu * buf + g
  for (int t = 1; t <= 5; ++t) {
    double lr = 0.05 * t;
    at::Tensor gw = at::randn({3, 4}), gb = at::randn({4});
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.step(lr);
    bw = t == 1 ? gw : 0.9 * bw + gw;
    bb = t == 1 ? gb : 0.9 * bb + gb;
    w_ref = w_ref * (1 - lr * 0.1) - lr * bw;
    b_ref = b_ref - lr * bb;  // rank-1 parameters are not decayed
  }
  EXPECT_TRUE(at::allclose(w.detach(), w_ref, 1e-5, 1e-6)) << (w - w_ref).abs().max();
  EXPECT_TRUE(at::allclose(b.detach(), b_ref, 1e-5, 1e-6)) << (b - b_ref).abs().max();
  // Without momentum it is plain SGD.
  at::Tensor v = at::randn({2}).set_requires_grad(true);
  at::Tensor v0 = v.detach().clone();
  Sgd plain({{"v", v}}, SgdOptions{0.0, 0.0});
  v.mutable_grad() = at::ones({2});
  plain.step(0.5);
  EXPECT_TRUE(at::allclose(v.detach(), v0 - 0.5));
}

TEST(SignDescent, StepsBySignWithDecoupledDecayOnMatricesOnly) {
  at::Tensor w = at::randn({3, 4}).set_requires_grad(true);
  at::Tensor b = at::randn({4}).set_requires_grad(true);
  at::Tensor w0 = w.detach().clone(), b0 = b.detach().clone();
  SignDescent opt({{"w", w}, {"b", b}}, 0.1);
  at::Tensor gw = at::randn({3, 4}), gb = at::randn({4});
  gb[0] = 0;  // sign(0) = 0: no move
  w.mutable_grad() = gw.clone();
  b.mutable_grad() = gb.clone();
  opt.step(0.01);
  EXPECT_TRUE(at::allclose(w.detach(), w0 * (1 - 0.01 * 0.1) - 0.01 * gw.sign(), 0, 1e-7));
  EXPECT_TRUE(at::allclose(b.detach(), b0 - 0.01 * gb.sign(), 0, 1e-7));
  EXPECT_EQ(b.detach()[0].item<float>(), b0[0].item<float>());
  EXPECT_TRUE(opt.state().empty());
  TrainConfig tc;
  tc.optimizer = "sign";
  EXPECT_TRUE(make_optimizer(tc, {{"w", w}})->state().empty());
}

TEST(Sgd, StateRoundTripsAndRefusesAdamWState) {
  expect_state_round_trip<Sgd>(SgdOptions{}, "momentum_buffer");
  at::Tensor w = at::randn({2, 2}).set_requires_grad(true);
  Sgd sgd({{"w", w}}, {});
  AdamW adam({{"w", w}}, {});
  try {
    sgd.load_state(adam.state());
    FAIL() << "SGD accepted AdamW state";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w/momentum_buffer"), std::string::npos) << e.what();
  }
  TrainConfig tc;
  tc.optimizer = "lion";
  EXPECT_THROW(make_optimizer(tc, {{"w", w}}), Error);
  tc.optimizer = "sgd";
  EXPECT_EQ(make_optimizer(tc, {{"w", w}})->state().count("w/momentum_buffer"), 1u);
}

TEST(LrSchedule, WarmupThenCosine) {
  LrSchedule s{1.0, 0.1, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);  // halfway: min + (max-min)/2
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  EXPECT_NEAR(s.at(500), 0.1, 1e-12);
}

TEST(GradClip, ScalesToMaxNorm) {
  at::Tensor a = at::zeros({2}).set_requires_grad(true), b = at::zeros({1}).set_requires_grad(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 0.6f, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<float>(), 0.8f, 1e-5);
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0), 1.0, 1e-5);  // below max: unchanged
  EXPECT_NEAR(b.grad()[0].item<float>(), 0.8f, 1e-5);
}

static LlamaConfig tiny_config() {
  LlamaConfig c;
  c.vocab_size = 64; c.hidden_size = 16; c.intermediate_size = 24; c.num_hidden_layers = 1;
  c.num_attention_heads = 2; c.max_position_embeddings = 32;
  return c;
}

TEST(Checkpoint, SaveLoadPruneAndLatest) {
  fs::path dir = fs::temp_directory_path() / ("condense_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  LlamaConfig c = tiny_config();
  torch::manual_seed(0);
  LlamaForCausalLM m(c);
  CheckpointManager mgr(dir.string(), 2);
  EXPECT_FALSE(mgr.latest().has_value());
  TrainingState st;
  for (int64_t s : {10, 20, 30}) {
    st.step = s;
    st.cursor.position = s * 3;
    mgr.save(m, nullptr, st, "kind: pretrain\n", "tokenizer-bytes");
  }
  EXPECT_FALSE(fs::exists(dir / "step_000010.h5"));  // pruned beyond keep=2
  EXPECT_TRUE(fs::exists(dir / "step_000020.h5"));
  ASSERT_TRUE(mgr.latest().has_value());
  EXPECT_EQ(fs::path(*mgr.latest()).filename(), "step_000030.h5");
  Checkpoint ck = Checkpoint::open(*mgr.latest());
  EXPECT_EQ(ck.state().step, 30);
  EXPECT_EQ(ck.state().cursor.position, 90);
  EXPECT_EQ(ck.tokenizer_bytes(), "tokenizer-bytes");
  LlamaForCausalLM m2 = load_model(*mgr.latest());
  at::Tensor ids = at::randint(0, 64, {1, 5}, at::kLong);
  EXPECT_TRUE(at::equal(m->forward(ids), m2->forward(ids)));

  // A model of another shape is refused with the tensor named.
  LlamaConfig other = c;
  other.intermediate_size = 32;
  LlamaForCausalLM m3(other);
  try {
    ck.load_model(m3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight"), std::string::npos) << e.what();
  }
  // A truncated checkpoint is a clear error, and the previous one is untouched.
  fs::copy_file(*mgr.latest(), dir / "broken.h5");
  fs::resize_file(dir / "broken.h5", 1000);
  EXPECT_THROW(Checkpoint::open((dir / "broken.h5").string()), Error);
  EXPECT_THROW(Checkpoint::open((dir / "missing.h5").string()), Error);
  // ... the previous one really is untouched: it still opens and loads the same model.
  EXPECT_EQ(Checkpoint::open(*mgr.latest()).state().step, 30);
  LlamaForCausalLM m4 = load_model(*mgr.latest());
  EXPECT_TRUE(at::equal(m->forward(ids), m4->forward(ids)));
  fs::remove_all(dir);
}

// A run resumed from an earlier checkpoint (its `latest` could not be written past step 20)
// finds step 40 of the future it abandoned: pruning keeps the newest `keep` up to its own step,
// never the file `latest` names, and leaves the newer one until the run replaces it.
TEST(Checkpoint, PruningKeepsLatestWhenANewerOrphanExists) {
  fs::path dir = fs::temp_directory_path() / ("condense_orphan_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  LlamaConfig c = tiny_config();
  LlamaForCausalLM m(c);
  TrainingState st;
  CheckpointManager first(dir.string(), 3);
  for (int64_t s : {10, 20, 40}) {
    st.step = s;
    first.save(m, nullptr, st, "kind: pretrain\n", "tok");
  }
  write_text_atomically((dir / "latest").string(), "step_000020.h5\n");  // as if 40's failed
  CheckpointManager resumed(dir.string(), 1);
  st.step = 25;
  resumed.save(m, nullptr, st, "kind: pretrain\n", "tok");
  EXPECT_EQ(fs::path(*resumed.latest()).filename(), "step_000025.h5");
  EXPECT_TRUE(fs::exists(dir / "step_000025.h5"));
  EXPECT_TRUE(fs::exists(dir / "step_000040.h5"));  // newer: kept, not counted
  EXPECT_FALSE(fs::exists(dir / "step_000020.h5"));
  EXPECT_FALSE(fs::exists(dir / "step_000010.h5"));
  st.step = 40;  // the run reaches the orphan's step and replaces it
  resumed.save(m, nullptr, st, "kind: pretrain\n", "tok");
  EXPECT_EQ(fs::path(*resumed.latest()).filename(), "step_000040.h5");
  EXPECT_FALSE(fs::exists(dir / "step_000025.h5"));

  // `latest` that cannot be written: the new checkpoint is taken back, `latest` keeps its target.
  fs::remove(dir / "latest");
  fs::create_directory(dir / "latest");  // a directory where the pointer file goes
  st.step = 50;
  EXPECT_THROW(resumed.save(m, nullptr, st, "kind: pretrain\n", "tok"), Error);
  EXPECT_FALSE(fs::exists(dir / "step_000050.h5"));
  EXPECT_TRUE(fs::exists(dir / "step_000040.h5"));
  fs::remove_all(dir);
}

// Under mpirun (its environment), a step and checkpoint longer than the SIGKILL window mpirun
// leaves after forwarding a signal are warned about, naming the STOP file; not otherwise.
TEST(StopSignal, MpirunWindowWarning) {
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  EXPECT_EQ(mpirun_stop_window_warning(5.0, "out/STOP"), "");  // not under mpirun
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  ::unsetenv("OMPI_MCA_odls_base_sigkill_timeout");  // Open MPI 4.1's default: 1 s
  EXPECT_EQ(mpirun_stop_window_warning(0.5, "out/STOP"), "");
  const std::string w = mpirun_stop_window_warning(2.5, "out/STOP");
  EXPECT_NE(w.find("took 2.5 s, but mpirun SIGKILLs the ranks 1 s after"), std::string::npos) << w;
  EXPECT_NE(w.find("touch out/STOP"), std::string::npos) << w;
  ::setenv("OMPI_MCA_odls_base_sigkill_timeout", "30", 1);
  EXPECT_EQ(mpirun_stop_window_warning(2.5, "out/STOP"), "");
  ::setenv("OMPI_MCA_odls_base_sigkill_timeout", "soon", 1);  // unreadable: no claim either way
  EXPECT_EQ(mpirun_stop_window_warning(2.5, "out/STOP"), "");
  ::unsetenv("OMPI_MCA_odls_base_sigkill_timeout");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
}

}  // namespace condense
