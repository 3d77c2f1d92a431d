#include "launch/context_commands.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "compressors/context_arc.h"
#include "compressors/context_compressor.h"
#include "compressors/context_documents.h"
#include "compressors/context_xrag.h"
#include "compressors/context_sequence.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/shape.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "io/atomic_file.h"
#include "io/hdf5_file.h"
#include "formats/compressed_context.h"
#include "formats/context_export.h"
#include "compressors/context_task.h"
#include "formats/inference_model.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"

namespace condense {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Measures {
  double nll = 0;
  double correct = 0;
  int64_t scored = 0;
};

// xRAG reads embeddings, not windows: it is measured on its documents' task and paraphrase.
int xrag_eval(const ContextArgs& a, const Checkpoint& ckpt, const RunConfig& cfg, LlamaForCausalLM& decoder,
              LoadedCompressor& trained) {
  const std::string file = a.documents.empty() ? cfg.context.documents : a.documents;
  CONDENSE_CHECK(!file.empty(), "context-eval of an xRAG run needs --documents FILE.h5");
  DocumentSet set = DocumentSet::read(file);
  Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), ckpt.file().path() + ":tokenizer");
  const int64_t count = a.documents_count > 0 ? a.documents_count : cfg.context.held_out;
  // The projector as initialized with the run's seed, output scale calibrated on the same
  // first training documents.
  torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));
  std::shared_ptr<ContextCompressor> untrained = make_context_compressor(decoder, cfg.context);
  XragData data;
  data.train = std::make_shared<TokenizedDocuments>(tokenize_documents(
      set, tok, 0, std::min<int64_t>(64, set.size()), cfg.context.chunk_len, cfg.context.answer_len));
  auto& x = dynamic_cast<XragCompressor&>(*untrained);
  x.attach(data);
  x.calibrate(decoder, at::Tensor());
  nlohmann::json out = {{"checkpoint", ckpt.file().path()}, {"step", ckpt.state().step},
                        {"method", "xrag"}, {"stage", cfg.context.stage}, {"compressed_positions", 1}};
  out["task"] = document_task(decoder, *trained.compressor, *untrained, cfg.context, set, tok, count,
                              cfg.context.chunk_len);
  std::cout << out.dump() << "\n";
  return 0;
}

int context_eval(const ContextArgs& a) {
  const std::string path = resolve_checkpoint_path(a.checkpoint);
  Checkpoint ckpt = Checkpoint::open(path);
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  require_compressor(ckpt, cfg);
  if (cfg.context.method == "xrag") {
    LlamaForCausalLM decoder = load_inference_model(ckpt);
    decoder->eval();
    LoadedCompressor trained = open_compressor(ckpt, decoder);
    return xrag_eval(a, ckpt, cfg, decoder, trained);
  }
  CONDENSE_CHECK(a.chunk_len >= 0 && a.seq_len >= 0 && a.prefix_len >= -1,
                 "--chunk-len and --seq-len must be >= 0 (0: the recipe's) and --prefix-len >= -1 "
                 "(-1: the recipe's)");
  ContextLayout layout{a.prefix_len >= 0 ? a.prefix_len : cfg.context.prefix_len,
                       a.chunk_len > 0 ? a.chunk_len : cfg.context.chunk_len};
  const int64_t window = a.seq_len > 0 ? a.seq_len : cfg.data.seq_len;
  layout.check(window, "context-eval");
  LlamaForCausalLM decoder = load_inference_model(ckpt);
  decoder->eval();
  LoadedCompressor trained = open_compressor(ckpt, decoder);
  const int64_t f = cfg.context.pooling_factor;
  CONDENSE_CHECK(f <= layout.chunk, "--chunk-len {} is shorter than the pooling factor {}",
                 layout.chunk, f);
  CONDENSE_CHECK(window <= decoder->config().max_position_embeddings, "--seq-len {} exceeds the "
                 "decoder's max_position_embeddings {}", window, decoder->config().max_position_embeddings);
  TokenStore store = open_checkpoint_store(ckpt, path, a.data);
  const std::string& dataset = store.path();
  const at::Tensor held_out = store.held_out_ids();
  auto val = validation_batches(held_out, window, cfg.data.batch_size, a.batches, 0, 1);
  CONDENSE_CHECK(!val.empty(), "{}: validation split has no full window of {} tokens", dataset, window);
  warn_past_half("context-eval", 0, static_cast<int64_t>(val.size()) * val[0].inputs.numel() + 1,
                 held_out.numel(), /*first_half=*/true);

  // The compressor as training found it at step 0: the same seed, the same calibration chunk.
  torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));
  std::shared_ptr<ContextCompressor> untrained = make_context_compressor(decoder, cfg.context);
  untrained->train(false);
  untrained->calibrate(decoder, store.ids("train")
                                    .narrow(0, cfg.context.prefix_len, cfg.context.chunk_len)
                                    .to(at::kLong)
                                    .unsqueeze(0));
  at::NoGradGuard no_grad;

  std::map<std::string, Measures> m;
  Measures reconstruction, reconstruction_untrained, reconstruction_full;
  double full_seconds = 0, compressed_seconds = 0;
  const int64_t k = trained.compressor->positions(layout.chunk);
  for (const Batch& b : val) {
    const at::Tensor& x = b.inputs;
    const int64_t p = layout.prefix, n = layout.chunk;
    at::Tensor chunk_ids = x.narrow(1, p, n), chunk = decoder->embed(chunk_ids);
    auto add = [&](const std::string& name, const at::Tensor& context) {
      SequenceParts s = continuation_with(decoder, x, b.targets, layout, context);
      m[name].nll += tail_nll(decoder, s.parts, s.targets).item<double>();
    };
    auto add_reconstruction = [&](Measures& into, ContextCompressor& c) {
      auto [correct, scored] = c.reconstruction(decoder, x, layout);
      into.correct += correct;
      into.scored += scored;
    };
    add("none", at::Tensor());
    add("truncated", chunk.narrow(1, n - std::min(k, n), std::min(k, n)));
    add("mean_pool", group_mean(chunk, f));
    {
      auto t0 = Clock::now();
      add("full", chunk);
      full_seconds += seconds_since(t0);
    }
    {
      auto t0 = Clock::now();
      add("compressed", trained.compressor->context(decoder, chunk_ids));
      compressed_seconds += seconds_since(t0);
    }
    add("untrained", untrained->context(decoder, chunk_ids));
    // The control that separates content from a learned prompt: every window reads the
    // compressed context of another window of the batch. What compressed gains over it is what
    // the compressed *content* carries.
    // The same control for the full context: another window's plain chunk tells the decoder the
    // domain without this window's content.
    if (x.size(0) > 1) {
      add("compressed_other_window", trained.compressor->context(decoder, chunk_ids.roll(1, 0)));
      add("full_other_window", chunk.roll(1, 0));
    }
    add_reconstruction(reconstruction, *trained.compressor);
    add_reconstruction(reconstruction_untrained, *untrained);
    // The ceiling without compression: the span itself, then the span again (the decoder
    // copying what it just read; no marker).
    auto [c, s] = tail_correct(decoder, {chunk, decoder->embed(x.narrow(1, p, n - 1))}, x.narrow(1, p, n));
    reconstruction_full.correct += c;
    reconstruction_full.scored += s;
  }
  const double batches = static_cast<double>(val.size());
  // null for a method that does not train reconstruction.
  auto share = [](const Measures& r) {
    return r.scored > 0 ? nlohmann::json(r.correct / r.scored) : nlohmann::json(nullptr);
  };
  nlohmann::json nll, gap;
  for (auto& [name, v] : m) nll[name] = v.nll / batches;
  const double none = nll["none"].get<double>(), full = nll["full"].get<double>();
  for (auto& [name, v] : m)
    if (name != "none" && name != "full") gap[name] = (none - nll[name].get<double>()) / (none - full);
  // What the content alone is worth: each context against another window's of the same kind.
  nlohmann::json content_gap = nullptr;
  if (m.count("full_other_window"))
    content_gap = (nll["compressed_other_window"].get<double>() - nll["compressed"].get<double>()) /
                  (nll["full_other_window"].get<double>() - full);
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
      {"content_gap_closed", content_gap},
      {"reconstruction_accuracy", share(reconstruction)},
      {"reconstruction_accuracy_untrained", share(reconstruction_untrained)},
      {"reconstruction_accuracy_uncompressed", share(reconstruction_full)},
      {"prefill_tokens_per_s", {{"full", tokens / full_seconds}, {"compressed", tokens / compressed_seconds}}},
      {"kv_bytes_per_window",
       {{"full", per_position * window}, {"compressed", per_position * (layout.prefix + k + rest)}}},
  };
  if (!a.documents.empty()) {
    Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), path + ":tokenizer");
    DocumentSet set = DocumentSet::read(a.documents);
    out["task"] = document_task(decoder, *trained.compressor, *untrained, cfg.context, set, tok,
                                a.documents_count > 0 ? a.documents_count : cfg.context.held_out,
                                layout.chunk);
  }
  std::cout << out.dump() << "\n";
  return 0;
}

int compress(const ContextArgs& a) {
  check_new_output(a.out);
  const std::string path = resolve_checkpoint_path(a.checkpoint);
  Checkpoint ckpt = Checkpoint::open(path);
  LlamaForCausalLM decoder = load_inference_model(ckpt);
  decoder->eval();
  // The run's own compressor, or one exported from a run (checked against this decoder).
  LoadedCompressor c = a.compressor.empty() ? open_compressor(ckpt, decoder)
                                            : load_exported_compressor(a.compressor, decoder, path);
  const RunConfig& cfg = c.cfg;
  Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), path + ":tokenizer");
  auto* x = dynamic_cast<XragCompressor*>(c.compressor.get());
  CONDENSE_CHECK(a.text.empty() != a.embeddings.empty(), "compress needs exactly one of --text FILE (ARC, "
                 "CompLLM) and --embeddings FILE.h5 (xRAG)");
  CONDENSE_CHECK(!x || !a.embeddings.empty(), "{} is an xRAG compressor: it reads a retriever's "
                 "embedding; give --embeddings FILE.h5 (tools/embed_documents.py) and --document I", path);
  CONDENSE_CHECK(x || a.embeddings.empty(), "--embeddings is for xRAG compressors; {} is {}: give --text FILE",
                 path, cfg.context.method);
  int64_t tokens = 0;
  auto t0 = Clock::now();
  at::Tensor embeds;
  if (x) {
    DocumentSet set = DocumentSet::read(a.embeddings);
    CONDENSE_CHECK(a.document >= 0 && a.document < set.size(), "--document {} is outside {}'s {} documents",
                   a.document, a.embeddings, set.size());
    at::NoGradGuard no_grad;
    embeds = x->project(set.embeddings.narrow(0, a.document, 1)).squeeze(0);
    tokens = static_cast<int64_t>(tok.encode(set.texts[a.document]).size());
  } else {
    embeds = compress_text(c, decoder, tok, a.text, &tokens);
  }
  const double secs = seconds_since(t0);
  write_file_atomically(a.out, [&](const std::string& tmp) {
    H5File f = H5File::create(tmp);
    f.write_tensor("context/embeds", embeds.to(at::kCPU, at::kFloat));
    f.set_attr("context", "method", cfg.context.method);
    f.set_attr("context", "pooling_factor", cfg.context.pooling_factor);
    f.set_attr("context", "tokens", tokens);
    f.set_attr("context", "decoder_sha256", decoder_fingerprint(decoder));
    f.set_attr("context", "checkpoint", path);
  });
  nlohmann::json out = {{"out", a.out}, {"method", cfg.context.method}, {"tokens", tokens},
                        {"positions", embeds.size(0)}, {"hidden", embeds.size(1)}, {"seconds", secs}};
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
  a.eval->add_option("--documents", a.documents, "documents with answers and embeddings "
                     "(tools/embed_documents.py): also score the task with an answer");
  a.eval->add_option("--documents-count", a.documents_count, "the file's last N documents "
                     "(0: the recipe's context.held_out)")->default_val(0);
  a.compress = app.add_subcommand("compress", "compress a text with a trained context compressor "
                                  "into vectors for generate / score --context-vectors");
  a.compress->add_option("checkpoint", a.checkpoint, "checkpoint file or run directory")->required();
  a.compress->add_option("--text", a.text, "UTF-8 text file: the context (ARC, CompLLM)");
  a.compress->add_option("--compressor", a.compressor, "a compressor exported with `condense export "
                         "RUN OUT` (OUT/context_compressor.*): the checkpoint is then its decoder");
  a.compress->add_option("--embeddings", a.embeddings, "documents file (tools/embed_documents.py): "
                         "the embedding an xRAG compressor projects");
  a.compress->add_option("--document", a.document, "which document of --embeddings")->default_val(0);
  a.compress->add_option("--out", a.out, "output .h5")->required();
  a.compress->add_option("--threads", a.threads, "intra-op threads (0: all cores)")->default_val(0);
}

int run_context_command(ContextArgs& a) {
  const bool eval = a.eval && a.eval->parsed(), comp = a.compress && a.compress->parsed();
  if (!eval && !comp) return -1;
  set_intra_op_threads(a.threads, "--threads");
  return eval ? context_eval(a) : compress(a);
}

}  // namespace condense
