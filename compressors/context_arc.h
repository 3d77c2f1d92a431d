// ARC-style context encoder (Pilchen et al. 2025, "ARC-Encoder: learning compressed text
// representations for large language models", Kyutai): a trainable encoder turns a chunk of n
// tokens into ceil(n / f) vectors in the frozen decoder's embedding space, which the decoder
// reads in place of the tokens.
//
//   tokens -> the decoder's (frozen) token embedding -> L encoder layers, initialized as copies
//   of the decoder's first L layers but attending bidirectionally (no causal mask) -> in the
//   last layer, the queries of consecutive groups of f tokens are mean-pooled (before RoPE) and
//   attend to all unpooled keys/values; pooled query g sits at position g, key j at position j;
//   the residual stream is pooled the same way -> no final norm -> projector: two linear maps
//   (no activation) through a bottleneck width -> [B, ceil(n/f), hidden].
//
// Two learned vectors in the decoder's embedding space tell the decoder what to do after the
// compressed span: <Cont> (continue the text) and <Rec> (reconstruct the span). Pretraining
// mixes the two tasks (recipes/context_compressor.cpp). The decoder never trains.
//
// Checkpoint names: encoder.layers.<i>.<HF layer parameter name> (e.g.
// encoder.layers.0.self_attn.q_proj.weight), encoder.rec, encoder.cont, projector.0.weight
// [bottleneck, hidden], projector.1.weight [hidden, bottleneck].
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "compressors/context_compressor.h"
#include "io/hdf5_file.h"
#include "model/llama.h"

namespace condense {

struct ArcOptions {
  int64_t encoder_layers = 2;  // 1 .. the decoder's layer count
  int64_t pooling_factor = 4;  // >= 1
  int64_t bottleneck = 0;      // 0: the decoder's hidden size
};

// Mean over consecutive groups of `factor` positions along dim 1 of x [B, n, ...]; the last
// group holds the remaining n mod factor positions when factor does not divide n. Returns
// [B, ceil(n / factor), ...].
at::Tensor group_mean(const at::Tensor& x, int64_t factor);

class ArcEncoderImpl : public torch::nn::Module {
 public:
  // The encoder of `decoder`: its first encoder_layers layers copied, <Rec>/<Cont> at the mean
  // token embedding, and the projector at a random orthonormal map scaled by 1 (see
  // calibrate_scale), drawn from the global generator. Throws naming the option when
  // encoder_layers or pooling_factor is out of range.
  ArcEncoderImpl(LlamaForCausalLM& decoder, ArcOptions options);

  // token_embeds [B, n, hidden] (the decoder's embeddings of the chunk) -> [B, ceil(n/f), hidden].
  at::Tensor forward(const at::Tensor& token_embeds);
  // The encoder's last hidden states before the projector, [B, ceil(n/f), hidden].
  at::Tensor encode(const at::Tensor& token_embeds);
  at::Tensor project(const at::Tensor& pooled);

  // Sets the projector's output scale so that its outputs on `token_embeds` have the RMS of
  // the decoder's token embeddings there: the encoder's residual stream is far larger than an
  // embedding, and the frozen decoder reads embedding-sized vectors. Called once before
  // training (a resumed run restores the trained projector afterwards).
  void calibrate_scale(const at::Tensor& token_embeds);

  // Every parameter under its checkpoint name, in a fixed order.
  std::vector<std::pair<std::string, at::Tensor>> named() const;
  // Copies the tensors of `named()` from `file`, checking every shape; throws naming the file
  // and the tensor when one is missing or differs.
  void load(const StoredTensors& stored);
  // The encoder layer count stored in `file` (0: none).
  static int64_t stored_layers(const StoredTensors& stored);
  static int64_t stored_bottleneck(const StoredTensors& stored);

  const ArcOptions& options() const { return options_; }
  // Compressed positions for a chunk of n tokens.
  int64_t compressed_length(int64_t n) const {
    return (n + options_.pooling_factor - 1) / options_.pooling_factor;
  }

  at::Tensor rec, cont;            // [hidden]
  at::Tensor proj_in, proj_out;    // [bottleneck, hidden], [hidden, bottleneck]

 private:
  at::Tensor layer_forward(LlamaDecoderLayerImpl& layer, const at::Tensor& x, int64_t pool);

  ArcOptions options_;
  LlamaConfig config_;
  std::vector<LlamaDecoderLayer> layers_;
};
TORCH_MODULE(ArcEncoder);

// The ARC encoder as a ContextCompressor: contexts split into chunks of `chunk_len` tokens, each
// compressed independently, then <Cont>. Training (loss) draws per batch from the process's
// generator: reconstruction with probability `reconstruction_share` (the decoder reads
// [compressed chunk, <Rec>] and predicts the chunk), else continuation ([prefix, compressed
// chunk, <Cont>], predicting the rest of the window).
class ArcCompressor : public ContextCompressor {
 public:
  ArcCompressor(LlamaForCausalLM& decoder, ArcOptions options, int64_t chunk_len,
                double reconstruction_share);
  at::Tensor context(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  int64_t positions(int64_t n) const override;
  at::Tensor loss(LlamaForCausalLM& decoder, const Batch& batch, const ContextLayout& layout) override;
  std::pair<double, int64_t> reconstruction(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                            const ContextLayout& layout) override;
  std::vector<std::pair<std::string, at::Tensor>> named() const override { return encoder->named(); }
  void load(const StoredTensors& stored) override { encoder->load(stored); }
  void calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  void to(c10::Device device) override { encoder->to(device); }
  void train(bool on) override { encoder->train(on); }
  std::string describe() const override;

  ArcEncoder encoder{nullptr};

 private:
  int64_t chunk_len_;
  double reconstruction_share_;
};

}  // namespace condense
