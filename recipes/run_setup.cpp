#include "recipes/run_setup.h"

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "comm/codec.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/log.h"
#include "data/loader.h"
#include "data/tokenizer_file.h"
#include "io/atomic_file.h"
#include "recipes/pretrain.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"

namespace condense {
namespace fs = std::filesystem;

RunSetup start_run(const RunConfig& cfg_in, const RunOptions& options,
                   const std::function<void(RunSetup&)>& adjust) {
  RunSetup run;
  run.cfg = cfg_in;
  RunConfig& cfg = run.cfg;
  const TrainConfig& tc = cfg.train;
  run.threads = set_intra_op_threads(tc.threads, "train.threads");

  // Data parallelism: one process per rank under mpirun/srun (see README "Multi-node"). The
  // communicator follows train.device (NCCL for CUDA tensors under comm.backend auto).
  cfg.comm.device = device_type_name(tc.device);
  require_device(tc.device);
  CONDENSE_CHECK(cfg.comm.backend != "nccl" || cfg.comm.device == "cuda",
                 "comm.backend=nccl exchanges CUDA tensors, but train.device is {}; set "
                 "train.device=cuda, or comm.backend=auto / mpi on the CPU", tc.device);
  const std::string unread = unread_compression_key(cfg.comm.compression);
  CONDENSE_CHECK(unread.empty(), "{}", unread);
  run.comm = make_communicator(cfg.comm);
  run.rank = run.comm->rank();
  run.world = run.comm->size();
  run.device = training_device(tc.device, run.comm->local_rank());
  if (const std::string slow = bf16_speed_warning(run.device, tc.precision); !slow.empty()) {
    spdlog::warn("{}", slow);
  }
  if (run.world > 1) {
    init_logging(run.rank, run.world);
    check_same_on_all_ranks(*run.comm, to_yaml(cfg_in), "the resolved recipe");
    spdlog::info("data parallel: {} ranks ({} backend), global batch {} x {} windows", run.world,
                 run.comm->backend(), run.world, cfg.data.batch_size);
  }

  // Which tier takes activations follows the device; refused here rather than at the first
  // offloaded tensor.
  CONDENSE_CHECK(cfg.memory.offload != "host" || run.device.is_cuda(),
                 "memory.offload=host moves CUDA activations to pinned host memory, but "
                 "train.device is {}; use memory.offload=disk on the CPU", tc.device);
  CONDENSE_CHECK(cfg.memory.offload != "disk" || run.device.is_cpu(),
                 "memory.offload=disk spills CPU activations, but train.device is {}; use "
                 "memory.offload=host on CUDA", tc.device);

  run.out_dir = resolve_out_dir(cfg);
  check_creatable_dir(run.out_dir, cfg.out_dir.empty() ? "out_dir (from name)" : "out_dir");
  if (!cfg.checkpoint.dir.empty()) check_creatable_dir(cfg.checkpoint.dir, "checkpoint.dir");
  if (cfg.data.dataset.empty()) check_creatable_dir(cfg.data.cache_dir, "data.cache_dir");
  if (cfg.checkpoint.dir.empty()) cfg.checkpoint.dir = (fs::path(run.out_dir) / "checkpoints").string();
  CheckpointManager manager(cfg.checkpoint.dir, cfg.checkpoint.keep);
  run.resume = manager.latest();
  CONDENSE_CHECK(!run.resume || options.resume,
                 "{} already holds checkpoints (latest {}); pass --resume to continue that run, "
                 "or choose another name= / out_dir= (nothing was changed)",
                 cfg.checkpoint.dir, run.resume.value_or(""));
  if (options.resume && !run.resume)
    spdlog::info("--resume: no checkpoint in {} yet; starting fresh", cfg.checkpoint.dir);
  std::string recorded_split;
  if (run.resume) {
    const Checkpoint ckpt = Checkpoint::open(*run.resume);
    check_resume_split(ckpt, *run.resume, cfg.data);
    recorded_split = ckpt.state().data_split;
  }

  // Rank 0 prepares the token store on first use; the others wait and then open it (the cache
  // directory must be shared by all ranks, as the checkpoint directory must).
  if (run.rank == 0) run.dataset = resolve_dataset(cfg.data, recorded_split);
  run.comm->barrier();
  if (run.rank != 0) run.dataset = resolve_dataset(cfg.data, recorded_split);
  run.store.emplace(TokenStore::open(run.dataset));
  const TokenStore& store = *run.store;
  // The recipe's data settings matched (check_resume_split); the store they name must also hold
  // the same documents (one rebuilt from a changed corpus, or a data.dataset that was replaced,
  // would hand the run documents it held out). Before the tokenizer checks: the clearer reason.
  if (run.resume) check_same_split(recorded_split, store, "--resume: " + *run.resume);
  if (!cfg.data.tokenizer.empty())
    store.check_tokenizer(load_tokenizer_file(cfg.data.tokenizer).sha256(), cfg.data.tokenizer);
  // A model trained from scratch has its tokenizer's bos / eos; a model from an init checkpoint
  // (adjust replaces the recipe's model with its config) keeps the ones it came with, as its
  // weights and checkpoints do (an imported Hugging Face config may name other ids, or a list).
  // A vocabulary without <s> (GPT-2's, Qwen2's) names its end of text as bos, as those models'
  // own configs do (a recipe's bos_token_id is an id, never -1).
  cfg.model.eos_token_id = store.tokenizer().eos_id();
  cfg.model.bos_token_id = store.tokenizer().bos_id() >= 0 ? store.tokenizer().bos_id() : cfg.model.eos_token_id;
  if (adjust) adjust(run);
  if (cfg.model.vocab_size == 0) cfg.model.vocab_size = store.vocab_size();
  // More embedding rows than pieces is a padded vocabulary (Qwen2's 151936 rows for 151665
  // tokens, Phi-3's): the extra rows are never a target or an input, as in transformers.
  CONDENSE_CHECK(cfg.model.vocab_size >= store.vocab_size(),
                 "model.vocab_size is {} but the tokenizer of {} has {} pieces", cfg.model.vocab_size,
                 run.dataset, store.vocab_size());
  if (cfg.model.vocab_size > store.vocab_size()) {
    // From an init (its config replaced the recipe's) that is the model's own padding; a recipe
    // that asks for it may have a typo.
    const std::string msg = fmt::format("model.vocab_size {} pads the tokenizer's {} pieces: rows {}.. "
                                        "are never a target", cfg.model.vocab_size, store.vocab_size(),
                                        store.vocab_size());
    if (adjust) spdlog::info("{}", msg);
    else spdlog::warn("{} (model.vocab_size: 0 takes the tokenizer's)", msg);
  }
  CONDENSE_CHECK(cfg.data.seq_len <= cfg.model.max_position_embeddings,
                 "data.seq_len ({}) exceeds model.max_position_embeddings ({})", cfg.data.seq_len,
                 cfg.model.max_position_embeddings);
  cfg.model.finalize();

  // recipe.yaml and the checkpoints record checkpoint.dir as given: a default one stays implied
  // by out_dir, so that the recipe reused with another name= / out_dir= writes there and not
  // into this run's directory.
  RunConfig recorded = cfg;
  recorded.checkpoint.dir = cfg_in.checkpoint.dir;
  run.yaml = to_yaml(recorded);
  if (run.resume) {
    Checkpoint ckpt = Checkpoint::open(*run.resume);
    store.check_tokenizer(sha256_hex(ckpt.tokenizer_bytes()), *run.resume);
    // A resume must continue the same model: refuse here, before anything is written, rather
    // than when the weights fail to load after recipe.yaml was rewritten.
    const nlohmann::json saved = to_hf_json(ckpt.config()), now = to_hf_json(cfg.model);
    std::string differences;
    // Both ways: a key only one side writes (rope_scaling, absent when there is none) differs too.
    nlohmann::json keys = now;
    keys.update(saved);
    for (const auto& [key, unused] : keys.items())
      if (!saved.contains(key) || !now.contains(key) || saved[key] != now[key])
        differences += fmt::format(" {}: {} in the checkpoint, {} in the recipe;", key,
                                   saved.contains(key) ? saved[key].dump() : "absent",
                                   now.contains(key) ? now[key].dump() : "absent");
    CONDENSE_CHECK(differences.empty(), "--resume: the recipe's model differs from the one {} "
                   "holds:{} nothing was changed", *run.resume, differences);
    const TrainingState saved_state = ckpt.state();
    // The data cursor, error-feedback buffers and local-update state are per rank: a resume
    // continues only with as many ranks as wrote the checkpoint.
    CONDENSE_CHECK(saved_state.world_size == 0 || saved_state.world_size == run.world,
                   "--resume: {} was written by a run of {} rank(s), this one has {}; resume with "
                   "the same number of ranks (nothing was changed)", *run.resume,
                   saved_state.world_size, run.world);
    const int64_t at = saved_state.step;
    CONDENSE_CHECK(at <= tc.steps, "--resume: {} is at step {}, past train.steps={}; raise "
                   "train.steps to continue (nothing was changed)", *run.resume, at, tc.steps);
    if (ckpt.recipe_yaml() != run.yaml) {
      spdlog::warn("the recipe differs from the one {} was trained with; continuing with the "
                   "new one (the old one is stored in the checkpoint's 'recipe')", *run.resume);
      // Changes that are allowed but change more than the setting reads as changing.
      RunConfig was = cfg;
      try {
        was = checkpoint_recipe(ckpt, *run.resume);
      } catch (const Error& e) {
        spdlog::warn("{}: its recipe could not be read to compare ({})", *run.resume, e.what());
      }
      if (was.data.seq_len != cfg.data.seq_len)
        spdlog::warn("data.seq_len {} -> {}: the data cursor (epoch {}, window {}) now indexes "
                     "another windowing, so until the next epoch windows may repeat or be skipped",
                     was.data.seq_len, cfg.data.seq_len, saved_state.cursor.epoch,
                     saved_state.cursor.position);
      if (ckpt.file().has("comm/compression_step") && !cfg.comm.compression.enabled() &&
          !cfg.comm.sync.local_update())
        spdlog::warn("{} holds gradient-compression state (comm.compression was on) and this "
                     "recipe has none: its error-feedback residuals are dropped", *run.resume);
    }
  }
  if (!cfg.init.empty() && !run.resume) {
    const Checkpoint init = Checkpoint::open(cfg.init);
    store.check_tokenizer(sha256_hex(init.tokenizer_bytes()), cfg.init);
    if (run.rank == 0) warn_if_other_split(init, cfg.init, store);
  }

  // recipe.yaml is written by train_run once the trainer has restored the checkpoint: a
  // refused resume (a corrupt checkpoint) must leave the run directory as it was.
  spdlog::info("resolved recipe (hash {}):\n{}", recipe_hash(recorded).substr(0, 16), run.yaml);
  // From here on a rank that stalls ends the job (before: the token store's preparation on
  // rank 0, which may take longer than any collective should).
  run.comm->arm_watchdog(cfg.comm.timeout_s, run.out_dir);
  return run;
}

// Rank 0's locks on out_dir and, when it lies outside, checkpoint.dir, taken just before the
// first write. They are taken only then (a refused start must leave no directory behind), so a
// run that started after this one and finished while this one prepared its data may have
// written checkpoints since the check at start: checked again under the lock, or this run would
// overwrite them. A checkpoint.dir outside out_dir is another run's too when a recipe is reused
// under another name: locked and checked before out_dir is made; if out_dir then cannot be
// locked, a checkpoint.dir made here is removed again.
static void lock_run_directories(RunSetup& run, const std::string& ckpt_dir, int64_t keep) {
  // Fault injection for tests/python/test_run_races.py: a start slower than another run.
  if (const char* delay = std::getenv("CONDENSE_TEST_DELAY_BEFORE_LOCK_S"))
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(delay)));
  auto check_unchanged = [&] {
    const std::optional<std::string> now = CheckpointManager(ckpt_dir, keep).latest();
    CONDENSE_CHECK(now == run.resume, "{} holds checkpoints another run wrote while this one was "
                   "starting (latest {}); start again (--resume continues from them), or choose "
                   "another name= / out_dir= (nothing was changed)", ckpt_dir, now.value_or("none"));
  };
  auto canonical = [](const std::string& p) {  // without a trailing separator
    fs::path c = fs::weakly_canonical(p).lexically_normal();
    return c.has_filename() ? c : c.parent_path();
  };
  const fs::path rel = canonical(ckpt_dir).lexically_relative(canonical(run.out_dir));
  const bool inside = !rel.empty() && *rel.begin() != "..";  // out_dir itself or below it
  const bool made = !inside && !fs::exists(ckpt_dir);
  try {
    if (!inside) {
      fs::create_directories(ckpt_dir);
      run.checkpoint_lock = std::make_unique<RunLock>(ckpt_dir);
      check_unchanged();
    }
    fs::create_directories(run.out_dir);
    run.lock = std::make_unique<RunLock>(run.out_dir);
  } catch (const Error&) {
    run.checkpoint_lock.reset();
    if (made) fs::remove_all(ckpt_dir);
    throw;
  }
  if (inside) check_unchanged();
}

TrainResult train_run(RunSetup& run, Trainable trainable, std::vector<int64_t> train_windows,
                      const DataStreams* streams) {
  const RunConfig& cfg = run.cfg;
  const TokenStore& store = *run.store;
  LoaderOptions lo{cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed, run.rank, run.world,
                   std::move(train_windows)};
  BatchLoader loader(streams ? streams->train : store.ids("train"), lo);
  const at::Tensor held_out = streams ? streams->val : store.held_out_ids();
  std::vector<Batch> val = validation_batches(held_out, cfg.data.seq_len, cfg.data.batch_size,
                                              cfg.train.eval_batches, run.rank, run.world);
  // What validation covers: its windows' targets (all ranks) against the held-out tokens.
  const int64_t scored = static_cast<int64_t>(val.size()) * (val.empty() ? 0 : val[0].targets.numel()) *
                         run.world;
  spdlog::info("data: {} ({} train windows of {} tokens, {} validation batches: {} of {} held-out "
               "tokens, {:.1f}%)",
               streams ? streams->name : run.dataset, loader.windows_per_epoch(), cfg.data.seq_len,
               val.size(), scored, held_out.numel(),
               held_out.numel() > 0 ? 100.0 * scored / held_out.numel() : 0.0);

  TrainerSetup setup{cfg.train, cfg.checkpoint, run.out_dir, run.yaml,
                     store.tokenizer().serialized(), cfg.data.batch_size * cfg.data.seq_len,
                     run.comm.get(),
                     GradSyncConfig{cfg.comm.bucket_cap_mb, cfg.comm.overlap, cfg.comm.compression},
                     run.device, cfg.memory.meter, cfg.comm.sync};
  if (!streams) {
    try {
      setup.data_split = store.split_signature();
    } catch (const Error&) {  // an older store without the attributes: not recorded
    }
  }
  setup.before_writing = [&run, ckpt_dir = cfg.checkpoint.dir, keep = cfg.checkpoint.keep] {
    if (run.rank != 0) return;
    lock_run_directories(run, ckpt_dir, keep);
    write_text_atomically((fs::path(run.out_dir) / "recipe.yaml").string(), run.yaml);
  };
  if (run.world == 1 && cfg.comm.compression.enabled() && !cfg.comm.sync.local_update())
    spdlog::warn("comm.compression (codec {}, error control {}) has no effect in a single process: "
                 "gradients are not exchanged; launch with mpirun -np N", cfg.comm.compression.codec,
                 cfg.comm.compression.error_control);
  spdlog::info("{}", describe_trainable(trainable));
  Trainer trainer(setup, std::move(trainable), std::move(loader), std::move(val));
  TrainResult r = trainer.run(run.resume);
  spdlog::info("{} at step {}: train loss {}{}; checkpoint {}",
               r.interrupted ? "interrupted" : "done", r.step,
               std::isnan(r.train_loss) ? "n/a (no step ran)" : fmt::format("{:.4f}", r.train_loss),
               r.val_loss < 0 ? "" : r.val_step == r.step ? fmt::format(", validation loss {:.4f}", r.val_loss)
                                 : fmt::format(", validation loss {:.4f} at step {}", r.val_loss, r.val_step),
               r.checkpoint);
  return r;
}

}  // namespace condense
