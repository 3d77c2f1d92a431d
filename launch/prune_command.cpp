#include "launch/prune_command.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <filesystem>
#include <thread>

#include "compressors/calibration.h"
#include "compressors/cskv.h"
#include "compressors/kv_compress_step.h"
#include "compressors/kv_merge.h"
#include "compressors/prune_masked.h"
#include "compressors/prune_minitron.h"
#include "core/error.h"
#include "core/hash.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "formats/inference_model.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "io/atomic_file.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

// "N:M" -> (N, M); both positive integers.
std::pair<int64_t, int64_t> parse_pattern(const std::string& text) {
  size_t colon = text.find(':');
  try {
    CONDENSE_CHECK(colon != std::string::npos, "");
    size_t a = 0, b = 0;
    int64_t n = std::stoll(text.substr(0, colon), &a);
    int64_t m = std::stoll(text.substr(colon + 1), &b);
    CONDENSE_CHECK(a == colon && b == text.size() - colon - 1 && n > 0 && m > 0, "");
    return {n, m};
  } catch (const std::exception&) {
    fail("--pattern '{}': expected N:M with positive integers, e.g. 2:4 (keep 2 of every 4)", text);
  }
}

MinitronTarget parse_targets(const std::vector<std::string>& items) {
  MinitronTarget t;
  for (const std::string& item : items) {
    size_t eq = item.find('=');
    CONDENSE_CHECK(eq != std::string::npos, "--target '{}': expected key=value", item);
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    auto integer = [&](int64_t& field) {
      try {
        size_t used = 0;
        field = std::stoll(value, &used);
        CONDENSE_CHECK(used == value.size(), "");
      } catch (const std::exception&) {
        fail("--target {}: expected an integer, got '{}'", key, value);
      }
    };
    if (key == "hidden_size") integer(t.hidden_size);
    else if (key == "intermediate_size") integer(t.intermediate_size);
    else if (key == "num_attention_heads") integer(t.num_attention_heads);
    else if (key == "num_hidden_layers") integer(t.num_hidden_layers);
    else if (key == "num_parameters") {
      try {
        t.num_parameters = std::stod(value);
      } catch (const std::exception&) {
        fail("--target num_parameters: expected a number, got '{}'", value);
      }
    } else if (key == "drop_layers") {
      size_t pos = 0;
      while (pos <= value.size()) {
        size_t comma = value.find(',', pos);
        std::string one = value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        int64_t layer = 0;
        std::swap(value, one);
        integer(layer);
        std::swap(value, one);
        t.drop_layers.push_back(layer);
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else {
      fail("--target: unknown key '{}'; valid: hidden_size, intermediate_size, "
           "num_attention_heads, num_hidden_layers, drop_layers, num_parameters", key);
    }
  }
  return t;
}

std::vector<at::Tensor> load_calibration(const Checkpoint& ckpt, const std::string& path,
                                         const PruneArgs& a) {
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  TokenStore store = open_checkpoint_store(ckpt, path, a.data);
  CONDENSE_CHECK(a.calib_windows > 0, "--calib-windows must be positive, got {}", a.calib_windows);
  const int64_t seq = a.calib_seq_len > 0 ? a.calib_seq_len : cfg.data.seq_len;
  CONDENSE_CHECK(a.calib_seq_len >= 0 && seq <= ckpt.config().max_position_embeddings,
                 "--calib-seq-len {}: valid is 0 (the recipe's {}) or 1..{} (max_position_embeddings)",
                 a.calib_seq_len, cfg.data.seq_len, ckpt.config().max_position_embeddings);
  spdlog::info("calibration: the last {} windows of {} tokens of {}'s validation split",
               a.calib_windows, seq, store.path());
  return calibration_windows(store.held_out_ids(), seq, a.calib_windows, a.calib_batch);
}

}  // namespace

void add_prune_command(CLI::App& app, PruneArgs& a) {
  a.cmd = app.add_subcommand(
      "prune", "one-shot pruning of a checkpoint: magnitude or wanda masks (unstructured or N:M), "
               "minitron structured width/depth pruning to a smaller plain Llama, KV-head "
               "merging to fewer KV heads, or a KV cache of fewer dimensions: per-head "
               "projections (kv-project, MatryoshkaKV's start) or low-rank latents (cskv)");
  a.cmd->add_option("checkpoint", a.checkpoint, "checkpoint file or run directory")->required();
  a.cmd->add_option("--method", a.method,
                    "magnitude: |W|, one threshold per matrix; wanda: |W| * ||X_j||, per output "
                    "row, layer-sequential calibration; minitron: remove MLP neurons, query "
                    "heads, embedding channels and layers by activation importance; kv-heads: "
                    "merge consecutive KV heads into --kv-heads heads (MHA -> GQA); kv-project: "
                    "PCA bases of every KV head's keys (after RoPE) and values, stored with the "
                    "model; eval/score/generate --kv-rank R then cache R of head_dim coordinates; cskv: "
                    "low-rank factors of k_proj / v_proj (--key-rank, --value-rank); the cache "
                    "then stores the latents")
      ->required()->check(CLI::IsMember({"magnitude", "wanda", "minitron", "kv-heads", "kv-project", "cskv"}));
  a.cmd->add_option("--sparsity", a.sparsity, "magnitude/wanda: pruned share in [0, 1) (default 0.5)");
  a.cmd->add_option("--pattern", a.pattern, "magnitude/wanda: N:M, keep N of every M consecutive "
                    "input weights of a row (2:4, 4:8)");
  a.cmd->add_option("--weights", a.weights, "magnitude/wanda: regexes (full match) over weight "
                    "names to prune (default: every q/k/v/o/gate/up/down projection)");
  a.cmd->add_option("--target", a.targets, "minitron: key=value, repeatable: hidden_size, "
                    "intermediate_size, num_attention_heads, num_hidden_layers, "
                    "drop_layers=i,j,..., or num_parameters");
  a.cmd->add_option("--kv-heads", a.kv_heads, "kv-heads: the new number of KV heads; divides "
                    "the current number");
  a.cmd->add_option("--init", a.init, "kv-heads: svd (low-rank merge from calibration "
                    "activations, RoPE-exact; the default) or mean (mean-pooled heads, the GQA "
                    "paper's); cskv: whiten (the factors closest on calibration activations; the "
                    "default), asvd (SVD with input channels weighted by activation RMS) or svd "
                    "(of the weights alone)")
      ->check(CLI::IsMember({"svd", "mean", "asvd", "whiten"}));
  a.cmd->add_option("--key-rank", a.key_rank, "cskv: width of the cached key latent per layer "
                    "(1..min(hidden, kv_heads x head_dim))");
  a.cmd->add_option("--value-rank", a.value_rank, "cskv: width of the cached value latent per "
                    "layer (default: --key-rank)");
  a.cmd->add_option("--calib-windows", a.calib_windows, "calibration windows (wanda, minitron, "
                    "kv-heads svd, kv-project, cskv whiten and asvd)")
      ->default_val(32);
  a.cmd->add_option("--calib-batch", a.calib_batch, "windows per calibration forward")->default_val(8);
  a.cmd->add_option("--calib-seq-len", a.calib_seq_len, "tokens per calibration window (0: the "
                    "checkpoint recipe's seq_len); KV projections after RoPE see only the "
                    "positions calibrated, so calibrate at the context length that will be used")
      ->default_val(0);
  a.cmd->add_option("--data", a.data, "token store for calibration (default: the checkpoint recipe's)");
  a.cmd->add_flag("--no-sequential", a.no_sequential,
                  "wanda: calibrate once on the unpruned model instead of layer by layer");
  a.cmd->add_option("--threads", a.threads, "intra-op threads (0: all cores)")->default_val(0);
  a.cmd->add_option("--out", a.out, "checkpoint to write (.h5); must not exist")->required();
}

int run_prune_command(PruneArgs& a) {
  if (!a.cmd || !a.cmd->parsed()) return -1;
  auto t0 = std::chrono::steady_clock::now();
  set_intra_op_threads(a.threads, "--threads");
  check_new_output(a.out);
  std::string path = resolve_checkpoint_path(a.checkpoint);
  Checkpoint ckpt = Checkpoint::open(path);
  // A context compressor's run holds its frozen decoder plus the encoder; a pruned copy would
  // keep the kind but lose the encoder (compress / context-eval then fail on it).
  CONDENSE_CHECK(parse_recipe(ckpt.recipe_yaml(), path + ":recipe").kind != "context_compressor",
                 "{} is a context_compressor run: pruning it would drop its encoder; prune the "
                 "decoder it was trained against (its init) instead", path);
  LlamaForCausalLM model = load_inference_model(ckpt);
  const bool kv = a.method == "kv-heads";
  const bool project = a.method == "kv-project";
  const bool cskv = a.method == "cskv";
  const bool masked = a.method != "minitron" && !kv && !project && !cskv;
  const bool sparsity_given = a.cmd->count("--sparsity") > 0;
  CONDENSE_CHECK(masked || (!sparsity_given && a.pattern.empty() && a.weights.empty()),
                 "--sparsity, --pattern and --weights belong to magnitude/wanda; {} takes {}",
                 a.method, kv ? "--kv-heads and --init" : project ? "--calib-windows"
                           : cskv ? "--key-rank, --value-rank and --init" : "--target");
  CONDENSE_CHECK(a.method == "minitron" || a.targets.empty(),
                 "--target belongs to minitron; {} takes {}", a.method,
                 kv ? "--kv-heads and --init" : cskv ? "--key-rank, --value-rank and --init"
                    : "--sparsity or --pattern (and --weights)");
  CONDENSE_CHECK(a.method != "minitron" || !a.targets.empty(),
                 "--method minitron needs --target KEY=VALUE (hidden_size, intermediate_size, "
                 "num_attention_heads, num_hidden_layers or num_parameters): without one it "
                 "would write an unchanged copy");
  CONDENSE_CHECK(kv || a.cmd->count("--kv-heads") == 0, "--kv-heads belongs to --method kv-heads");
  CONDENSE_CHECK(kv || cskv || a.cmd->count("--init") == 0,
                 "--init belongs to --method kv-heads (svd | mean) and cskv (whiten | asvd | svd)");
  const std::string init = a.cmd->count("--init") ? a.init : cskv ? "whiten" : "svd";
  CONDENSE_CHECK(!kv || init == "svd" || init == "mean",
                 "--init {} belongs to cskv; kv-heads takes svd or mean", init);
  CONDENSE_CHECK(!cskv || init != "mean", "--init mean belongs to kv-heads; cskv takes whiten, asvd or svd");
  CONDENSE_CHECK(cskv || (a.cmd->count("--key-rank") == 0 && a.cmd->count("--value-rank") == 0),
                 "--key-rank and --value-rank belong to --method cskv");
  CONDENSE_CHECK(!cskv || a.cmd->count("--key-rank") > 0,
                 "--method cskv needs --key-rank R (the cached key latent's width; valid 1..{})",
                 std::min(model->config().hidden_size,
                          model->config().kv_heads() * model->config().head_size()));
  CONDENSE_CHECK(!kv || a.cmd->count("--kv-heads") > 0,
                 "--method kv-heads needs --kv-heads N (the new number of KV heads, of {} now)",
                 model->config().kv_heads());
  CONDENSE_CHECK(!model->kv_hook(), "{} carries a compressed KV cache (kv_proj/* or cskv/*); {} the "
                 "checkpoint it was made from instead", path, project || cskv ? "compress" : "prune");
  if (!masked)
    CONDENSE_CHECK(!WeightMasks::from_file(ckpt.file()).masks().size(),
                   "{} carries masks (it was pruned with magnitude/wanda); {} needs a checkpoint "
                   "without them", path, a.method);
  CONDENSE_CHECK(!sparsity_given || a.pattern.empty(),
                 "give --sparsity or --pattern, not both (N:M fixes the sparsity at 1 - N/M)");

  std::map<std::string, at::Tensor> extra;
  std::string summary;
  double calib_s = 0, forward_s = 0;
  int64_t calib_tokens = 0;
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  // The calibration windows, after one plain forward over them (forward_s: the yardstick of
  // the calibration's cost).
  auto calibration = [&] {
    std::vector<at::Tensor> windows = load_calibration(ckpt, path, a);
    at::NoGradGuard no_grad;
    model->eval();
    auto f0 = std::chrono::steady_clock::now();
    for (const at::Tensor& w : windows) model->hidden({w});
    model->train();
    forward_s = seconds_since(f0);
    for (const at::Tensor& w : windows) calib_tokens += w.numel();
    return windows;
  };
  // Runs a calibration pass, timing it into calib_s.
  auto timed = [&](auto&& pass) {
    auto c0 = std::chrono::steady_clock::now();
    auto result = pass();
    calib_s = seconds_since(c0);
    return result;
  };
  if (masked) {
    MaskPruneOptions opt;
    opt.method = a.method;
    opt.sparsity = sparsity_given ? a.sparsity : 0.5;
    if (!a.pattern.empty()) std::tie(opt.n, opt.m) = parse_pattern(a.pattern);
    opt.targets = a.weights;
    opt.sequential = !a.no_sequential;
    mask_prune_targets(model, opt);  // every option error before any work
    CONDENSE_CHECK(!WeightMasks::from_file(ckpt.file()).masks().size(),
                   "{} already carries masks (it was pruned before); prune the unpruned checkpoint",
                   path);
    std::vector<at::Tensor> windows;
    if (a.method == "wanda") windows = calibration();
    WeightMasks masks = prune_masked(model, opt, windows, &calib_s);
    extra = masks.entries();
    summary = masks.describe();
  } else if (kv || project || cskv) {
    KVCompressOptions opt;
    opt.method = a.method;
    opt.merge = KVMergeOptions{a.kv_heads, init};
    opt.low_rank = LowRankKVOptions{a.key_rank, a.cmd->count("--value-rank") ? a.value_rank : a.key_rank, init};
    // Every option error before any work.
    if (kv) check_kv_merge(model->config(), opt.merge);
    if (cskv) check_low_rank_kv(model->config(), opt.low_rank);
    KVCompressed done = compress_kv_cache(model, opt, calibration);
    model = done.model;
    extra = std::move(done.extra);
    summary = done.summary;
    calib_s = done.calibration_s;
  } else {
    MinitronTarget target = parse_targets(a.targets);
    check_minitron_target(model->config(), target);  // every target error before any work
    std::vector<at::Tensor> windows = calibration();
    CalibrationStats stats = timed([&] { return calibrate(model, windows); });
    MinitronPlan plan = plan_minitron(model->config(), stats, target);
    model = apply_minitron(model, plan);
    summary = plan.describe();
  }
  TrainingState provenance;  // a fresh start, but the source's training text is still its text
  provenance.data_split = ckpt.state().data_split;
  write_checkpoint(a.out, model, nullptr, provenance, ckpt.recipe_yaml(), ckpt.tokenizer_bytes(), extra);
  double secs = seconds_since(t0);
  spdlog::info("pruned {} with {}: {}; wrote {} in {:.1f}s", path, a.method, summary, a.out, secs);
  if (calib_tokens > 0)
    spdlog::info("calibration: {:.3f}s over {} tokens; one plain forward over them {:.3f}s ({:.2f}x)",
                 calib_s, calib_tokens, forward_s,
                 calib_s / std::max(forward_s, 1e-9));
  // One JSON line on stdout for scripts (bench/prune_recovery.py).
  std::cout << fmt::format("{{\"method\": \"{}\", \"out\": \"{}\", \"seconds\": {:.3f}, "
                           "\"calibration_s\": {:.4f}, \"forward_s\": {:.4f}, "
                           "\"calibration_tokens\": {}, \"parameters\": {}}}\n",
                           a.method, a.out, secs, calib_s, forward_s, calib_tokens,
                           model->config().num_parameters());
  return 0;
}

}  // namespace condense
