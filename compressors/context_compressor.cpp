#include "compressors/context_compressor.h"

#include "compressors/context_arc.h"
#include "compressors/context_compllm.h"
#include "compressors/context_xrag.h"
#include "core/error.h"
#include "core/shape.h"

namespace condense {
namespace {

CompLlmOptions compllm_options(const ContextConfig& c) {
  return CompLlmOptions{c.segment_len, c.pooling_factor, c.lora_rank, c.lora_alpha, c.kd_ratio};
}

}  // namespace

const at::Tensor& StoredTensors::at(const std::string& name) const {
  auto it = tensors.find(name);
  CONDENSE_CHECK(it != tensors.end(), "{}: missing tensor '{}'", source, name);
  return it->second;
}

StoredTensors compressor_tensors(const H5File& file) {
  StoredTensors s{file.path(), {}};
  for (const std::string& name : file.datasets())
    for (const char* prefix : {"encoder.", "projector.", "compllm.", "xrag."})
      if (name.rfind(prefix, 0) == 0) s.tensors[name] = file.read_tensor(name);
  return s;
}

void load_named_tensors(const StoredTensors& stored, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::string& what, const std::string& hint) {
  at::NoGradGuard no_grad;
  for (const auto& [name, dst] : tensors) {
    CONDENSE_CHECK(stored.has(name), "{}: missing {} tensor '{}'", stored.source, what, name);
    const at::Tensor& src = stored.at(name);
    CONDENSE_CHECK(src.sizes() == dst.sizes(), "{}: {} tensor '{}' has shape {}, expected {}{}",
                   stored.source, what, name, shape_str(src.sizes()), shape_str(dst.sizes()), hint);
    at::Tensor(dst).copy_(src);
  }
}

std::shared_ptr<ContextCompressor> make_context_compressor(LlamaForCausalLM& decoder,
                                                           const ContextConfig& c) {
  if (c.method == "arc")
    return std::make_shared<ArcCompressor>(decoder, ArcOptions{c.encoder_layers, c.pooling_factor, c.bottleneck},
                                           c.chunk_len, c.reconstruction_share);
  if (c.method == "compllm") return std::make_shared<CompLlmCompressor>(decoder, compllm_options(c));
  if (c.method == "xrag") {
    CONDENSE_CHECK(c.embedding_dim > 0, "context.embedding_dim is unresolved (0): the recipe resolves it "
                   "from context.documents");
    return std::make_shared<XragCompressor>(decoder, XragOptions{c.embedding_dim, c.stage, c.kl_weight});
  }
  fail("context.method {} is not built; valid: arc, compllm, xrag", c.method);
}

std::shared_ptr<ContextCompressor> load_context_compressor(LlamaForCausalLM& decoder,
                                                           const ContextConfig& c, const StoredTensors& file) {
  std::shared_ptr<ContextCompressor> out;
  if (c.method == "arc") {
    // The widths as stored (a recipe default of 0 resolves to the decoder's hidden size).
    ArcOptions o{ArcEncoderImpl::stored_layers(file), c.pooling_factor, ArcEncoderImpl::stored_bottleneck(file)};
    CONDENSE_CHECK(o.encoder_layers > 0, "{}: no ARC encoder tensors (encoder.layers.0.*)", file.source);
    out = std::make_shared<ArcCompressor>(decoder, o, c.chunk_len, c.reconstruction_share);
  } else if (c.method == "xrag") {
    ContextConfig stored = c;
    stored.embedding_dim = XragCompressor::stored_embedding_dim(file);
    CONDENSE_CHECK(stored.embedding_dim > 0, "{}: no xRAG projector (xrag.projector.0.weight)", file.source);
    out = make_context_compressor(decoder, stored);
  } else {
    out = make_context_compressor(decoder, c);
  }
  out->load(file);
  out->train(false);
  return out;
}

}  // namespace condense
