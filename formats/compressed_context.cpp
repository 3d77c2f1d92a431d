#include "formats/compressed_context.h"

#include <ATen/ATen.h>

#include "compressors/context_compressor.h"
#include "core/error.h"
#include "core/shape.h"
#include "io/atomic_file.h"
#include "io/hdf5_file.h"
#include "recipes/recipe_parser.h"

namespace condense {

void require_compressor(const Checkpoint& ckpt, const RunConfig& cfg) {
  CONDENSE_CHECK(cfg.kind == "context_compressor",
                 "{} is a checkpoint of kind {} without a context compressor; train one with "
                 "recipes/context_arc.yaml (kind context_compressor)", ckpt.file().path(), cfg.kind);
}

LoadedCompressor open_compressor(const Checkpoint& ckpt, LlamaForCausalLM& decoder) {
  LoadedCompressor c;
  c.cfg = parse_recipe(ckpt.recipe_yaml(), ckpt.file().path() + ":recipe");
  require_compressor(ckpt, c.cfg);
  c.compressor = load_context_compressor(decoder, c.cfg.context, compressor_tensors(ckpt.file()));
  return c;
}

at::Tensor compress_text(LoadedCompressor& c, LlamaForCausalLM& decoder, const Tokenizer& tok,
                         const std::string& text_file, int64_t* tokens) {
  std::vector<int32_t> ids = tok.encode(read_text_file(text_file));
  CONDENSE_CHECK(!ids.empty(), "{}: empty context, nothing to compress", text_file);
  *tokens = static_cast<int64_t>(ids.size());
  at::NoGradGuard no_grad;
  at::Tensor t = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong)
                     .to(decoder->lm_head_weight().device());
  return c.compressor->context(decoder, t.unsqueeze(0)).squeeze(0);
}

CompressedContext context_for(const std::string& checkpoint_path, LlamaForCausalLM& decoder,
                              const Tokenizer& tok, const std::string& text_file,
                              const std::string& vectors_file) {
  CONDENSE_CHECK(text_file.empty() || vectors_file.empty(), "give --context or --context-vectors, "
                 "not both");
  CompressedContext out;
  if (!text_file.empty()) {
    Checkpoint ckpt = Checkpoint::open(checkpoint_path);
    LoadedCompressor c = open_compressor(ckpt, decoder);
    out.embeds = compress_text(c, decoder, tok, text_file, &out.tokens);
    return out;
  }
  if (vectors_file.empty()) return out;
  H5File f = H5File::open_read(vectors_file);
  CONDENSE_CHECK(f.has("context/embeds"), "{}: not a compressed context (no context/embeds); write "
                 "one with `condense compress CKPT --text FILE --out {}`", vectors_file, vectors_file);
  const std::string want = decoder_fingerprint(decoder), have = f.attr_string("context", "decoder_sha256");
  CONDENSE_CHECK(have == want, "{} was compressed for the decoder {} ({}), not this one ({}: embedding "
                 "{}); compress the context with a compressor trained on this decoder", vectors_file,
                 have.substr(0, 16), f.attr_string("context", "checkpoint"), checkpoint_path,
                 want.substr(0, 16));
  at::Tensor e = f.read_tensor("context/embeds");
  const int64_t hidden = decoder->config().hidden_size;
  CONDENSE_CHECK(e.dim() == 2 && e.size(0) >= 1 && e.size(1) == hidden,
                 "{}: context/embeds {} must be [k, {}] (the decoder's hidden size)", vectors_file,
                 shape_str(e.sizes()), hidden);
  const at::Tensor w = decoder->lm_head_weight();
  out.embeds = e.to(w.device(), w.scalar_type());
  out.tokens = f.attr_int("context", "tokens");
  return out;
}

}  // namespace condense
