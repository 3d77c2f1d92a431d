// Distillation losses against direct full-logits computations in plain ATen (double precision):
// value and gradients of the chunked KD loss for temperatures, T^2, top-k, kd_ratio mixing,
// ignored rows, ragged chunks and different hidden widths; its memory (counting allocator);
// hidden-state losses and every error message.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "compressors/distill.h"
#include "core/error.h"
#include "memory/chunked_cross_entropy.h"
#include "memory/counting_allocator.h"
#include "trainer/device.h"

namespace condense {
namespace {

struct Problem {
  at::Tensor hs, ws, ht, wt, targets;
};

// N tokens, vocabulary V, student width hs_width, teacher width ht_width; ignored rows at 3, 11.
Problem make_problem(int64_t n, int64_t v, int64_t hs_width, int64_t ht_width,
                     at::ScalarType dtype = at::kDouble) {
  torch::manual_seed(11);
  auto opt = at::TensorOptions().dtype(dtype);
  Problem p;
  p.hs = (at::randn({n, hs_width}, opt) * 1.5).requires_grad_();
  p.ws = (at::randn({v, hs_width}, opt) * 0.5).requires_grad_();
  p.ht = at::randn({n, ht_width}, opt) * 1.5;
  p.wt = at::randn({v, ht_width}, opt) * 0.5;
  p.targets = at::randint(v, {n}, at::kLong);
  if (n > 11) {
    p.targets[3] = -100;
    p.targets[11] = -100;
  }
  return p;
}

// The definition, on full [N, V] logits.
at::Tensor direct_kd(const Problem& p, const KdLossOptions& o) {
  double T = o.temperature;
  auto cap = [](const at::Tensor& z, double c) { return c > 0 ? at::tanh(z / c) * c : z; };
  at::Tensor zs = cap(at::matmul(p.hs, p.ws.t()), o.softcap);
  at::Tensor log_ps = at::log_softmax(zs / T, 1);
  at::Tensor lt = cap(at::matmul(p.ht, p.wt.t()), o.teacher_softcap) / T;
  at::Tensor kl;
  if (o.top_k > 0) {
    auto [values, index] = lt.topk(o.top_k, 1);
    at::Tensor log_pt = at::log_softmax(values, 1);
    kl = (log_pt.exp() * (log_pt - log_ps.gather(1, index))).sum(1);
  } else {
    at::Tensor log_pt = at::log_softmax(lt, 1);
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1);
  }
  at::Tensor valid = p.targets.ne(o.ignore_index).to(kl.scalar_type());
  at::Tensor kd = (kl * valid).sum() / valid.sum() * (o.temperature_squared ? T * T : 1.0);
  at::Tensor ce = at::cross_entropy_loss(zs, p.targets, {}, at::Reduction::Mean, o.ignore_index);
  return kd * o.kd_ratio + ce * (1 - o.kd_ratio);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Value within 1e-5 relative, gradients within 1e-5 absolute (they are O(1e-2..1)).
void expect_matches(const Problem& p, const KdLossOptions& o, const std::string& what) {
  at::Tensor ref = direct_kd(p, o);
  auto gref = torch::autograd::grad({ref}, {p.hs, p.ws});
  at::Tensor got = chunked_kd_loss(p.hs, p.ws, p.ht, p.wt, p.targets, o);
  auto g = torch::autograd::grad({got}, {p.hs, p.ws});
  double r = ref.item<double>();
  EXPECT_NEAR(got.item<double>(), r, 1e-5 * std::max(1.0, std::abs(r))) << what;
  EXPECT_LT(max_diff(g[0], gref[0]), 1e-5) << what;
  EXPECT_LT(max_diff(g[1], gref[1]), 1e-5) << what;
  EXPECT_GT(gref[0].abs().max().item<double>(), 1e-3) << what << ": a vacuous gradient check";
}

TEST(ChunkedKd, MatchesDirectComputation) {
  Problem p = make_problem(37, 50, 16, 24);  // 37 tokens: chunks 8 leave a ragged tail
  struct Case { const char* name; double T; bool t2; int64_t k; double ratio; };
  for (const Case& c : {Case{"T=1", 1.0, true, 0, 1.0}, Case{"T=2 with T^2", 2.0, true, 0, 1.0},
                        Case{"T=2 without T^2", 2.0, false, 0, 1.0},
                        Case{"top_k=5", 1.0, true, 5, 1.0}, Case{"top_k=5 T=2", 2.0, true, 5, 1.0},
                        Case{"top_k=V", 1.0, true, 50, 1.0},
                        Case{"kd_ratio=0.3", 2.0, true, 0, 0.3},
                        Case{"top_k=5 kd_ratio=0.3", 1.0, true, 5, 0.3},
                        Case{"kd_ratio=0", 1.0, true, 0, 0.0}}) {
    KdLossOptions o;
    o.temperature = c.T;
    o.temperature_squared = c.t2;
    o.top_k = c.k;
    o.kd_ratio = c.ratio;
    o.token_chunk = 8;
    expect_matches(p, o, c.name);
  }
}

// Gemma 2's logit soft caps (KdLossOptions::softcap for the student, teacher_softcap for the
// teacher): the definition over capped logits, with temperature, top-k and the CE share; caps that
// bind (logits of ~4 against 1.5 and 2) change the loss.
TEST(ChunkedKd, SoftCapsMatchTheCappedDefinition) {
  Problem p = make_problem(37, 50, 16, 24);
  struct Case { const char* name; double T; int64_t k; double ratio; double cs, ct; };
  for (const Case& c : {Case{"caps", 1.0, 0, 1.0, 1.5, 2.0}, Case{"caps T=2", 2.0, 0, 1.0, 1.5, 2.0},
                        Case{"caps top_k=5", 1.0, 5, 1.0, 1.5, 2.0},
                        Case{"caps kd_ratio=0.3", 2.0, 0, 0.3, 1.5, 2.0},
                        Case{"student cap only", 1.0, 0, 0.5, 1.5, 0.0},
                        Case{"teacher cap only", 1.0, 0, 0.5, 0.0, 2.0}}) {
    KdLossOptions o;
    o.temperature = c.T;
    o.top_k = c.k;
    o.kd_ratio = c.ratio;
    o.token_chunk = 8;
    o.softcap = c.cs;
    o.teacher_softcap = c.ct;
    expect_matches(p, o, c.name);
    KdLossOptions plain = o;
    plain.softcap = plain.teacher_softcap = 0;
    EXPECT_GT(std::abs(direct_kd(p, o).item<double>() - direct_kd(p, plain).item<double>()), 1e-2) << c.name;
  }
}

TEST(ChunkedKd, BatchedShapesAndFloatInputs) {
  // [B, T, H] inputs, float32, against the double reference.
  Problem p = make_problem(48, 64, 16, 8, at::kFloat);
  KdLossOptions o;
  o.temperature = 1.5;
  o.token_chunk = 10;
  Problem d{p.hs.detach().to(at::kDouble).requires_grad_(),
            p.ws.detach().to(at::kDouble).requires_grad_(), p.ht.to(at::kDouble),
            p.wt.to(at::kDouble), p.targets};
  at::Tensor ref = direct_kd(d, o);
  auto gref = torch::autograd::grad({ref}, {d.hs, d.ws});
  at::Tensor got = chunked_kd_loss(p.hs.view({4, 12, 16}), p.ws, p.ht.view({4, 12, 8}), p.wt,
                                   p.targets.view({4, 12}), o);
  EXPECT_EQ(got.scalar_type(), at::kFloat);
  auto g = torch::autograd::grad({got}, {p.hs, p.ws});
  EXPECT_NEAR(got.item<double>(), ref.item<double>(), 1e-5 * std::abs(ref.item<double>()));
  EXPECT_LT(max_diff(g[0].to(at::kDouble), gref[0]), 1e-5);
  EXPECT_LT(max_diff(g[1].to(at::kDouble), gref[1]), 1e-5);
}

// A train.precision=bf16 distill run: autocast on during the forward, the student's and
// teacher's hidden states in bf16 and the LM heads in fp32, backward after the scope has ended
// (where a bf16 tile met an fp32 weight and failed). Reference: the full-logits definition under
// the same autocast (its matmuls in bf16), so the two differ only by where bf16 rounds.
TEST(ChunkedKd, Bf16AutocastMatchesTheFullLogitsDefinition) {
  Problem p = make_problem(37, 50, 16, 24, at::kFloat);
  KdLossOptions o;
  o.temperature = 2.0;
  o.kd_ratio = 0.5;
  o.token_chunk = 8;
  at::Tensor ref, got;
  {
    PrecisionScope bf16("bf16", at::kCPU);
    ref = direct_kd(p, o);
    got = chunked_kd_loss(p.hs.to(at::kBFloat16), p.ws, p.ht.to(at::kBFloat16), p.wt, p.targets, o);
  }
  EXPECT_EQ(got.scalar_type(), at::kFloat);
  auto gref = torch::autograd::grad({ref}, {p.hs, p.ws});
  auto g = torch::autograd::grad({got}, {p.hs, p.ws});
  const double r = ref.item<double>();
  EXPECT_NEAR(got.item<double>(), r, 5e-3 * std::abs(r));
  for (int i = 0; i < 2; ++i) {
    const double rel = ((g[i] - gref[i]).norm() / gref[i].norm()).item<double>();
    EXPECT_LT(rel, 2e-2) << i;
  }
}

TEST(ChunkedKd, PureCrossEntropyAtRatioZero) {
  Problem p = make_problem(37, 50, 16, 24, at::kFloat);
  KdLossOptions o;
  o.kd_ratio = 0;
  o.token_chunk = 8;
  at::Tensor got = chunked_kd_loss(p.hs, p.ws, p.ht, p.wt, p.targets, o);
  at::Tensor chunked = chunked_cross_entropy(p.hs, p.ws, p.targets, {8, 8192, 0, -100});
  at::Tensor full = at::cross_entropy_loss(at::matmul(p.hs, p.ws.t()), p.targets);
  EXPECT_EQ(got.item<double>(), chunked.item<double>());
  EXPECT_NEAR(got.item<double>(), full.item<double>(), 1e-5);
}

TEST(ChunkedKd, SelfDistillationIsZeroAndKdIsNonNegative) {
  Problem p = make_problem(37, 50, 16, 16);
  for (int64_t k : {0, 50}) {
    KdLossOptions o;
    o.temperature = 2.0;
    o.top_k = k;
    o.token_chunk = 8;
    // The teacher is the student itself, tensors that require grad (not detached).
    at::Tensor self = chunked_kd_loss(p.hs, p.ws, p.hs, p.ws, p.targets, o);
    auto g = torch::autograd::grad({self}, {p.hs, p.ws});
    EXPECT_NEAR(self.item<double>(), 0.0, 1e-12) << k;
    EXPECT_LT(g[0].abs().max().item<double>(), 1e-12) << k;
    EXPECT_LT(g[1].abs().max().item<double>(), 1e-12) << k;
  }
  for (int seed = 0; seed < 5; ++seed) {
    torch::manual_seed(seed);
    KdLossOptions o;
    o.temperature = 0.5 + seed;
    o.top_k = seed % 2 ? 3 : 0;
    at::Tensor hs = at::randn({20, 8}), ws = at::randn({30, 8});
    at::Tensor kd = chunked_kd_loss(hs, ws, at::randn({20, 4}), at::randn({30, 4}),
                                    at::zeros({20}, at::kLong), o);
    EXPECT_GE(kd.item<double>(), 0.0) << seed;
  }
}

TEST(ChunkedKd, TeacherIsAConstant) {
  Problem p = make_problem(16, 20, 4, 6);
  at::Tensor ht = p.ht.clone().requires_grad_(), wt = p.wt.clone().requires_grad_();
  KdLossOptions o;
  o.kd_ratio = 0.5;
  chunked_kd_loss(p.hs, p.ws, ht, wt, p.targets, o).backward();
  EXPECT_TRUE(p.hs.grad().defined());
  EXPECT_TRUE(p.ws.grad().defined());
  EXPECT_FALSE(ht.grad().defined());
  EXPECT_FALSE(wt.grad().defined());
}

TEST(ChunkedKd, AllTokensIgnoredGivesZero) {
  Problem p = make_problem(10, 20, 4, 4);
  at::Tensor t = at::full({10}, -100, at::kLong);
  at::Tensor kd = chunked_kd_loss(p.hs, p.ws, p.ht, p.wt, t, {});
  auto g = torch::autograd::grad({kd}, {p.hs});
  EXPECT_EQ(kd.item<double>(), 0.0);
  EXPECT_EQ(g[0].abs().max().item<double>(), 0.0);
}

TEST(ChunkedKd, PeakMemoryStaysBelowOneLogitsMatrix) {
  install_counting_cpu_allocator();
  const int64_t n = 4096, v = 2048;
  const int64_t logits_bytes = n * v * 4;
  torch::manual_seed(2);
  at::Tensor hs = at::randn({n, 64}).requires_grad_(), ws = at::randn({v, 64}).requires_grad_();
  at::Tensor ht = at::randn({n, 96}), wt = at::randn({v, 96});
  at::Tensor t = at::randint(v, {n}, at::kLong);
  KdLossOptions o;
  o.temperature = 2.0;
  o.token_chunk = 256;
  auto peak_of = [&](auto&& step) {
    int64_t base = cpu_memory_counters().live_bytes;
    reset_cpu_peak();
    step();
    return cpu_memory_counters().peak_bytes - base;
  };
  double chunked_loss = 0, direct_loss = 0;
  int64_t chunked = peak_of([&] {
    at::Tensor loss = chunked_kd_loss(hs, ws, ht, wt, t, o);
    torch::autograd::grad({loss}, {hs, ws});
    chunked_loss = loss.item<double>();
  });
  int64_t direct = peak_of([&] {
    at::Tensor log_ps = at::log_softmax(at::matmul(hs, ws.t()) / 2.0, 1);
    at::Tensor log_pt = at::log_softmax(at::matmul(ht, wt.t()) / 2.0, 1);
    at::Tensor loss = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * 4.0;
    torch::autograd::grad({loss}, {hs, ws});
    direct_loss = loss.item<double>();
  });
  EXPECT_NEAR(chunked_loss, direct_loss, 1e-4 * direct_loss);
  // Measured: about 0.19 of one logits matrix (a few 256 x 2048 tiles); the direct path ~5x.
  EXPECT_LT(chunked, logits_bytes / 4) << "chunked peak " << chunked << " bytes";
  EXPECT_GT(direct, logits_bytes) << "direct peak " << direct << " bytes";
}

// Runs f, expecting a condense::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << *parts.begin();
  } catch (const Error& e) {
    for (const char* part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
        << "'" << e.what() << "' lacks '" << part << "'";
  }
}

TEST(ChunkedKd, ErrorsNameTheProblem) {
  Problem p = make_problem(12, 20, 4, 6);
  auto kd = [&](const at::Tensor& ht, const at::Tensor& wt, KdLossOptions o) {
    return [&, ht, wt, o] { chunked_kd_loss(p.hs, p.ws, ht, wt, p.targets, o); };
  };
  expect_error(kd(p.ht.narrow(0, 0, 10), p.wt, {}), {"token counts", "12", "10"});
  expect_error(kd(p.ht, at::randn({21, 6}, at::kDouble), {}),
               {"student vocabulary 20 vs teacher vocabulary 21"});
  KdLossOptions o;
  o.temperature = 0;
  expect_error(kd(p.ht, p.wt, o), {"temperature"});
  o = {};
  o.kd_ratio = 1.5;
  expect_error(kd(p.ht, p.wt, o), {"kd_ratio", "[0, 1]"});
  o = {};
  o.top_k = -1;
  expect_error(kd(p.ht, p.wt, o), {"top_k", "[0, 20]"});
  o.top_k = 21;
  expect_error(kd(p.ht, p.wt, o), {"top_k", "21"});
}

TEST(HiddenStateLoss, MatchesDirectComputationAndTrainsStudentOnly) {
  torch::manual_seed(4);
  std::vector<at::Tensor> s, t;
  for (int i = 0; i < 4; ++i) s.push_back(at::randn({2, 5, 8}, at::kDouble).requires_grad_());
  for (int i = 0; i < 6; ++i) t.push_back(at::randn({2, 5, 8}, at::kDouble).requires_grad_());
  std::vector<std::pair<int64_t, int64_t>> pairs{{1, 2}, {3, 5}};
  at::Tensor mse = hidden_state_loss(s, t, pairs, "mse");
  at::Tensor mse_ref = ((s[1] - t[2]).pow(2).mean() + (s[3] - t[5]).pow(2).mean()) / 2;
  EXPECT_NEAR(mse.item<double>(), mse_ref.item<double>(), 1e-12);
  auto cos = [](const at::Tensor& a, const at::Tensor& b) {
    return 1 - (a * b).sum(-1) / (a.norm(2, -1) * b.norm(2, -1));
  };
  at::Tensor cosine = hidden_state_loss(s, t, pairs, "cosine");
  at::Tensor cos_ref = (cos(s[1], t[2]).mean() + cos(s[3], t[5]).mean()) / 2;
  EXPECT_NEAR(cosine.item<double>(), cos_ref.item<double>(), 1e-12);

  auto gref = torch::autograd::grad({cos_ref}, {s[1], s[3]});
  (mse + cosine).backward();
  auto gmse = torch::autograd::grad({mse_ref}, {s[1]});
  EXPECT_LT(max_diff(s[1].grad(), gmse[0] + gref[0]), 1e-12);
  EXPECT_TRUE(s[3].grad().defined());
  EXPECT_FALSE(s[0].grad().defined());
  EXPECT_FALSE(s[2].grad().defined());
  for (const auto& x : t) EXPECT_FALSE(x.grad().defined());

  // A float student against a bf16 teacher: compared in float.
  at::Tensor t_bf16 = t[2].detach().to(at::kBFloat16);
  at::Tensor f = hidden_state_loss({s[1].detach().to(at::kFloat)}, {t_bf16}, {{0, 0}}, "mse");
  EXPECT_EQ(f.scalar_type(), at::kFloat);
  at::Tensor f_ref = (s[1] - t_bf16.to(at::kDouble)).pow(2).mean();
  EXPECT_NEAR(f.item<double>(), f_ref.item<double>(), 1e-5);
}

TEST(HiddenStateLoss, ErrorsNameTheProblem) {
  std::vector<at::Tensor> s{at::randn({3, 8}), at::randn({3, 8})};
  std::vector<at::Tensor> t{at::randn({3, 8}), at::randn({3, 12})};
  expect_error([&] { hidden_state_loss(s, t, {{0, 1}}, "mse"); },
               {"(student 0, teacher 1)", "8 vs 12"});
  expect_error([&] { hidden_state_loss(s, t, {{0, 0}}, "kl"); }, {"'kl'", "mse, cosine"});
  expect_error([&] { hidden_state_loss(s, t, {{2, 0}}, "mse"); }, {"student", "2", "[0, 2)"});
  expect_error([&] { hidden_state_loss(s, t, {{0, -1}}, "cosine"); }, {"teacher", "-1", "[0, 2)"});
  expect_error([&] { hidden_state_loss(s, t, {}, "mse"); }, {"no layer pairs"});
}

}  // namespace
}  // namespace condense
