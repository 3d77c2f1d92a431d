#include "launch/context_commands.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "compressors/context_arc.h"
#include "compressors/context_sequence.h"
#include "core/error.h"
#include "core/hash.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "launch/inference_model.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"

namespace condense {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void require_compressor(const Checkpoint& ckpt, const RunConfig& cfg) {
  CONDENSE_CHECK(cfg.kind == "context_compressor" && ArcEncoderImpl::present(ckpt.file()),
                 "{} is a checkpoint of kind {} without a context compressor; train one with "
                 "recipes/context_arc.yaml (kind context_compressor)", ckpt.file().path(), cfg.kind);
}

// The ARC encoder a context_compressor checkpoint trained, against its own frozen decoder.
ArcEncoder load_arc(const Checkpoint& ckpt, const RunConfig& cfg, LlamaForCausalLM& decoder) {
  require_compressor(ckpt, cfg);
  const ContextConfig& cc = cfg.context;
  ArcEncoder encoder(decoder, ArcOptions{ArcEncoderImpl::stored_layers(ckpt.file()), cc.pooling_factor,
                                         ArcEncoderImpl::stored_bottleneck(ckpt.file())});
  encoder->load(ckpt.file());
  encoder->eval();
  return encoder;
}

struct Measures {
  double nll = 0;
  double correct = 0;
  int64_t scored = 0;
};

int context_eval(const ContextArgs& a) {
  const std::string path = resolve_checkpoint_path(a.checkpoint);
  Checkpoint ckpt = Checkpoint::open(path);
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  require_compressor(ckpt, cfg);
  CONDENSE_CHECK(a.chunk_len >= 0 && a.seq_len >= 0 && a.prefix_len >= -1,
                 "--chunk-len and --seq-len must be >= 0 (0: the recipe's) and --prefix-len >= -1 "
                 "(-1: the recipe's)");
  ContextLayout layout{a.prefix_len >= 0 ? a.prefix_len : cfg.context.prefix_len,
                       a.chunk_len > 0 ? a.chunk_len : cfg.context.chunk_len};
  const int64_t window = a.seq_len > 0 ? a.seq_len : cfg.data.seq_len;
  layout.check(window, "context-eval");
  LlamaForCausalLM decoder = load_inference_model(ckpt);
  decoder->eval();
  ArcEncoder encoder = load_arc(ckpt, cfg, decoder);
  const int64_t f = encoder->options().pooling_factor;
  CONDENSE_CHECK(f <= layout.chunk, "--chunk-len {} is shorter than the pooling factor {}",
                 layout.chunk, f);
  CONDENSE_CHECK(window <= decoder->config().max_position_embeddings, "--seq-len {} exceeds the "
                 "decoder's max_position_embeddings {}", window, decoder->config().max_position_embeddings);
  std::string dataset = a.data.empty() ? resolve_dataset(cfg.data, cfg.train.seed) : a.data;
  TokenStore store = TokenStore::open(dataset);
  store.check_tokenizer(sha256_hex(ckpt.tokenizer_bytes()), path);
  auto val = validation_batches(store.ids("val"), window, cfg.data.batch_size, a.batches, 0, 1);
  CONDENSE_CHECK(!val.empty(), "{}: validation split has no full window of {} tokens", dataset, window);

  // The encoder as training found it at step 0: the same seed, the same calibration chunk.
  torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));
  ArcEncoder untrained(decoder, encoder->options());
  untrained->eval();
  at::NoGradGuard no_grad;
  {
    at::Tensor ids = store.ids("train").narrow(0, cfg.context.prefix_len, cfg.context.chunk_len);
    untrained->calibrate_scale(decoder->embed(ids.to(at::kLong).unsqueeze(0)));
  }

  std::map<std::string, Measures> m;
  Measures reconstruction, reconstruction_untrained;
  double full_seconds = 0, compressed_seconds = 0;
  const int64_t k = encoder->compressed_length(layout.chunk);
  for (const Batch& b : val) {
    const at::Tensor& x = b.inputs;
    const int64_t p = layout.prefix, n = layout.chunk;
    at::Tensor chunk = decoder->embed(x.narrow(1, p, n));
    auto add = [&](const std::string& name, const at::Tensor& context) {
      SequenceParts s = continuation_with(decoder, x, b.targets, layout, context);
      m[name].nll += tail_nll(decoder, s.parts, s.targets).item<double>();
    };
    add("none", at::Tensor());
    add("truncated", chunk.narrow(1, n - k, k));
    add("mean_pool", group_mean(chunk, f));
    {
      auto t0 = Clock::now();
      add("full", chunk);
      full_seconds += seconds_since(t0);
    }
    {
      auto t0 = Clock::now();
      at::Tensor z = encoder->forward(chunk);
      add("compressed", at::cat({z, encoder->cont.view({1, 1, -1}).expand({x.size(0), 1, z.size(2)})}, 1));
      compressed_seconds += seconds_since(t0);
      SequenceParts r = reconstruction_sequence(decoder, x, layout, z, encoder->rec);
      auto [c, s] = tail_correct(decoder, r.parts, r.targets);
      reconstruction.correct += c;
      reconstruction.scored += s;
    }
    at::Tensor zu = untrained->forward(chunk);
    add("untrained", at::cat({zu, untrained->cont.view({1, 1, -1}).expand({x.size(0), 1, zu.size(2)})}, 1));
    SequenceParts r = reconstruction_sequence(decoder, x, layout, zu, untrained->rec);
    auto [c, s] = tail_correct(decoder, r.parts, r.targets);
    reconstruction_untrained.correct += c;
    reconstruction_untrained.scored += s;
  }
  const double batches = static_cast<double>(val.size());
  nlohmann::json nll, gap;
  for (auto& [name, v] : m) nll[name] = v.nll / batches;
  const double none = nll["none"].get<double>(), full = nll["full"].get<double>();
  for (const char* name : {"compressed", "truncated", "mean_pool", "untrained"})
    gap[name] = (none - nll[name].get<double>()) / (none - full);
  const LlamaConfig& c = decoder->config();
  const double per_position = 2.0 * c.num_hidden_layers * c.kv_heads() * c.head_size() *
                              decoder->lm_head_weight().element_size();
  const int64_t rest = window - layout.prefix - layout.chunk;
  const double tokens = batches * cfg.data.batch_size * window;
  nlohmann::json out = {
      {"checkpoint", path},
      {"step", ckpt.state().step},
      {"method", cfg.context.method},
      {"pooling_factor", f},
      {"prefix_len", layout.prefix},
      {"chunk_len", layout.chunk},
      {"continuation_len", rest},
      {"compressed_positions", k},
      {"windows", static_cast<int64_t>(batches) * cfg.data.batch_size},
      {"nll", nll},
      {"gap_closed", gap},
      {"reconstruction_accuracy", reconstruction.correct / reconstruction.scored},
      {"reconstruction_accuracy_untrained",
       reconstruction_untrained.correct / reconstruction_untrained.scored},
      {"prefill_tokens_per_s", {{"full", tokens / full_seconds}, {"compressed", tokens / compressed_seconds}}},
      {"kv_bytes_per_window",
       {{"full", per_position * window}, {"compressed", per_position * (layout.prefix + k + 1 + rest)}}},
  };
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

void add_context_commands(CLI::App& app, ContextArgs& a) {
  a.eval = app.add_subcommand("context-eval", "held-out measures of a trained context compressor "
                              "against its frozen decoder and the baselines (JSON)");
  a.eval->add_option("checkpoint", a.checkpoint, "checkpoint file or run directory")->required();
  a.eval->add_option("--data", a.data, "token store (default: the checkpoint recipe's)");
  a.eval->add_option("--batches", a.batches, "validation batches (<= 0: all)")->default_val(16);
  a.eval->add_option("--chunk-len", a.chunk_len, "tokens compressed per window (0: the recipe's)")
      ->default_val(0);
  a.eval->add_option("--prefix-len", a.prefix_len, "plain tokens before the chunk (-1: the recipe's)")
      ->default_val(-1);
  a.eval->add_option("--seq-len", a.seq_len, "window length (0: the recipe's)")->default_val(0);
  a.eval->add_option("--threads", a.threads, "intra-op threads (0: all cores)")->default_val(0);
}

int run_context_command(ContextArgs& a) {
  if (!a.eval || !a.eval->parsed()) return -1;
  CONDENSE_CHECK(a.threads >= 0, "--threads must be >= 0 (0: all cores), got {}", a.threads);
  at::set_num_threads(a.threads > 0 ? static_cast<int>(a.threads)
                                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return context_eval(a);
}

}  // namespace condense
