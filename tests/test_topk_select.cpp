// Tests for comm/topk_select: topk_abs_indices against torch::topk on |x| (the selected
// magnitudes equal torch's top-k magnitudes exactly) and against a reference that stable-sorts
// by (-|x|, index) (the exact indices, ties toward lower indices), over random sizes and k,
// ties, zeros, NaN/inf, heavy tails, the sampled-threshold retry path, thread counts, and the
// input checks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "comm/topk_select.h"
#include "core/error.h"

namespace condense {
namespace {

// The definition, written the slow way: stable sort of the indices by descending magnitude
// (NaN above everything, all NaNs equal), keep the first k, sort ascending.
std::vector<int32_t> reference(const at::Tensor& x, int64_t k) {
  const float* v = x.data_ptr<float>();
  std::vector<int32_t> idx(static_cast<size_t>(x.numel()));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [v](int32_t a, int32_t b) {
    const bool na = std::isnan(v[a]), nb = std::isnan(v[b]);
    if (na || nb) return na && !nb;
    return std::fabs(v[a]) > std::fabs(v[b]);
  });
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// Replaces NaN by -1 (never a magnitude) so that at::equal can compare tensors holding NaN.
at::Tensor nan_marked(const at::Tensor& mags) {
  return at::where(at::isnan(mags), at::full_like(mags, -1.0f), mags);
}

void check_one(const at::Tensor& x, int64_t k, const at::Tensor& got) {
  ASSERT_EQ(got.scalar_type(), at::kInt);
  ASSERT_EQ(got.dim(), 1);
  ASSERT_EQ(got.numel(), k);
  ASSERT_TRUE(got.is_contiguous());
  const int32_t* g = got.data_ptr<int32_t>();
  for (int64_t i = 1; i < k; ++i) ASSERT_LT(g[i - 1], g[i]) << "not strictly ascending at " << i;
  if (k > 0) {
    ASSERT_GE(g[0], 0);
    ASSERT_LT(g[k - 1], x.numel());
  }

  // Exact indices against the definition.
  const std::vector<int32_t> want = reference(x, k);
  ASSERT_TRUE(std::equal(want.begin(), want.end(), g)) << "indices differ from the reference";

  // The selected magnitudes are torch's top-k magnitudes, as multisets.
  if (k > 0) {
    const at::Tensor mags = x.abs().index_select(0, got.to(at::kLong));
    const at::Tensor ours = std::get<0>(at::sort(mags, 0, /*descending=*/true));
    const at::Tensor theirs = std::get<0>(torch::topk(x.abs(), k));
    ASSERT_TRUE(at::equal(nan_marked(ours), nan_marked(theirs)))
        << "selected magnitudes differ from torch::topk";
  }
}

// Checks the default scan (AVX-512 where the CPU has it) and the portable one.
void check(const at::Tensor& x, int64_t k, const char* what) {
  SCOPED_TRACE(::testing::Message() << what << ": n=" << x.numel() << " k=" << k);
  {
    SCOPED_TRACE("default scan");
    check_one(x, k, topk_abs_indices(x, k));
  }
  {
    SCOPED_TRACE("portable scan");
    detail::TopkSelectOptions portable;
    portable.portable_scan = true;
    check_one(x, k, detail::topk_abs_indices(x, k, portable));
  }
}

class TopkSelect : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(1234);
    threads_ = at::get_num_threads();
  }
  void TearDown() override { at::set_num_threads(threads_); }
  int threads_ = 1;
};

TEST_F(TopkSelect, RandomSizesAndKMatchTorchAndReference) {
  std::mt19937 rng(7);
  for (int rep = 0; rep < 60; ++rep) {
    const int64_t n = static_cast<int64_t>(std::exp(std::uniform_real_distribution<double>(
        0.0, std::log(400000.0))(rng)));
    const int64_t k = std::uniform_int_distribution<int64_t>(0, n)(rng);
    check(torch::randn({n}), k, "randn");
  }
}

TEST_F(TopkSelect, GradientLikeRatiosAtLargeSizes) {
  // The sizes and ratios of gradient compression: sampled threshold, radix selection.
  for (int64_t n : {int64_t{100000}, int64_t{1} << 20, int64_t{3000017}}) {
    const at::Tensor x = torch::randn({n});
    for (double ratio : {0.001, 0.01, 0.1, 0.5}) check(x, std::max<int64_t>(1, n * ratio), "randn");
  }
}

TEST_F(TopkSelect, HeavyTailedAndScaledData) {
  const int64_t n = 500000;
  const at::Tensor g = torch::randn({n});
  check(g.pow(3), n / 100, "randn^3");
  check(g.pow(3), n / 10, "randn^3");
  // Row-wise scales (a flattened weight gradient): the large rows hold most of the top-k.
  const at::Tensor rows = torch::randn({500, 1000}) * torch::logspace(-6, 2, 500).unsqueeze(1);
  check(rows.flatten().contiguous(), n / 100, "row scaled");
  // Cauchy-like: ratio of normals.
  check(g / torch::randn({n}), n / 100, "cauchy");
  // Tiny magnitudes, denormals included.
  check(g * 1e-40f, n / 100, "denormal");
}

TEST_F(TopkSelect, TiesGoToLowerIndices) {
  std::mt19937 rng(11);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{100}, int64_t{5000}, int64_t{40000},
                    int64_t{200000}, int64_t{700001}}) {
    // Seven distinct magnitudes, both signs: nearly every k cuts through a tie.
    const at::Tensor x = torch::randint(-3, 4, {n}).to(at::kFloat);
    for (int rep = 0; rep < 4; ++rep) {
      const int64_t k = std::uniform_int_distribution<int64_t>(0, n)(rng);
      check(x, k, "small integers");
    }
    check(x, std::max<int64_t>(1, n / 100), "small integers, 1%");
  }
}

TEST_F(TopkSelect, EdgeCases) {
  for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{17}, int64_t{70000},
                    int64_t{300000}}) {
    const at::Tensor r = torch::randn({n});
    check(r, 0, "k=0");
    check(r, n, "k=n");
    check(r, 1, "k=1");
    check(r, n - 1, "k=n-1");
    check(torch::zeros({n}), std::max<int64_t>(1, n / 3), "zeros");
    check(torch::full({n}, 2.5f), std::max<int64_t>(1, n / 2), "all equal");
    check(torch::full({n}, -2.5f), n / 100, "all equal negative");
    // Equal magnitudes of both signs: ties between x and -x.
    check(torch::full({n}, 1.5f) * (torch::randint(0, 2, {n}).to(at::kFloat) * 2 - 1),
          n / 10, "+-equal");
    check(-torch::arange(n, at::kFloat), n / 10, "negative ramp");
    check(torch::arange(n, at::kFloat), n / 10, "ramp");
    check(-0.0f * torch::ones({n}), n / 5, "negative zeros");
  }
  // k=0 and k=n shapes and dtypes.
  const at::Tensor x = torch::randn({10});
  EXPECT_EQ(topk_abs_indices(x, 0).scalar_type(), at::kInt);
  EXPECT_EQ(topk_abs_indices(x, 0).numel(), 0);
  EXPECT_TRUE(at::equal(topk_abs_indices(x, 10), at::arange(10, at::kInt)));
  // All-equal beyond one chunk: exactly the first k indices.
  EXPECT_TRUE(at::equal(topk_abs_indices(torch::ones({300000}), 123456),
                        at::arange(123456, at::kInt)));
}

TEST_F(TopkSelect, SparseGradients) {
  // Mostly exact zeros (untouched embedding rows), with k above and below the nonzero count.
  const int64_t n = 400000;
  const at::Tensor x = torch::randn({n}) * (torch::rand({n}) < 0.05).to(at::kFloat);
  for (int64_t k : {n / 1000, n / 100, n / 25, n / 10, n / 2}) check(x, k, "95% zeros");
}

TEST_F(TopkSelect, NanAndInfinity) {
  for (int64_t n : {int64_t{50}, int64_t{100000}}) {
    at::Tensor x = torch::randn({n});
    float* v = x.data_ptr<float>();
    const float inf = std::numeric_limits<float>::infinity();
    v[3] = std::numeric_limits<float>::quiet_NaN();
    v[7] = -std::numeric_limits<float>::quiet_NaN();
    v[n - 1] = std::numeric_limits<float>::signaling_NaN();
    v[5] = inf;
    v[n / 2] = -inf;
    v[1] = std::numeric_limits<float>::max();
    // NaNs first, then the infinities, then the rest.
    for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{6},
                      n / 10, n - 1})
      check(x, k, "nan/inf");
    const at::Tensor two = topk_abs_indices(x, 2);
    EXPECT_EQ(two[0].item<int32_t>(), 3);  // the two lowest-indexed NaNs
    EXPECT_EQ(two[1].item<int32_t>(), 7);
  }
}

TEST_F(TopkSelect, RetryWhenTheFirstThresholdIsTooHigh) {
  const int64_t n = 250000;
  const at::Tensor x = torch::randn({n});
  x.data_ptr<float>()[9] = 100.0f;
  for (int64_t k : {int64_t{1}, int64_t{2}, n / 100, n / 10}) {
    // A first threshold that collects 1 candidate (or none), so the sampled ones must follow.
    for (float t : {50.0f, 1000.0f, std::numeric_limits<float>::infinity()}) {
      detail::TopkSelectOptions options;
      options.first_threshold = t;
      const at::Tensor got = detail::topk_abs_indices(x, k, options);
      const std::vector<int32_t> want = reference(x, k);
      ASSERT_EQ(got.numel(), k);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), got.data_ptr<int32_t>()))
          << "k=" << k << " t=" << t;
    }
  }
  // A first threshold of 0 collects everything: the exact full path.
  for (int64_t k : {int64_t{1}, n / 100, n / 2}) {
    detail::TopkSelectOptions options;
    options.first_threshold = 0.0f;
    EXPECT_TRUE(at::equal(detail::topk_abs_indices(x, k, options), topk_abs_indices(x, k)));
  }
}

TEST_F(TopkSelect, DeterministicAcrossCallsAndThreadCounts) {
  const int64_t n = 2000003;
  const at::Tensor x = torch::randint(-50, 51, {n}).to(at::kFloat) * 0.25f;  // many ties
  const at::Tensor y = torch::randn({n});
  for (const at::Tensor& t : {x, y}) {
    for (int64_t k : {n / 1000, n / 100, n / 10}) {
      at::set_num_threads(2);
      const at::Tensor a = topk_abs_indices(t, k);
      const at::Tensor b = topk_abs_indices(t, k);
      at::set_num_threads(1);
      const at::Tensor c = topk_abs_indices(t, k);
      at::set_num_threads(5);  // more threads than chunks of some passes, and than cores
      const at::Tensor d = topk_abs_indices(t, k);
      EXPECT_TRUE(at::equal(a, b));
      EXPECT_TRUE(at::equal(a, c));
      EXPECT_TRUE(at::equal(a, d));
    }
  }
  check(x, n / 100, "ties, 2M");
}

TEST_F(TopkSelect, RejectsBadInput) {
  const at::Tensor x = torch::randn({100});
  EXPECT_THROW(topk_abs_indices(at::Tensor(), 1), Error);
  EXPECT_THROW(topk_abs_indices(x.to(at::kDouble), 1), Error);
  EXPECT_THROW(topk_abs_indices(x.to(at::kHalf), 1), Error);
  EXPECT_THROW(topk_abs_indices(x.to(at::kInt), 1), Error);
  EXPECT_THROW(topk_abs_indices(x.view({10, 10}), 1), Error);
  EXPECT_THROW(topk_abs_indices(x.slice(0, 0, 100, 2), 1), Error);  // non-contiguous
  EXPECT_THROW(topk_abs_indices(torch::tensor(1.0f), 1), Error);     // 0-D
  EXPECT_THROW(topk_abs_indices(x, -1), Error);
  EXPECT_THROW(topk_abs_indices(x, 101), Error);
  EXPECT_THROW(topk_abs_indices(torch::randn({0}), 1), Error);
  EXPECT_EQ(topk_abs_indices(torch::randn({0}), 0).numel(), 0);
  try {
    topk_abs_indices(x.to(at::kDouble), 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("float32"), std::string::npos) << e.what();
  }
  try {
    topk_abs_indices(x, 101);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k = 101"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace condense
