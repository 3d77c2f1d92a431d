// Tests for the fused training ops (model/fused_ops.h) against the composite ATen expressions
// they replace, in float32, values and gradients within 1e-5 (relative to the largest value):
//   - RMSNorm on rows with a vector tail, including the weight gradient summed over threads;
//   - SwiGLU and GeGLU across the vectorized exp's clamp range (gates of +-100) and a scalar tail;
//   - RoPE on the transposed (non-contiguous) views attention passes, output in x's layout;
//   - cross-entropy: loss and logits gradient against at::cross_entropy_loss (vocabulary with a
//     tail, extreme logits), lm_cross_entropy falling back for ignore_index and bad ids;
//   - forwards repeat bit for bit at any thread count (rebuild marks rely on it);
//   - bf16 (train.precision=bf16): each kernel equals the float32 kernel on the widened inputs
//     rounded once (bit for bit), NaN kept; RMSNorm writes bf16 under bf16 autocast;
//   - both vector widths (16 lanes with AVX-512, 8 without) on whatever CPU runs the tests;
//   - where they do not apply: other dtypes, empty, under fp16 autocast; no packed
//     projections under autocast.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <map>

#include "core/error.h"
#include "model/fused_kernels.h"
#include "model/fused_ops.h"
#include "model/rms_norm.h"
#include "model/rope.h"

namespace condense {
namespace {

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LE(err, tol * scale) << "max abs error " << err << " at scale " << scale;
}

// Runs f on leaf copies of `inputs`, backpropagates `grad_out`; returns {output, input grads}.
std::vector<at::Tensor> run(const std::function<at::Tensor(std::vector<at::Tensor>&)>& f,
                            const std::vector<at::Tensor>& inputs, const at::Tensor& grad_out) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  at::Tensor out = f(leaves);
  out.backward(grad_out);
  std::vector<at::Tensor> result = {out.detach()};
  for (const at::Tensor& l : leaves) result.push_back(l.grad());
  return result;
}

void expect_all_close(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("output/gradient " + std::to_string(i));
    expect_close(got[i], want[i]);
  }
}

TEST(FusedOps, RmsNormMatchesTheCompositeWithGradients) {
  at::manual_seed(1);
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    at::Tensor x = at::randn({3, 50, 37}) * 2, w = at::rand({37}) + 0.5;
    at::Tensor dy = at::randn({3, 50, 37});
    const double eps = 1e-5;
    auto fused = run([&](auto& v) { return fused_rms_norm(v[0], v[1], eps); }, {x, w}, dy);
    auto composite = run([&](auto& v) {
      return v[1] * (v[0] * at::rsqrt(v[0].pow(2).mean(-1, true) + eps));
    }, {x, w}, dy);
    expect_all_close(fused, composite);
  }
}

TEST(FusedOps, SwigluMatchesTheCompositeAcrossTheExpRange) {
  at::manual_seed(2);
  at::Tensor g = at::randn({1000}) * 6;
  g[0] = 100.0;
  g[1] = -100.0;
  g[2] = 88.0;
  g[3] = -88.0;
  g[4] = 0.0;
  at::Tensor u = at::randn({1000}), dh = at::randn({1000});
  auto fused = run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g, u}, dh);
  auto composite = run([](auto& v) { return at::silu(v[0]) * v[1]; }, {g, u}, dh);
  expect_all_close(fused, composite);
  // 2-D inputs with a tail, as the MLP passes them.
  at::Tensor g2 = at::randn({7, 45}), u2 = at::randn({7, 45}), d2 = at::randn({7, 45});
  expect_all_close(run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g2, u2}, d2),
                   run([](auto& v) { return at::silu(v[0]) * v[1]; }, {g2, u2}, d2));
}

TEST(FusedOps, PackedSwigluMatchesTheCompositeOnHalves) {
  at::manual_seed(6);
  at::Tensor gu = at::randn({3, 5, 2 * 45}) * 4, dh = at::randn({3, 5, 45});
  auto fused = run([](auto& v) { return fused_swiglu_packed(v[0]); }, {gu}, dh);
  auto composite = run([](auto& v) {
    return at::silu(v[0].narrow(-1, 0, 45)) * v[0].narrow(-1, 45, 45);
  }, {gu}, dh);
  expect_all_close(fused, composite);
}

// GeGLU (Gemma's MLP): the kernel's sigmoid form of GELU's tanh approximation against ATen's
// at::gelu(g, "tanh") * u, values and gradients, gates of +-100 and 0, a scalar tail, packed halves.
TEST(FusedOps, GegluMatchesTheCompositeAcrossTheExpRange) {
  at::manual_seed(21);
  at::Tensor g = at::randn({1000}) * 6;
  g[0] = 100.0;
  g[1] = -100.0;
  g[2] = 12.0;
  g[3] = -12.0;
  g[4] = 0.0;
  g[5] = 1e-4;
  at::Tensor u = at::randn({1000}), dh = at::randn({1000});
  auto composite = [](auto& v) { return at::gelu(v[0], "tanh") * v[1]; };
  expect_all_close(run([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g, u}, dh),
                   run(composite, {g, u}, dh));
  at::Tensor g2 = at::randn({7, 45}), u2 = at::randn({7, 45}), d2 = at::randn({7, 45});
  expect_all_close(run([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g2, u2}, d2),
                   run(composite, {g2, u2}, d2));
  at::Tensor gu = at::randn({3, 5, 2 * 45}) * 4, dp = at::randn({3, 5, 45});
  expect_all_close(run([](auto& v) { return fused_swiglu_packed(v[0], true); }, {gu}, dp),
                   run([](auto& v) {
                     return at::gelu(v[0].narrow(-1, 0, 45), "tanh") * v[0].narrow(-1, 45, 45);
                   }, {gu}, dp));
  // Not SwiGLU: the two activations differ by far more than the tolerance.
  EXPECT_GT((fused_swiglu(g2, u2, true) - fused_swiglu(g2, u2)).abs().max().item<double>(), 0.1);
}

at::Tensor composite_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

TEST(FusedOps, RopeMatchesTheCompositeOnTransposedViews) {
  at::manual_seed(3);
  Rope rope(10, 10000.0);
  auto [cos, sin] = rope.cos_sin(3, 6, at::kCPU);  // positions 3..8: [6, 10]
  // As attention makes q: a [B, T, H, D] projection viewed as [B, H, T, D].
  at::Tensor base = at::randn({2, 6, 3, 10});
  at::Tensor dy = at::randn({2, 3, 6, 10});
  auto fused = run([&](auto& v) { return fused_rope(v[0].transpose(1, 2), cos, sin); }, {base}, dy);
  auto composite = run([&](auto& v) { return composite_rope(v[0].transpose(1, 2), cos, sin); }, {base}, dy);
  expect_all_close(fused, composite);
  // The output keeps x's memory layout (what the composite's TensorIterator does too).
  at::Tensor y = fused_rope(base.transpose(1, 2), cos, sin);
  EXPECT_EQ(y.strides(), base.transpose(1, 2).strides());
  // apply_rope takes the fused path and agrees with the composite.
  expect_close(apply_rope(base.transpose(1, 2), cos, sin), composite_rope(base.transpose(1, 2), cos, sin));
}

TEST(FusedOps, CrossEntropyMatchesATen) {
  at::manual_seed(4);
  at::Tensor logits = at::randn({37, 101}) * 5;
  logits[0][3] = 80.0;   // a dominant logit
  logits[1][7] = -80.0;  // and a vanishing one
  at::Tensor targets = at::randint(0, 101, {37}, at::kLong);
  targets[0] = 3;
  targets[1] = 7;
  at::Tensor g = at::scalar_tensor(0.7);
  auto fused = run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {logits}, g);
  auto ref = run([&](auto& v) { return at::cross_entropy_loss(v[0], targets); }, {logits}, g);
  expect_all_close(fused, ref);
  // lm_cross_entropy: [B, T, V] logits; -100 targets take ATen's loss (ignored rows).
  at::Tensor l3 = at::randn({2, 5, 11}), t3 = at::randint(0, 11, {2, 5}, at::kLong);
  expect_close(lm_cross_entropy(l3, t3), at::cross_entropy_loss(l3.view({-1, 11}), t3.view({-1})));
  t3[0][1] = -100;
  expect_close(lm_cross_entropy(l3, t3), at::cross_entropy_loss(l3.view({-1, 11}), t3.view({-1})));
  t3[0][1] = 11;  // outside the vocabulary: an error, as from ATen
  EXPECT_ANY_THROW(lm_cross_entropy(l3, t3));
  EXPECT_THROW(fused_cross_entropy(l3.view({-1, 11}), t3.view({-1})), Error);
}

TEST(FusedOps, ApplyToFloat32AndBf16OnCpu) {
  at::Tensor x = at::randn({2, 3});
  EXPECT_TRUE(fused_ops_apply(x));
  EXPECT_TRUE(fused_ops_apply(x.to(at::kBFloat16)));
  EXPECT_FALSE(fused_ops_apply(x.to(at::kDouble)));
  EXPECT_FALSE(fused_ops_apply(x.to(at::kHalf)));
  EXPECT_FALSE(fused_ops_apply(at::empty({0, 3})));
  at::autocast::set_autocast_enabled(at::kCPU, true);
  const at::ScalarType was = at::autocast::get_autocast_dtype(at::kCPU);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  EXPECT_TRUE(fused_ops_apply(x));  // bf16 autocast: the fused ops, in bf16
  EXPECT_TRUE(cpu_autocast_bf16());
  EXPECT_FALSE(pack_projections(x));  // a packed weight would be re-cast on every call
  at::autocast::set_autocast_dtype(at::kCPU, at::kHalf);
  EXPECT_FALSE(fused_ops_apply(x));  // fp16 autocast: the composites
  at::autocast::set_autocast_dtype(at::kCPU, was);
  at::autocast::set_autocast_enabled(at::kCPU, false);
  EXPECT_TRUE(fused_ops_apply(x));
  EXPECT_FALSE(cpu_autocast_bf16());
}

// The bf16 kernels compute in float32 and round each output once: so they equal the float32
// kernels (tested against the composites above) on the widened inputs, rounded by ATen's
// bf16 conversion (round to nearest even), bit for bit; NaN stays NaN.
at::Tensor bf16(const at::Tensor& t) { return t.to(at::kBFloat16); }

void expect_bitwise(const at::Tensor& got, const at::Tensor& want) {
  ASSERT_EQ(got.scalar_type(), want.scalar_type());
  ASSERT_EQ(got.sizes(), want.sizes());
  const at::Tensor mismatch = (got.to(at::kFloat) != want.to(at::kFloat)) &
                              ~(got.isnan() & want.isnan());
  EXPECT_EQ(mismatch.sum().item<int64_t>(), 0) << "of " << got.numel() << " values";
}

TEST(FusedOps, Bf16SwigluIsTheFloatKernelRoundedOnce) {
  at::manual_seed(7);
  at::Tensor g = bf16(at::randn({3, 1001}) * 6), u = bf16(at::randn({3, 1001}));
  at::Tensor dh = bf16(at::randn({3, 1001}));
  g[0][0] = std::nan("");
  auto b = run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g, u}, dh);
  auto f = run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g.to(at::kFloat), u.to(at::kFloat)},
               dh.to(at::kFloat));
  ASSERT_EQ(b[0].scalar_type(), at::kBFloat16);
  EXPECT_TRUE(b[0][0][0].isnan().item<bool>());
  for (size_t i = 0; i < b.size(); ++i) {
    SCOPED_TRACE("output/gradient " + std::to_string(i));
    expect_bitwise(b[i], bf16(f[i]));
  }
  // Packed gate/up, as the MLP's one GEMM gives them.
  at::Tensor gu = bf16(at::randn({4, 2 * 45}) * 4), d2 = bf16(at::randn({4, 45}));
  auto pb = run([](auto& v) { return fused_swiglu_packed(v[0]); }, {gu}, d2);
  auto pf = run([](auto& v) { return fused_swiglu_packed(v[0]); }, {gu.to(at::kFloat)}, d2.to(at::kFloat));
  expect_bitwise(pb[0], bf16(pf[0]));
  expect_bitwise(pb[1], bf16(pf[1]));
  // GeGLU likewise.
  auto gb = run([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g, u}, dh);
  auto gf = run([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g.to(at::kFloat), u.to(at::kFloat)},
                dh.to(at::kFloat));
  for (size_t i = 0; i < gb.size(); ++i) expect_bitwise(gb[i], bf16(gf[i]));
  // And close to the composite run in bf16 (which rounds after silu and again after the product).
  auto composite = run([](auto& v) { return at::silu(v[0]) * v[1]; }, {g, u}, dh);
  const at::Tensor err = (b[0].to(at::kFloat) - composite[0].to(at::kFloat)).abs().nan_to_num(0);
  EXPECT_LE(err.max().item<float>(), 0.02f * composite[0].to(at::kFloat).abs().nan_to_num(0).max().item<float>());
}

TEST(FusedOps, Bf16RmsNormOutputAndGradientsMatchTheFloatPath) {
  at::manual_seed(8);
  at::Tensor x = at::randn({5, 7, 67}) * 3, w = at::rand({67}) + 0.5;
  at::Tensor dy = bf16(at::randn({5, 7, 67}));
  auto b = run([](auto& v) { return fused_rms_norm(v[0], v[1], 1e-5, at::kBFloat16); }, {x, w}, dy);
  auto f = run([](auto& v) { return fused_rms_norm(v[0], v[1], 1e-5); }, {x, w}, dy.to(at::kFloat));
  expect_bitwise(b[0], bf16(f[0]));
  ASSERT_EQ(b[1].scalar_type(), at::kFloat);  // dx in x's dtype: the float32 residual stream
  // The same float32 math on the widened dy (summed in another order where the compiler
  // vectorizes the two instantiations differently).
  expect_close(b[1], f[1], 1e-6);
  expect_close(b[2], f[2], 1e-6);
  EXPECT_THROW(fused_rms_norm(bf16(x), w, 1e-5), Error);  // x must be the float32 stream
  EXPECT_THROW(fused_rms_norm(x, w, 1e-5, at::kHalf), Error);
}

TEST(FusedOps, Bf16RopeIsTheFloatKernelRoundedOnce) {
  at::manual_seed(9);
  Rope rope(10, 10000.0);
  auto [cos, sin] = rope.cos_sin(0, 6, at::kCPU);
  at::Tensor base = bf16(at::randn({2, 6, 3, 10})), dy = bf16(at::randn({2, 3, 6, 10}));
  auto b = run([&](auto& v) { return fused_rope(v[0].transpose(1, 2), cos, sin); }, {base}, dy);
  auto f = run([&](auto& v) { return fused_rope(v[0].transpose(1, 2), cos, sin); },
               {base.to(at::kFloat)}, dy.to(at::kFloat));
  expect_bitwise(b[0], bf16(f[0]));
  expect_bitwise(b[1], bf16(f[1]));
}

TEST(FusedOps, Bf16CrossEntropyReadsBf16LogitsAndWritesABf16Gradient) {
  at::manual_seed(10);
  at::Tensor logits = bf16(at::randn({37, 101}) * 5);
  at::Tensor targets = at::randint(0, 101, {37}, at::kLong);
  at::Tensor g = at::scalar_tensor(0.7);
  auto b = run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {logits}, g);
  auto f = run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {logits.to(at::kFloat)}, g);
  ASSERT_EQ(b[0].scalar_type(), at::kFloat);  // the loss in float32
  EXPECT_TRUE(at::equal(b[0], f[0]));
  ASSERT_EQ(b[1].scalar_type(), at::kBFloat16);
  expect_bitwise(b[1], bf16(f[1]));
  // ATen's loss on the widened logits (what autocast's float32 loss computes).
  expect_close(b[0], at::cross_entropy_loss(logits.to(at::kFloat), targets));
}

// The kernels with compares run on 16 lanes with AVX-512 and on 8 without; both widths run on
// any CPU, so each is checked here whatever this machine picks: per element the same math
// (SwiGLU bitwise equal across widths), the cross-entropy's sums in another order (close), and
// at each width the bf16 outputs equal the float32 kernel's rounded by ATen.
TEST(FusedOps, KernelsAgreeAtBothVectorWidths) {
  at::manual_seed(12);
  at::Tensor g = at::randn({5, 333}) * 6, u = at::randn({5, 333}), dh = at::randn({5, 333});
  at::Tensor logits = at::randn({9, 203}) * 5, targets = at::randint(0, 203, {9}, at::kLong);
  at::Tensor one = at::scalar_tensor(1.0);
  std::map<int, std::vector<std::vector<at::Tensor>>> by_width;
  for (int lanes : {8, 16}) {
    fused::set_vector_lanes(lanes);
    auto& r = by_width[lanes];
    r.push_back(run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g, u}, dh));
    r.push_back(run([](auto& v) { return fused_swiglu(v[0], v[1]); }, {bf16(g), bf16(u)}, bf16(dh)));
    r.push_back(run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {logits}, one));
    r.push_back(run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {bf16(logits)}, one));
    r.push_back(run([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g, u}, dh));
    SCOPED_TRACE(std::to_string(lanes) + " lanes");
    auto f = run([](auto& v) { return fused_swiglu(v[0], v[1]); },
                 {bf16(g).to(at::kFloat), bf16(u).to(at::kFloat)}, bf16(dh).to(at::kFloat));
    for (size_t i = 0; i < f.size(); ++i) expect_bitwise(r[1][i], bf16(f[i]));
    auto fl = run([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {bf16(logits).to(at::kFloat)}, one);
    expect_bitwise(r[3][1], bf16(fl[1]));
  }
  fused::set_vector_lanes(0);
  for (size_t c = 0; c < 2; ++c) {
    for (size_t i = 0; i < by_width[8][c].size(); ++i) expect_bitwise(by_width[16][c][i], by_width[8][c][i]);
  }
  for (size_t c = 2; c < 4; ++c) {
    for (size_t i = 0; i < by_width[8][c].size(); ++i) {
      expect_close(by_width[16][c][i].to(at::kFloat), by_width[8][c][i].to(at::kFloat), c == 2 ? 1e-6 : 1e-2);
    }
  }
  for (size_t i = 0; i < by_width[8][4].size(); ++i) expect_bitwise(by_width[16][4][i], by_width[8][4][i]);  // GeGLU
}

// Under bf16 autocast the model's fused ops run in bf16 where the composites did: RMSNorm's
// output is what the projection would cast it to.
TEST(FusedOps, UnderBf16AutocastRmsNormWritesBf16) {
  at::manual_seed(11);
  RMSNorm norm(33, 1e-6);
  at::Tensor x = at::randn({4, 33});
  at::Tensor want = norm(x).detach();
  at::autocast::set_autocast_enabled(at::kCPU, true);
  const at::ScalarType was = at::autocast::get_autocast_dtype(at::kCPU);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  at::Tensor got = norm(x).detach();
  at::autocast::set_autocast_dtype(at::kCPU, was);
  at::autocast::set_autocast_enabled(at::kCPU, false);
  expect_bitwise(got, bf16(want));
}

// What a rebuild-mark policy relies on: the fused forward run again gives the same bits,
// whatever the thread count.
TEST(FusedOps, ForwardsAreBitwiseRepeatable) {
  at::manual_seed(5);
  at::Tensor x = at::randn({64, 300}), w = at::rand({300}), g = at::randn({64, 300});
  const int before = at::get_num_threads();
  std::vector<at::Tensor> outs;
  for (int threads : {1, 2, 1}) {
    at::set_num_threads(threads);
    outs.push_back(at::cat({fused_rms_norm(x, w, 1e-5).detach(), fused_swiglu(g, x).detach()}));
  }
  at::set_num_threads(before);
  EXPECT_TRUE(at::equal(outs[0], outs[1]));
  EXPECT_TRUE(at::equal(outs[0], outs[2]));
}

}  // namespace
}  // namespace condense
