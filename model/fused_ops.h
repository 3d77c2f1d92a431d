// Fused pointwise chains of a Llama layer for training on CPU: RMSNorm, SwiGLU's
// silu(gate) * up, RoPE, and the cross-entropy loss, each a custom autograd function whose
// forward and backward are one pass over the data (model/fused_kernels.h) instead of the 5-10
// ATen ops (and as many passes over memory) the composite expressions take. Measured:
// bench/RESULTS.md, "Training: fused ops against PyTorch eager and torch.compile".
//
// Each applies where fused_ops_apply() says so: float32 or bf16 CPU tensors, CPU autocast off or
// in bf16. Under bf16 autocast (train.precision=bf16) the matrix products write bf16, so SwiGLU,
// RoPE and the loss read and write bf16, computing in float32 and rounding once per output
// (the composites round after every op); RMSNorm reads the float32 residual stream and writes
// bf16, what the projection reading it would cast it to. Elsewhere (CUDA, fp16 autocast, other
// dtypes) the callers keep the composite expressions. Under a rebuild sink
// (model/rebuildable.h) the callers mark the fused outputs with the fused forward itself as the
// rebuild function: deterministic (each row or element computed by one thread with the same
// kernel), so a rebuild is bitwise equal and recompute policies keep bitwise-equal gradients.
// Results agree with the composites to float rounding (tests/test_fused_ops.cpp: 1e-5 on
// values and gradients).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace condense {

// True when the fused ops may replace the composite for inputs like x.
bool fused_ops_apply(const at::Tensor& x);
// True under CPU autocast to bf16.
bool cpu_autocast_bf16();
// On by default; off when the environment sets CONDENSE_FUSED_OPS=0 (A/B timing) or after
// set_fused_ops_enabled(false) (tests of what the composite graph saves).
void set_fused_ops_enabled(bool on);
bool fused_ops_enabled();

// True when q/k/v (and gate/up) should come from one GEMM over concatenated weights: where the
// fused ops apply and gradients are recorded. The concatenation copies the weights on every
// call, paid back by one larger GEMM and one input gradient over a training batch; at inference
// (no grad; one token per call when decoding) the copy would cost more than it saves.
bool pack_projections(const at::Tensor& x);

// weight * x / sqrt(mean(x^2, -1) + eps): x [..., n] (any strides) and weight [n] float32, the
// result in `out` (float32 or bf16).
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                          at::ScalarType out = at::kFloat);

// silu(gate) * up, same shapes; with `gelu`, GeGLU: gelu_tanh(gate) * up (Gemma's MLP, GELU's
// tanh approximation as at::gelu(gate, "tanh")).
at::Tensor fused_swiglu(const at::Tensor& gate, const at::Tensor& up, bool gelu = false);

// The same on gate and up packed side by side, gu [..., 2I] (gate first): h [..., I] = silu(gu[..., :I]) *
// gu[..., I:] (gelu_tanh with `gelu`), its gradient written into one [..., 2I] tensor.
at::Tensor fused_swiglu_packed(const at::Tensor& gu, bool gelu = false);

// Rotate-half RoPE: x [B, H, T, D] (last dim contiguous; any other strides), cos/sin [T, D].
at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Mean cross-entropy of logits [N, V] (float32 or bf16; the loss float32) against targets [N] (int64, each in [0, V):
// checked), as at::cross_entropy_loss computes it, in one pass forward (log-sum-exp per row) and
// one backward (softmax minus one-hot, written once), without log_softmax's [N, V] output.
at::Tensor fused_cross_entropy(const at::Tensor& logits, const at::Tensor& targets);

// The language-modeling loss the trainer uses: fused_cross_entropy where fused_ops_apply(logits),
// else at::cross_entropy_loss. logits [..., V], targets [...].
at::Tensor lm_cross_entropy(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace condense
