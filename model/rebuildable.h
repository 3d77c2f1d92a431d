// Marks for cheaply rebuildable activations: a model op whose output is large but costs almost
// nothing to compute again from tensors autograd keeps anyway (RMSNorm's normalized input and
// output, SwiGLU's silu(gate) and product, the attention output's layout copy) announces it
// here with a function that rebuilds it. A memory policy that collects
// marks (memory/pointwise_rebuild.h) may then drop such a tensor when autograd saves it and
// rebuild it in backward; with no collector, marking is a thread-local check and nothing else.
//
// This is Korthikanti et al.'s selective recomputation criterion ("Reducing Activation
// Recomputation in Large Transformer Models", 2022: recompute what is large in memory but cheap
// in FLOPs) applied at op level, as PyTorch's selective activation checkpointing does.
//
// Contract for the rebuild function: run under no-grad, it returns a tensor bitwise equal to
// `out` with the same dtype, sizes and strides, from detached captures only (it may run during
// backward, after the forward's frame is gone).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>

namespace condense {

using RebuildFn = std::function<at::Tensor()>;

class RebuildSink {
 public:
  virtual ~RebuildSink() = default;
  virtual void mark(const at::Tensor& out, RebuildFn rebuild) = 0;
};

// The collector for ops running on this thread, or null. Only non-null while grad mode is on
// and a policy collects: callers test it before building the rebuild function.
RebuildSink* rebuild_sink();

// RAII: makes `sink` the collector on this thread (nested scopes restore the previous one).
class RebuildSinkScope {
 public:
  explicit RebuildSinkScope(RebuildSink* sink);
  ~RebuildSinkScope();
  RebuildSinkScope(const RebuildSinkScope&) = delete;
  RebuildSinkScope& operator=(const RebuildSinkScope&) = delete;

 private:
  RebuildSink* previous_;
};

}  // namespace condense
