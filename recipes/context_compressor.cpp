#include "recipes/context_compressor.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include "compressors/context_arc.h"
#include "compressors/context_sequence.h"
#include "compressors/lora.h"
#include "core/error.h"
#include "recipes/run_setup.h"
#include "trainer/checkpoint.h"

namespace condense {

int run_context_compressor(const RunConfig& cfg_in, const RunOptions& options) {
  CONDENSE_CHECK(!cfg_in.init.empty(), "kind context_compressor needs init: the checkpoint of the "
                 "frozen decoder (e.g. runs/teacher)");
  const ContextConfig& cc = cfg_in.context;
  CONDENSE_CHECK(cc.method == "arc", "context.method {} is not built; valid: arc", cc.method);
  const ContextLayout layout{cc.prefix_len, cc.chunk_len};
  layout.check(cfg_in.data.seq_len, "kind context_compressor");
  CONDENSE_CHECK(cc.pooling_factor <= cc.chunk_len, "context.pooling_factor {} is larger than the "
                 "chunk (context.chunk_len {}); valid is 1..{}", cc.pooling_factor, cc.chunk_len,
                 cc.chunk_len);
  // Everything the recipe can get wrong is checked before start_run writes the run directory.
  Checkpoint init = Checkpoint::open(resolve_checkpoint_path(cfg_in.init));
  torch::manual_seed(static_cast<uint64_t>(cfg_in.train.seed));
  LlamaForCausalLM decoder(init.config());
  init.load_model(decoder);
  merge_stored_adapters(decoder, init.file());
  for (auto& p : decoder->parameters()) p.requires_grad_(false);
  ArcEncoder encoder(decoder, ArcOptions{cc.encoder_layers, cc.pooling_factor, cc.bottleneck});

  RunSetup run = start_run(cfg_in, options, [&](RunSetup& r) { r.cfg.model = init.config(); });
  const RunConfig& cfg = run.cfg;
  if (!run.device.is_cpu()) {
    decoder->to(run.device);
    encoder->to(run.device);
  }
  {
    // The projector's scale from the first training chunk (a resumed run restores the trained
    // projector over it).
    at::Tensor ids = run.store->ids("train").narrow(0, layout.prefix, layout.chunk);
    at::NoGradGuard no_grad;
    encoder->calibrate_scale(decoder->embed(ids.to(at::kLong).unsqueeze(0).to(run.device)));
  }
  Trainable t;
  t.model = decoder;
  t.modules = encoder->named();
  int64_t n = 0;
  for (const auto& p : t.modules) n += p.second.numel();
  const int64_t k = encoder->compressed_length(layout.chunk);
  spdlog::info("context compressor arc: {} encoder layers from the decoder, pooling {} ({} tokens -> "
               "{} vectors), bottleneck {}; {:.3f}M trained parameters, decoder {} frozen ({:.2f}M)",
               cc.encoder_layers, cc.pooling_factor, layout.chunk, k, encoder->options().bottleneck,
               n / 1e6, cfg.init, cfg.model.num_parameters() / 1e6);
  const double share = cc.reconstruction_share;
  t.loss = [encoder, layout, share](LlamaForCausalLM& m, const Batch& b) mutable {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    const bool reconstruct = at::rand({1}, gen).item<double>() < share;
    at::Tensor z = encoder->forward(m->embed(b.inputs.narrow(1, layout.prefix, layout.chunk)));
    SequenceParts s = reconstruct ? reconstruction_sequence(m, b.inputs, layout, z, encoder->rec)
                                  : continuation_sequence(m, b.inputs, b.targets, layout, z, encoder->cont);
    return tail_nll(m, s.parts, s.targets);
  };
  t.eval_loss = [encoder, layout](LlamaForCausalLM& m, const Batch& b) mutable {
    at::Tensor z = encoder->forward(m->embed(b.inputs.narrow(1, layout.prefix, layout.chunk)));
    SequenceParts s = continuation_sequence(m, b.inputs, b.targets, layout, z, encoder->cont);
    return tail_nll(m, s.parts, s.targets);
  };
  train_run(run, std::move(t));
  return 0;
}

}  // namespace condense
