#include "recipes/kv_compress.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <thread>

#include "comm/mpi_runtime.h"
#include "compressors/kv_compress_step.h"
#include "compressors/lora.h"
#include "compressors/masks.h"
#include "core/error.h"
#include "core/hash.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "recipes/finetune.h"
#include "recipes/pretrain.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

// The compression the recipe asks for (defaults filled in).
KVCompressOptions kv_options(const RunConfig& cfg, bool heads) {
  const KVConfig& kv = cfg.kv;
  KVCompressOptions o;
  o.method = heads ? "kv-heads" : cfg.recovery.method == "cskv" ? "cskv" : "kv-project";
  o.merge = KVMergeOptions{kv.heads, kv.init.empty() ? "svd" : kv.init};
  o.low_rank = LowRankKVOptions{kv.key_rank, kv.value_rank > 0 ? kv.value_rank : kv.key_rank,
                                kv.init.empty() ? "whiten" : kv.init};
  return o;
}

// Every key of kv: and recovery: that the kind cannot use, refused before any work.
void check_kv_options(const RunConfig& cfg, bool heads, const LlamaConfig& model) {
  const KVConfig& kv = cfg.kv;
  const std::string& method = cfg.recovery.method;
  if (heads) {
    CONDENSE_CHECK(kv.heads > 0, "kind kv_heads needs kv.heads: the new number of KV heads (the "
                   "init {} has {})", cfg.init, model.kv_heads());
    CONDENSE_CHECK(kv.init.empty() || kv.init == "svd" || kv.init == "mean",
                   "kv.init '{}': kind kv_heads takes svd or mean", kv.init);
    CONDENSE_CHECK(kv.key_rank == 0 && kv.value_rank == 0, "kv.key_rank / kv.value_rank belong to "
                   "kind kv_project with recovery.method cskv, not to kind kv_heads");
    CONDENSE_CHECK(method == "full" || method == "lora", "recovery.method '{}': kind kv_heads heals "
                   "the merged model with full (what train.trainable names) or lora", method);
    check_kv_merge(model, kv_options(cfg, heads).merge);
    return;
  }
  CONDENSE_CHECK(method == "kv_project" || method == "cskv", "recovery.method '{}': kind "
                 "kv_project trains kv_project (MatryoshkaKV's orthogonal projections) or cskv "
                 "(low-rank K/V factors)", method);
  CONDENSE_CHECK(kv.heads == 0, "kv.heads belongs to kind kv_heads, not kv_project");
  if (method == "kv_project") {
    CONDENSE_CHECK(kv.init.empty(), "kv.init '{}': MatryoshkaKV (recovery.method kv_project) "
                   "starts from PCA bases only; leave kv.init empty", kv.init);
    CONDENSE_CHECK(kv.key_rank == 0 && kv.value_rank == 0, "kv.key_rank / kv.value_rank belong "
                   "to recovery.method cskv; MatryoshkaKV chooses its rank at inference (--kv-rank)");
    return;
  }
  CONDENSE_CHECK(kv.init.empty() || kv.init == "whiten" || kv.init == "asvd" || kv.init == "svd",
                 "kv.init '{}': recovery.method cskv takes whiten, asvd or svd", kv.init);
  CONDENSE_CHECK(kv.key_rank > 0, "recovery.method cskv needs kv.key_rank: the cached key "
                 "latent's width (valid 1..{})",
                 std::min(model.hidden_size, model.kv_heads() * model.head_size()));
  check_low_rank_kv(model, kv_options(cfg, heads).low_rank);
}

// The calibration windows: the last kv.calib_windows of the run's validation split.
std::vector<at::Tensor> calibration(const RunConfig& cfg, const Checkpoint& init) {
  const std::string dataset = resolve_dataset(cfg.data);
  TokenStore store = TokenStore::open(dataset);
  store.check_tokenizer(sha256_hex(init.tokenizer_bytes()), cfg.init);
  const int64_t seq = cfg.kv.calib_seq_len > 0 ? cfg.kv.calib_seq_len : cfg.data.seq_len;
  CONDENSE_CHECK(seq <= init.config().max_position_embeddings, "kv.calib_seq_len {}: valid is 0 "
                 "(data.seq_len) or 1..{} (the init's max_position_embeddings)", seq,
                 init.config().max_position_embeddings);
  spdlog::info("calibration: the last {} windows of {} tokens of {}'s validation split",
               cfg.kv.calib_windows, seq, dataset);
  return calibration_windows(store.held_out_ids(), seq, cfg.kv.calib_windows, /*batch_size=*/8);
}

// Compresses init's KV cache as the kind says and writes the result to `out` (atomically).
void compress(const RunConfig& cfg, bool heads, const Checkpoint& init, const std::string& out) {
  LlamaForCausalLM model(init.config());
  init.load_model(model);
  merge_stored_adapters(model, init.file());
  KVCompressed done = compress_kv_cache(model, kv_options(cfg, heads),
                                        [&] { return calibration(cfg, init); });
  TrainingState provenance;  // the source's training text, as prune records it
  provenance.data_split = init.state().data_split;
  write_checkpoint(out, done.model, nullptr, provenance, init.recipe_yaml(), init.tokenizer_bytes(),
                   done.extra);
  spdlog::info("compressed {}: {}; wrote {}", cfg.init, done.summary, out);
}

int run_kv_kind(const RunConfig& cfg_in, const RunOptions& options, bool heads) {
  const char* kind = heads ? "kv_heads" : "kv_project";
  CONDENSE_CHECK(!cfg_in.init.empty(), "kind {} needs init: the checkpoint whose KV cache to "
                 "compress (it is also the teacher unless distill.teacher names another)", kind);
  set_intra_op_threads(cfg_in.train.threads, "train.threads");
  Checkpoint init = Checkpoint::open(cfg_in.init);
  CONDENSE_CHECK(!init.file().has("kv_proj") && !init.file().has("cskv"), "init {} carries a "
                 "compressed KV cache (kv_proj/* or cskv/*); give kind {} the checkpoint it was "
                 "made from", cfg_in.init, kind);
  CONDENSE_CHECK(WeightMasks::from_file(init.file()).empty(), "init {} carries masks (magnitude/"
                 "wanda pruning); kind {} needs a checkpoint without them", cfg_in.init, kind);
  check_kv_options(cfg_in, heads, init.config());

  const fs::path out_dir = resolve_out_dir(cfg_in);
  const fs::path compressed = out_dir / "compressed_init.h5";
  // Under mpirun rank 0 compresses and the others wait for the file; the first barrier lines
  // up ranks that start apart, so that all of them see the directory as it was before this run.
  barrier_world();
  const bool writer = mpi_world_rank() == 0;
  const bool reuse = fs::exists(compressed);
  CONDENSE_CHECK(!reuse || options.resume, "{} holds the compressed model of an earlier run; pass "
                 "--resume to continue that run, or choose another name= / out_dir= (nothing was "
                 "changed)", compressed.string());
  const bool created_dir = !fs::exists(out_dir);
  // Whether this call's training wrote anything: recipe.yaml is its first write (an earlier
  // run in the same directory may have left one, so its time is compared).
  const fs::path recipe_file = out_dir / "recipe.yaml";
  std::error_code ec;
  const auto recipe_time_before = fs::last_write_time(recipe_file, ec);
  const bool had_recipe = !ec;
  auto training_wrote = [&] {
    std::error_code e;
    const auto now = fs::last_write_time(recipe_file, e);
    return !e && (!had_recipe || now != recipe_time_before);
  };
  // Training starts from the compressed model; the recipe keeps init (the uncompressed one), so
  // its recipe.yaml reused elsewhere compresses again and --resume reuses compressed_init.h5.
  RunConfig cfg = cfg_in;
  if (cfg.distill.teacher.empty()) cfg.distill.teacher = cfg_in.init;
  RunOptions train_options = options;
  train_options.init_weights = compressed.string();
  try {
    if (reuse) {
      spdlog::info("--resume: the compressed model {} of the earlier run is the init",
                   compressed.string());
    } else if (writer) {
      fs::create_directories(out_dir);
      compress(cfg_in, heads, init, compressed.string());
    }
    barrier_world();  // a rank 0 that failed ends the job (launch/main.cpp) instead
    return run_distill(cfg, train_options);
  } catch (...) {
    // Refused before training wrote anything: leave no trace of this call.
    if (writer && !reuse && !training_wrote()) {
      fs::remove(compressed, ec);
      if (created_dir && fs::is_empty(out_dir, ec)) fs::remove(out_dir, ec);
    }
    throw;
  }
}

}  // namespace

int run_kv_heads(const RunConfig& cfg, const RunOptions& options) {
  return run_kv_kind(cfg, options, /*heads=*/true);
}

int run_kv_project(const RunConfig& cfg, const RunOptions& options) {
  return run_kv_kind(cfg, options, /*heads=*/false);
}

}  // namespace condense
