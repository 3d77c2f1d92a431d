#include "recipes/context_compressor.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "compressors/context_compressor.h"
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
  const ContextLayout layout{cc.prefix_len, cc.chunk_len};
  layout.check(cfg_in.data.seq_len, "kind context_compressor");
  // Everything the recipe can get wrong is checked before start_run writes the run directory.
  Checkpoint init = Checkpoint::open(resolve_checkpoint_path(cfg_in.init));
  torch::manual_seed(static_cast<uint64_t>(cfg_in.train.seed));
  LlamaForCausalLM decoder(init.config());
  init.load_model(decoder);
  merge_stored_adapters(decoder, init.file());
  for (auto& p : decoder->parameters()) p.requires_grad_(false);
  std::shared_ptr<ContextCompressor> compressor = make_context_compressor(decoder, cc);

  RunSetup run = start_run(cfg_in, options, [&](RunSetup& r) { r.cfg.model = init.config(); });
  const RunConfig& cfg = run.cfg;
  if (!run.device.is_cpu()) {
    decoder->to(run.device);
    compressor->to(run.device);
  }
  // Output scales from the first training chunk (a resumed run restores the trained tensors
  // over them).
  at::Tensor first = run.store->ids("train").narrow(0, layout.prefix, layout.chunk);
  compressor->calibrate(decoder, first.to(at::kLong).unsqueeze(0).to(run.device));
  Trainable t;
  t.model = decoder;
  t.modules = compressor->named();
  int64_t n = 0;
  for (const auto& p : t.modules) n += p.second.numel();
  spdlog::info("context compressor {}; {} tokens -> {} positions; {:.3f}M trained parameters, decoder "
               "{} frozen ({:.2f}M)", compressor->describe(), layout.chunk,
               compressor->positions(layout.chunk), n / 1e6, cfg.init, cfg.model.num_parameters() / 1e6);
  t.loss = [compressor, layout](LlamaForCausalLM& m, const Batch& b) {
    return compressor->loss(m, b, layout);
  };
  // Validation: the continuation loss with compressed context, the same for every method.
  t.eval_loss = [compressor, layout](LlamaForCausalLM& m, const Batch& b) {
    at::Tensor context = compressor->context(m, b.inputs.narrow(1, layout.prefix, layout.chunk));
    SequenceParts s = continuation_with(m, b.inputs, b.targets, layout, context);
    return tail_nll(m, s.parts, s.targets);
  };
  train_run(run, std::move(t));
  return 0;
}

}  // namespace condense
