#include "model/fused_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "model/fused_kernels.h"

namespace condense {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrainElements = 1 << 14;  // elements per parallel task (at least)

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, n)); }

// The kernels' storage types (model/fused_kernels.h) and their ATen dtypes.
template <class T>
constexpr at::ScalarType dtype_of() {
  return std::is_same_v<T, float> ? at::kFloat : at::kBFloat16;
}

template <class T>
T* data(const at::Tensor& t) {
  CONDENSE_CHECK(t.scalar_type() == dtype_of<T>(), "fused ops: a {} tensor where {} was expected",
                 c10::toString(t.scalar_type()), c10::toString(dtype_of<T>()));
  return reinterpret_cast<T*>(t.data_ptr());
}

// Calls f(T{}) with T the storage type of `type`: float or bf16 (the callers checked which).
template <class F>
void with_storage(at::ScalarType type, const F& f) {
  if (type == at::kBFloat16) {
    f(fused::bf16{});
  } else {
    f(float{});
  }
}

bool float_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  // x float32; y in `out` (float32, or bf16 under bf16 autocast); dx float32, dy as y.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight,
                            double eps, at::ScalarType out) {
    const at::Tensor x = x_in.contiguous();
    const at::Tensor w = weight.contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    at::Tensor y = at::empty(x.sizes(), x.options().dtype(out));
    at::Tensor rstd = at::empty({rows}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    float* rp = rstd.data_ptr<float>();
    with_storage(out, [&](auto tag) {
      using Y = decltype(tag);
      Y* yp = data<Y>(y);
      at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
        fused::rms_norm_forward(xp, wp, yp, rp, r0, r1, n, static_cast<float>(eps));
      });
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor& rstd = saved[2];
    const at::Tensor dy = grads[0].contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    at::Tensor dx = at::empty_like(x);
    // One partial weight gradient per thread, summed after (no shared writes).
    const int threads = at::get_num_threads();
    at::Tensor partial = at::zeros({threads, n}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    float* pp = partial.data_ptr<float>();
    with_storage(dy.scalar_type(), [&](auto tag) {
      using DY = decltype(tag);
      const DY* dyp = data<DY>(dy);
      at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
        const int t = at::get_thread_num();
        CONDENSE_CHECK(t < threads, "fused RMSNorm: thread {} of {}", t, threads);
        fused::rms_norm_backward(xp, wp, rp, dyp, dxp, pp + t * n, r0, r1, n);
      });
    });
    return {dx, partial.sum(0), at::Tensor(), at::Tensor()};
  }
};

// The gated MLP activation's kernels: GeGLU (Gemma) where Gelu, else SwiGLU.
template <bool Gelu, class T>
void glu_forward(const T* g, const T* u, T* h, int64_t i0, int64_t i1) {
  if constexpr (Gelu) fused::geglu_forward(g, u, h, i0, i1);
  else fused::swiglu_forward(g, u, h, i0, i1);
}

template <bool Gelu, class T>
void glu_backward(const T* g, const T* u, const T* dh, T* dg, T* du, int64_t i0, int64_t i1) {
  if constexpr (Gelu) fused::geglu_backward(g, u, dh, dg, du, i0, i1);
  else fused::swiglu_backward(g, u, dh, dg, du, i0, i1);
}

// SwiGLU (GeGLU where Gelu) in float32 or bf16: every tensor in gate's dtype.
template <bool Gelu>
struct GluFn : public torch::autograd::Function<GluFn<Gelu>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_in, const at::Tensor& up_in) {
    const at::Tensor g = gate_in.contiguous(), u = up_in.contiguous();
    at::Tensor h = at::empty_like(g);
    with_storage(g.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* gp = data<T>(g);
      const T* up = data<T>(u);
      T* hp = data<T>(h);
      at::parallel_for(0, g.numel(), kGrainElements, [&](int64_t i0, int64_t i1) {
        glu_forward<Gelu>(gp, up, hp, i0, i1);
      });
    });
    ctx->save_for_backward({g, u});
    return h;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = saved[0];
    const at::Tensor& u = saved[1];
    const at::Tensor dh = grads[0].contiguous();
    at::Tensor dg = at::empty_like(g), du = at::empty_like(u);
    with_storage(g.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* gp = data<T>(g);
      const T* up = data<T>(u);
      const T* dhp = data<T>(dh);
      T* dgp = data<T>(dg);
      T* dup = data<T>(du);
      at::parallel_for(0, g.numel(), kGrainElements, [&](int64_t i0, int64_t i1) {
        glu_backward<Gelu>(gp, up, dhp, dgp, dup, i0, i1);
      });
    });
    return {dg, du};
  }
};

template <bool Gelu>
struct GluPackedFn : public torch::autograd::Function<GluPackedFn<Gelu>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gu_in) {
    const at::Tensor gu = gu_in.contiguous();
    const int64_t width = gu.size(-1) / 2, rows = gu.numel() / (2 * width);
    std::vector<int64_t> sizes(gu.sizes().begin(), gu.sizes().end());
    sizes.back() = width;
    at::Tensor h = at::empty(sizes, gu.options());
    with_storage(gu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* p = data<T>(gu);
      T* hp = data<T>(h);
      at::parallel_for(0, rows, row_grain(2 * width), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          glu_forward<Gelu>(p + r * 2 * width, p + r * 2 * width + width, hp + r * width, 0, width);
      });
    });
    ctx->save_for_backward({gu});
    return h;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor gu = ctx->get_saved_variables()[0];
    const at::Tensor dh = grads[0].contiguous();
    const int64_t width = gu.size(-1) / 2, rows = gu.numel() / (2 * width);
    at::Tensor d = at::empty_like(gu);
    with_storage(gu.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* p = data<T>(gu);
      const T* dhp = data<T>(dh);
      T* dp = data<T>(d);
      at::parallel_for(0, rows, row_grain(2 * width), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t o = r * 2 * width;
          glu_backward<Gelu>(p + o, p + o + width, dhp + r * width, dp + o, dp + o + width, 0, width);
        }
      });
    });
    return {d};
  }
};

// Calls f(row of x, row of y, position) for every (b, h, t) row of x, y [B, H, T, D] (last dim
// contiguous in both, storage T), split over threads.
template <class T, typename F>
void for_each_rope_row(const at::Tensor& x, at::Tensor& y, const F& f) {
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  const int64_t rows = b * h * t;
  const T* xp = data<T>(x);
  T* yp = data<T>(y);
  at::parallel_for(0, rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t pos = r % t, head = (r / t) % h, batch = r / (t * h);
      f(xp + batch * x.stride(0) + head * x.stride(1) + pos * x.stride(2),
        yp + batch * y.stride(0) + head * y.stride(1) + pos * y.stride(2), pos);
    }
  });
}

// RoPE on x in float32 or bf16 (y and the gradients in x's dtype), cos/sin float32.
struct RopeFn : public torch::autograd::Function<RopeFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& cos_in,
                            const at::Tensor& sin_in) {
    const at::Tensor x = x_in.stride(-1) == 1 ? x_in : x_in.contiguous();
    const at::Tensor c = cos_in.contiguous(), s = sin_in.contiguous();
    at::Tensor y = at::empty_like(x);  // x's layout when dense, else contiguous
    if (y.stride(-1) != 1) y = at::empty(x.sizes(), x.options());
    const int64_t d = x.size(3);
    const float* cp = c.data_ptr<float>();
    const float* sp = s.data_ptr<float>();
    with_storage(x.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      for_each_rope_row<T>(x, y, [&](const T* xr, T* yr, int64_t pos) {
        fused::rope_row_forward(xr, yr, cp + pos * d, sp + pos * d, d / 2);
      });
    });
    ctx->save_for_backward({c, s});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& c = saved[0];
    const at::Tensor& s = saved[1];
    const at::Tensor dy = grads[0].stride(-1) == 1 ? grads[0] : grads[0].contiguous();
    at::Tensor dx = at::empty_like(dy);
    if (dx.stride(-1) != 1) dx = at::empty(dy.sizes(), dy.options());
    const int64_t d = dy.size(3);
    const float* cp = c.data_ptr<float>();
    const float* sp = s.data_ptr<float>();
    with_storage(dy.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      for_each_rope_row<T>(dy, dx, [&](const T* dyr, T* dxr, int64_t pos) {
        fused::rope_row_backward(dyr, dxr, cp + pos * d, sp + pos * d, d / 2);
      });
    });
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// Cross-entropy of float32 or bf16 logits (the gradient in their dtype); the loss, the per-row
// log-sum-exp and the losses in float32.
struct CrossEntropyFn : public torch::autograd::Function<CrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& targets_in) {
    const at::Tensor logits = logits_in.contiguous();
    const at::Tensor targets = targets_in.contiguous();
    const int64_t n = logits.size(0), vocab = logits.size(1);
    const auto f32 = logits.options().dtype(at::kFloat);
    at::Tensor lse = at::empty({n}, f32);
    at::Tensor rows = at::empty({n}, f32);
    const int64_t* tp = targets.data_ptr<int64_t>();
    float* sp = lse.data_ptr<float>();
    float* rp = rows.data_ptr<float>();
    with_storage(logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* lp = data<T>(logits);
      at::parallel_for(0, n, row_grain(vocab), [&](int64_t r0, int64_t r1) {
        fused::cross_entropy_forward(lp, tp, sp, rp, r0, r1, vocab);
      });
    });
    ctx->save_for_backward({logits, targets, lse});
    return rows.sum().div_(static_cast<double>(n));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    const at::Tensor& targets = saved[1];
    const at::Tensor& lse = saved[2];
    const int64_t n = logits.size(0), vocab = logits.size(1);
    const float scale = grads[0].item<float>() / static_cast<float>(n);
    at::Tensor d = at::empty_like(logits);
    const int64_t* tp = targets.data_ptr<int64_t>();
    const float* sp = lse.data_ptr<float>();
    with_storage(logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      const T* lp = data<T>(logits);
      T* dp = data<T>(d);
      at::parallel_for(0, n, row_grain(vocab), [&](int64_t r0, int64_t r1) {
        fused::cross_entropy_backward(lp, tp, sp, scale, dp, r0, r1, vocab);
      });
    });
    return {d, at::Tensor()};
  }
};

}  // namespace

namespace {

// CONDENSE_FUSED_OPS=0 in the environment starts with the composites everywhere.
std::atomic<bool>& fused_enabled() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("CONDENSE_FUSED_OPS");
    return v == nullptr || std::string(v) != "0";
  }()};
  return on;
}

}  // namespace

void set_fused_ops_enabled(bool on) { fused_enabled().store(on); }

bool fused_ops_enabled() { return fused_enabled().load(); }

bool cpu_autocast_bf16() {
  return at::autocast::is_autocast_enabled(at::kCPU) &&
         at::autocast::get_autocast_dtype(at::kCPU) == at::kBFloat16;
}

bool fused_ops_apply(const at::Tensor& x) {
  // Under CPU autocast only in bf16 (the dtype the kernels store besides float32).
  return fused_ops_enabled() && x.device().is_cpu() && float_or_bf16(x) && x.numel() > 0 &&
         (!at::autocast::is_autocast_enabled(at::kCPU) || cpu_autocast_bf16());
}

bool pack_projections(const at::Tensor& x) {
  // Not under autocast: the concatenated weight is not a leaf, so autocast would cast it to bf16
  // again on every call instead of once per step from its cache.
  return fused_ops_apply(x) && x.scalar_type() == at::kFloat &&
         !at::autocast::is_autocast_enabled(at::kCPU) && at::GradMode::is_enabled();
}

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                          at::ScalarType out) {
  CONDENSE_CHECK(x.size(-1) == weight.numel() && weight.scalar_type() == at::kFloat &&
                     x.scalar_type() == at::kFloat,
                 "fused RMSNorm: x [..., {}] and weight [{}] float32", x.size(-1), weight.numel());
  CONDENSE_CHECK(out == at::kFloat || out == at::kBFloat16,
                 "fused RMSNorm: the output is float32 or bf16, not {}", c10::toString(out));
  return RmsNormFn::apply(x, weight, eps, out);
}

at::Tensor fused_swiglu(const at::Tensor& gate, const at::Tensor& up, bool gelu) {
  CONDENSE_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() &&
                     float_or_bf16(gate),
                 "fused {}: gate and up must have the same shape and dtype (float32 or bf16)",
                 gelu ? "GeGLU" : "SwiGLU");
  return gelu ? GluFn<true>::apply(gate, up) : GluFn<false>::apply(gate, up);
}

at::Tensor fused_swiglu_packed(const at::Tensor& gu, bool gelu) {
  CONDENSE_CHECK(gu.dim() >= 1 && gu.size(-1) % 2 == 0 && float_or_bf16(gu),
                 "fused {}: packed gate and up [..., 2I] float32 or bf16", gelu ? "GeGLU" : "SwiGLU");
  return gelu ? GluPackedFn<true>::apply(gu) : GluPackedFn<false>::apply(gu);
}

at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  CONDENSE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0 && float_or_bf16(x) && cos.dim() == 2 &&
                     cos.size(0) == x.size(2) && cos.size(1) == x.size(3) &&
                     sin.sizes() == cos.sizes() && cos.scalar_type() == at::kFloat &&
                     sin.scalar_type() == at::kFloat,
                 "fused RoPE: x [B, H, T, D] (D even, float32 or bf16) with cos/sin [T, D] float32");
  return RopeFn::apply(x, cos, sin);
}

at::Tensor fused_cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  CONDENSE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0) &&
                     targets.scalar_type() == at::kLong && float_or_bf16(logits),
                 "fused cross-entropy: logits [N, V] float32 or bf16 and targets [N] int64");
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    CONDENSE_CHECK(lo >= 0 && hi < logits.size(1), "cross-entropy: target ids {}..{} outside the "
                   "vocabulary [0, {})", lo, hi, logits.size(1));
  }
  return CrossEntropyFn::apply(logits, targets);
}

at::Tensor lm_cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  const at::Tensor flat = logits.reshape({-1, logits.size(-1)});
  const at::Tensor t = targets.reshape({-1});
  if (fused_ops_apply(flat) && t.scalar_type() == at::kLong && t.numel() == flat.size(0)) {
    // Targets outside [0, V) (ignore_index -100, or bad ids that deserve ATen's error) take the
    // ATen loss.
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    if (lo >= 0 && hi < flat.size(1)) return CrossEntropyFn::apply(flat, t);
  }
  return at::cross_entropy_loss(flat, t);
}

}  // namespace condense
