// Micro-benchmark: condense's fused training ops (model/fused_ops.h) against the composite ATen
// expressions PyTorch eager runs for the same math, forward + backward, in float32 and in bf16.
//
//   build/bench/fused_ops_bench [--reps N] [--threads 1,2] [--tokens 1024] [--hidden 512]
//                               [--intermediate 1376] [--heads 8] [--kv-heads 4] [--head-dim 64]
//                               [--vocab 4096] [--only OP]
//
// Defaults are the 25M model of bench/train_throughput.py at 8 x 128 tokens. bf16 is what
// train.precision=bf16 (CPU autocast) hands each op: RMSNorm reads the float32 residual stream
// and its output is cast to bf16 by the projection after it (composite: float32 expression, then
// .to(bf16)); SwiGLU and RoPE read the bf16 outputs of matrix products (composite: the same
// expression on bf16 tensors, as eager runs it); the loss reads bf16 logits (composite: autocast's
// float32 cross-entropy of the widened logits). Each configuration first checks that fused and
// composite agree (float32: 1e-4 relative; bf16: 2e-2), then times them interleaved rep by rep,
// median of N (default 15) after 3 warm-up reps; prints a markdown table with `uptime` before
// and after.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "model/fused_ops.h"

namespace {

using condense::fused_cross_entropy;
using condense::fused_rms_norm;
using condense::fused_rope;
using condense::fused_swiglu;

struct Options {
  int reps = 15;
  std::vector<int> threads = {1, 2};
  std::string only;  // run only the cases whose op name starts with this
  int64_t tokens = 1024, hidden = 512, intermediate = 1376, heads = 8, kv_heads = 4,
          head_dim = 64, vocab = 4096;
};

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoi(item));
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fused_ops_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help") {
      std::printf("usage: fused_ops_bench [--reps N] [--threads 2,1] [--tokens N] [--hidden N] "
                  "[--intermediate N] [--heads N] [--kv-heads N] [--head-dim N] [--vocab N] "
                  "[--only OP]\n");
      std::exit(0);
    }
    if (a == "--reps") o.reps = std::stoi(next());
    else if (a == "--threads") o.threads = parse_list(next());
    else if (a == "--tokens") o.tokens = std::stoll(next());
    else if (a == "--hidden") o.hidden = std::stoll(next());
    else if (a == "--intermediate") o.intermediate = std::stoll(next());
    else if (a == "--heads") o.heads = std::stoll(next());
    else if (a == "--kv-heads") o.kv_heads = std::stoll(next());
    else if (a == "--head-dim") o.head_dim = std::stoll(next());
    else if (a == "--vocab") o.vocab = std::stoll(next());
    else if (a == "--only") o.only = next();
    else {
      std::fprintf(stderr, "fused_ops_bench: unknown option %s\n", a.c_str());
      std::exit(2);
    }
  }
  return o;
}

// One op's forward and backward on fresh leaves; returns the output and the input gradients.
using Step = std::function<std::vector<at::Tensor>()>;

// Forward f on leaf copies of inputs, backward with grad_out.
std::vector<at::Tensor> fwd_bwd(const std::function<at::Tensor(std::vector<at::Tensor>&)>& f,
                                const std::vector<at::Tensor>& inputs, const at::Tensor& grad_out) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor& t : inputs) leaves.push_back(t.detach().requires_grad_(true));
  at::Tensor out = f(leaves);
  out.backward(grad_out);
  std::vector<at::Tensor> r = {out.detach()};
  for (at::Tensor& l : leaves) r.push_back(l.grad());
  return r;
}

double max_rel_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const at::Tensor x = a[i].to(at::kFloat), y = b[i].to(at::kFloat);
    const double scale = std::max(1e-12, y.abs().max().item<double>());
    worst = std::max(worst, (x - y).abs().max().item<double>() / scale);
  }
  return worst;
}

double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  std::string op, dtype, shape;
  Step fused, composite;
  double tolerance;
};

std::vector<Case> cases(const Options& o) {
  std::vector<Case> out;
  const int64_t n = o.tokens, b = 8, t = o.tokens / 8;
  const at::Tensor w = at::rand({o.hidden}) + 0.5;
  const double eps = 1e-5;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    const bool bf = dt == at::kBFloat16;
    const std::string name = bf ? "bf16" : "fp32";
    const double tol = bf ? 2e-2 : 1e-4;
    // RMSNorm: x is the float32 residual stream either way; dy in the output's dtype.
    {
      const at::Tensor x = at::randn({n, o.hidden}), dy = at::randn({n, o.hidden}).to(dt);
      out.push_back({"RMSNorm", name, std::to_string(n) + " x " + std::to_string(o.hidden),
                     [=] { return fwd_bwd([&](auto& v) { return fused_rms_norm(v[0], v[1], eps, dt); }, {x, w}, dy); },
                     [=] {
                       return fwd_bwd([&](auto& v) {
                         return (v[1] * (v[0] * at::rsqrt(v[0].pow(2).mean(-1, true) + eps))).to(dt);
                       }, {x, w}, dy);
                     },
                     tol});
    }
    // SwiGLU (and GeGLU) on [N, I] gate and up.
    {
      const at::Tensor g = (at::randn({n, o.intermediate}) * 3).to(dt), u = at::randn({n, o.intermediate}).to(dt);
      const at::Tensor dh = at::randn({n, o.intermediate}).to(dt);
      out.push_back({"SwiGLU", name, std::to_string(n) + " x " + std::to_string(o.intermediate),
                     [=] { return fwd_bwd([](auto& v) { return fused_swiglu(v[0], v[1]); }, {g, u}, dh); },
                     [=] { return fwd_bwd([](auto& v) { return at::silu(v[0]) * v[1]; }, {g, u}, dh); },
                     tol});
      // GeGLU (Gemma's MLP) on the same tensors: at::gelu(g, "tanh") * u in eager.
      out.push_back({"GeGLU", name, std::to_string(n) + " x " + std::to_string(o.intermediate),
                     [=] { return fwd_bwd([](auto& v) { return fused_swiglu(v[0], v[1], true); }, {g, u}, dh); },
                     [=] { return fwd_bwd([](auto& v) { return at::gelu(v[0], "tanh") * v[1]; }, {g, u}, dh); },
                     tol});
    }
    // RoPE on q and k as attention makes them: [B, T, H, D] projections viewed as [B, H, T, D].
    {
      const int64_t d = o.head_dim, half = d / 2;
      const at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, d, 2).to(at::kFloat) / d);
      const at::Tensor f = at::outer(at::arange(t).to(at::kFloat), inv);
      const at::Tensor cos = at::cat({f, f}, -1).cos(), sin = at::cat({f, f}, -1).sin();
      for (int64_t h : {o.heads, o.kv_heads}) {
        const at::Tensor x = at::randn({b, t, h, d}).to(dt), dy = at::randn({b, h, t, d}).to(dt);
        auto composite = [cos, sin, half, dt](const at::Tensor& v) {
          const at::Tensor q = v.transpose(1, 2);
          const at::Tensor rot = at::cat({-q.narrow(-1, half, half), q.narrow(-1, 0, half)}, -1);
          return q * cos.to(dt) + rot * sin.to(dt);
        };
        out.push_back({h == o.heads ? "RoPE (q)" : "RoPE (k)", name,
                       std::to_string(b) + " x " + std::to_string(h) + " x " + std::to_string(t) + " x " + std::to_string(d),
                       [=] { return fwd_bwd([&](auto& v) { return fused_rope(v[0].transpose(1, 2), cos, sin); }, {x}, dy); },
                       [=] { return fwd_bwd([&](auto& v) { return composite(v[0]); }, {x}, dy); },
                       tol});
      }
    }
    // Cross-entropy on [N, V] logits (autocast computes the loss in float32).
    {
      const at::Tensor logits = (at::randn({n, o.vocab}) * 3).to(dt);
      const at::Tensor targets = at::randint(0, o.vocab, {n}, at::kLong);
      const at::Tensor g = at::scalar_tensor(1.0);
      out.push_back({"cross-entropy", name, std::to_string(n) + " x " + std::to_string(o.vocab),
                     [=] { return fwd_bwd([&](auto& v) { return fused_cross_entropy(v[0], targets); }, {logits}, g); },
                     [=] {
                       return fwd_bwd([&](auto& v) { return at::cross_entropy_loss(v[0].to(at::kFloat), targets); },
                                      {logits}, g);
                     },
                     tol});
    }
  }
  return out;
}

std::string uptime() {
  FILE* p = popen("uptime", "r");
  if (!p) return "?";
  char buf[256] = {0};
  const char* got = fgets(buf, sizeof buf, p);
  pclose(p);
  std::string s = got ? buf : "?";
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  at::manual_seed(0);
  std::printf("fused_ops_bench: %d reps (median), %lld tokens, hidden %lld, intermediate %lld, "
              "heads %lld/%lld x %lld, vocab %lld; %s\n\n", o.reps, (long long)o.tokens,
              (long long)o.hidden, (long long)o.intermediate, (long long)o.heads,
              (long long)o.kv_heads, (long long)o.head_dim, (long long)o.vocab, at::get_cpu_capability().c_str());
  std::printf("load before: `%s`\n\n", uptime().c_str());
  std::printf("| op | dtype | shape | threads | fused ms (fwd+bwd) | composite ms | composite / fused | max rel. diff |\n");
  std::printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  const std::vector<Case> all = cases(o);
  int failures = 0;
  for (int threads : o.threads) {
    at::set_num_threads(threads);
    for (const Case& c : all) {
      if (c.op.rfind(o.only, 0) != 0) continue;
      const double diff = max_rel_diff(c.fused(), c.composite());
      if (diff > c.tolerance) ++failures;
      std::vector<double> tf, tc;
      for (int r = 0; r < o.reps + 3; ++r) {
        for (int which = 0; which < 2; ++which) {
          const auto t0 = std::chrono::steady_clock::now();
          (which == 0 ? c.fused : c.composite)();
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          if (r >= 3) (which == 0 ? tf : tc).push_back(ms);
        }
      }
      const double f = median_ms(tf), m = median_ms(tc);
      std::printf("| %s | %s | %s | %d | %.3f | %.3f | %.2f | %.1e%s |\n", c.op.c_str(), c.dtype.c_str(),
                  c.shape.c_str(), threads, f, m, m / f, diff, diff > c.tolerance ? " (over tolerance)" : "");
      std::fflush(stdout);
    }
  }
  std::printf("\nload after: `%s`\n", uptime().c_str());
  return failures == 0 ? 0 : 1;
}
