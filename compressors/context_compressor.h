// What every context compressor gives a frozen decoder: input embeddings that stand in for a
// span of context tokens. The recipe kind (recipes/context_compressor.h), `condense
// context-eval`, `compress` and generate / score --context see compressors through this
// interface only; each method (compressors/context_arc.h, compressors/context_compllm.h) says
// how it builds the embeddings and how it trains.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "compressors/compressor_config.h"
#include "compressors/context_sequence.h"
#include "data/loader.h"
#include "io/hdf5_file.h"
#include "model/llama.h"

namespace condense {

// A compressor's trained tensors by checkpoint name, from wherever they are stored: a run's
// checkpoint (HDF5) or an exported context_compressor.safetensors (formats/context_export.h).
struct StoredTensors {
  std::string source;  // for errors: the file
  std::map<std::string, at::Tensor> tensors;
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
  // Throws naming the source and the tensor when absent.
  const at::Tensor& at(const std::string& name) const;
};
// The tensors of every context compressor method in a checkpoint (names starting encoder.,
// projector., compllm., xrag.).
StoredTensors compressor_tensors(const H5File& file);

class ContextCompressor {
 public:
  virtual ~ContextCompressor() = default;
  // ids [B, n] (n >= 1, on the decoder's device) -> [B, k, hidden], what the decoder reads
  // between the prefix and the text that follows: ARC's compressed vectors and <Cont>, CompLLM's
  // concept embeddings. Long contexts are split as the method does (ARC: chunks of
  // context.chunk_len; CompLLM: segments of context.segment_len), each compressed independently.
  virtual at::Tensor context(LlamaForCausalLM& decoder, const at::Tensor& ids) = 0;
  // k for n tokens.
  virtual int64_t positions(int64_t n) const = 0;
  // The training loss on one batch of windows laid out as `layout` (the decoder frozen).
  virtual at::Tensor loss(LlamaForCausalLM& decoder, const Batch& batch, const ContextLayout& layout) = 0;
  // Teacher-forced accuracy of reconstructing the context from its compressed form, when the
  // method trains reconstruction ({correct, scored}); {0, 0} otherwise.
  virtual std::pair<double, int64_t> reconstruction(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                                    const ContextLayout& layout) {
    return {0, 0};
  }
  // Every trained tensor under its checkpoint name, in a fixed order; load() restores them.
  virtual std::vector<std::pair<std::string, at::Tensor>> named() const = 0;
  virtual void load(const StoredTensors& stored) = 0;
  // Once before training: e.g. output scales from the first training chunk [1, n].
  virtual void calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) {}
  // Moves the trained tensors (a method may replace them: call named() afterwards).
  virtual void to(c10::Device device) = 0;
  virtual void train(bool on) = 0;
  virtual std::string describe() const = 0;
};

// Copies each of `tensors` (checkpoint name, destination) from `stored`, checking presence and
// shape; errors name the file, `what` (e.g. "ARC encoder") and the tensor, plus `hint` on a
// shape mismatch. For the methods' load().
void load_named_tensors(const StoredTensors& stored, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::string& what, const std::string& hint = "");

// The method context.method names, built for `decoder` (trained tensors initialized; draws from
// the global generator). Throws naming the key when an option is out of range.
std::shared_ptr<ContextCompressor> make_context_compressor(LlamaForCausalLM& decoder,
                                                           const ContextConfig& cfg);

// The compressor a context_compressor checkpoint or export holds (its recipe's `context:`
// section and the trained tensors), for `decoder`, in eval mode.
std::shared_ptr<ContextCompressor> load_context_compressor(LlamaForCausalLM& decoder,
                                                           const ContextConfig& cfg, const StoredTensors& stored);

}  // namespace condense
