#include "recipes/pretrain.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <torch/utils.h>

#include <filesystem>
#include <thread>

#include "comm/communicator.h"
#include "core/error.h"
#include "core/log.h"
#include "core/hash.h"
#include "data/loader.h"
#include "io/atomic_file.h"
#include "memory/counting_allocator.h"
#include "memory/memory_policy.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"
#include "trainer/lm_loss.h"
#include "trainer/trainer.h"

namespace condense {
namespace fs = std::filesystem;

std::string resolve_out_dir(const RunConfig& cfg) {
  return cfg.out_dir.empty() ? (fs::path("runs") / cfg.name).string() : cfg.out_dir;
}

std::string resolve_dataset(const DataConfig& data, int64_t seed) {
  std::string path = data.dataset;
  if (path.empty()) {
    std::string tok = data.tokenizer.empty()
                          ? fmt::format("bpe{}", data.vocab_size)
                          : "tok" + Tokenizer::load(data.tokenizer).sha256().substr(0, 12);
    std::string source = data.path.empty() ? "" : "-" + sha256_hex(fs::absolute(data.path).string()).substr(0, 8);
    std::string docs = data.max_documents > 0 ? fmt::format("-n{}", data.max_documents) : "";
    path = (fs::path(data.cache_dir) /
            fmt::format("{}{}-{}{}-val{}-seed{}.h5", data.corpus, source, tok, docs,
                        data.val_fraction, seed))
               .string();
  }
  if (fs::exists(path)) return path;
  spdlog::info("preparing token store {} from corpus '{}' (first use; cached afterwards)", path,
               data.corpus);
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  PrepareOptions p;
  p.corpus = CorpusSpec{data.corpus, data.path, data.max_documents};
  p.tokenizer_path = data.tokenizer;
  p.vocab_size = data.vocab_size;
  p.val_fraction = data.val_fraction;
  p.seed = seed;
  p.out_path = path;
  prepare_token_store(p);
  return path;
}

int run_pretrain(const RunConfig& cfg_in, const RunOptions& options) {
  RunConfig cfg = cfg_in;
  const TrainConfig& tc = cfg.train;
  int threads = tc.threads > 0 ? static_cast<int>(tc.threads)
                               : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);

  // Data parallelism: one process per rank under mpirun/srun (see README "Multi-node").
  std::unique_ptr<Communicator> comm = make_communicator(cfg.comm);
  const int rank = comm->rank(), world = comm->size();
  if (world > 1) {
    init_logging(rank, world);
    check_same_on_all_ranks(*comm, to_yaml(cfg_in), "the resolved recipe");
    spdlog::info("data parallel: {} ranks ({} backend), global batch {} x {} windows", world,
                 comm->backend(), world, cfg.data.batch_size);
  }

  std::string out_dir = resolve_out_dir(cfg);
  if (cfg.checkpoint.dir.empty()) cfg.checkpoint.dir = (fs::path(out_dir) / "checkpoints").string();
  CheckpointManager manager(cfg.checkpoint.dir, cfg.checkpoint.keep);
  std::optional<std::string> resume = manager.latest();
  CONDENSE_CHECK(!resume || options.resume,
                 "{} already holds checkpoints (latest {}); pass --resume to continue that run, "
                 "or choose another name= / out_dir= (nothing was changed)",
                 cfg.checkpoint.dir, resume.value_or(""));
  if (options.resume && !resume) spdlog::info("--resume: no checkpoint in {} yet; starting fresh", cfg.checkpoint.dir);

  // Rank 0 prepares the token store on first use; the others wait and then open it (the cache
  // directory must be shared by all ranks, as the checkpoint directory must).
  std::string dataset;
  if (rank == 0) dataset = resolve_dataset(cfg.data, tc.seed);
  comm->barrier();
  if (rank != 0) dataset = resolve_dataset(cfg.data, tc.seed);
  TokenStore store = TokenStore::open(dataset);
  if (!cfg.data.tokenizer.empty())
    store.check_tokenizer(Tokenizer::load(cfg.data.tokenizer).sha256(), cfg.data.tokenizer);
  if (cfg.model.vocab_size == 0) cfg.model.vocab_size = store.vocab_size();
  CONDENSE_CHECK(cfg.model.vocab_size == store.vocab_size(),
                 "model.vocab_size is {} but the tokenizer of {} has {} pieces", cfg.model.vocab_size,
                 dataset, store.vocab_size());
  cfg.model.bos_token_id = store.tokenizer().bos_id();
  cfg.model.eos_token_id = store.tokenizer().eos_id();
  CONDENSE_CHECK(cfg.data.seq_len <= cfg.model.max_position_embeddings,
                 "data.seq_len ({}) exceeds model.max_position_embeddings ({})", cfg.data.seq_len,
                 cfg.model.max_position_embeddings);
  cfg.model.finalize();

  std::string yaml = to_yaml(cfg);
  if (resume) {
    Checkpoint ckpt = Checkpoint::open(*resume);
    store.check_tokenizer(sha256_hex(ckpt.tokenizer_bytes()), *resume);
    if (ckpt.recipe_yaml() != yaml)
      spdlog::warn("the recipe differs from the one {} was trained with; continuing with the "
                   "new one (the old one is stored in the checkpoint's 'recipe')", *resume);
  }
  if (!cfg.init.empty() && !resume) {
    store.check_tokenizer(sha256_hex(Checkpoint::open(cfg.init).tokenizer_bytes()), cfg.init);
  }

  if (rank == 0) {
    fs::create_directories(out_dir);
    write_text_atomically((fs::path(out_dir) / "recipe.yaml").string(), yaml);
  }
  spdlog::info("resolved recipe (hash {}):\n{}", recipe_hash(cfg).substr(0, 16), yaml);

  if (cfg.memory.meter) install_counting_cpu_allocator();  // before the model: count everything
  torch::manual_seed(static_cast<uint64_t>(tc.seed));
  LlamaForCausalLM model(cfg.model);
  if (!cfg.init.empty() && !resume) {
    Checkpoint::open(cfg.init).load_model(model);
    spdlog::info("initialized weights from {}", cfg.init);
  }
  spdlog::info("model: {:.2f}M parameters, {} layers, hidden {}, heads {}/{} (q/kv), vocab {}; "
               "{} threads", cfg.model.num_parameters() / 1e6, cfg.model.num_hidden_layers,
               cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.kv_heads(),
               cfg.model.vocab_size, threads);

  LoaderOptions lo{cfg.data.seq_len, cfg.data.batch_size, tc.seed, rank, world};
  BatchLoader loader(store.ids("train"), lo);
  std::vector<Batch> val = validation_batches(store.ids("val"), cfg.data.seq_len,
                                              cfg.data.batch_size, tc.eval_batches, rank, world);
  spdlog::info("data: {} ({} train windows of {} tokens, {} validation batches)", dataset,
               loader.windows_per_epoch(), cfg.data.seq_len, val.size());

  TrainerSetup setup{tc, cfg.checkpoint, out_dir, yaml, store.tokenizer().serialized(),
                     cfg.data.batch_size * cfg.data.seq_len, comm.get(),
                     GradSyncConfig{cfg.comm.bucket_cap_mb, cfg.comm.overlap, cfg.comm.compression}};
  if (world == 1 && cfg.comm.compression.enabled())
    spdlog::warn("comm.compression (codec {}, error control {}) has no effect in a single process: "
                 "gradients are not exchanged; launch with mpirun -np N", cfg.comm.compression.codec,
                 cfg.comm.compression.error_control);
  // memory: recomputation / offload / compressed activations around the forward, and the loss
  // (full logits or chunked); with the defaults this is exactly causal_lm_loss.
  auto memory = std::make_shared<MemoryPolicy>(cfg.memory, model);
  spdlog::info("memory: {}", memory->describe());
  LossFn loss = [memory](LlamaForCausalLM& m, const Batch& b) {
    return memory->loss(m, b.inputs, b.targets);
  };
  Trainer trainer(setup, model, std::move(loader), std::move(val), loss);
  TrainResult r = trainer.run(resume);
  spdlog::info("{} at step {}: train loss {:.4f}{}; checkpoint {}",
               r.interrupted ? "interrupted" : "done", r.step, r.train_loss,
               r.val_loss >= 0 ? fmt::format(", validation loss {:.4f}", r.val_loss) : "",
               r.checkpoint);
  return 0;
}

}  // namespace condense
