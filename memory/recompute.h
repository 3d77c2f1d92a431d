// Non-reentrant activation recomputation of one block on saved-tensor hooks (the mechanism of
// torch.utils.checkpoint(use_reentrant=False); selective/full recomputation per Korthikanti et
// al. 2022, "Reducing Activation Recomputation in Large Transformer Models").
//
// recompute_block(fn, x) returns fn(x) but keeps only x and the RNG state: every
// tensor autograd saves inside fn is dropped at pack time and replaced by a handle. The first
// unpack of any handle during backward reruns fn on x with the RNG state of the original
// forward restored (so dropout draws the same masks), collecting the saved tensors in the same
// order; each handle then returns its own tensor, which is freed when autograd frees the saved
// variable. Gradients are bitwise equal to running fn without recomputation (same thread count).
//
// The recomputed tensors are kept until backward uses them through `stash_hooks` when given
// (pack at the rerun, unpack at use: e.g. memory/pointwise_rebuild.h's RebuildHooks, which keep
// only what is expensive to compute and rebuild the rest at use), else as detached tensors.
//
// The block input is kept until the rerun through `input_hooks` when given (pack in forward,
// unpack at the rerun; memory/offload.h's OffloadHooks moves it off the device, which is
// checkpoint offload: under full recomputation the layer inputs are all a step keeps), else as
// a detached tensor. They must be lossless: the rerun has to see the forward's input. Either
// way the input is released once the rerun has run. Nothing may modify x in place after the
// block (an offload copy may still be reading it, and the rerun must see the original).
//
// Contract: fn must be deterministic given x, its captures and the RNG state, and capture by
// value whatever it needs (it runs again during backward). x must be a single tensor.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>

namespace condense {

class SavedTensorHooks;

at::Tensor recompute_block(const std::function<at::Tensor(const at::Tensor&)>& fn,
                           const at::Tensor& x,
                           std::shared_ptr<SavedTensorHooks> stash_hooks = nullptr,
                           std::shared_ptr<SavedTensorHooks> input_hooks = nullptr);

// True while a recomputation runs on this thread (policies must not nest frames then).
bool in_recomputation();

}  // namespace condense
