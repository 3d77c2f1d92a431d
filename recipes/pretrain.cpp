#include "recipes/pretrain.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <torch/utils.h>

#include <filesystem>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "data/tokenizer_file.h"
#include "comm/communicator.h"
#include "core/error.h"
#include "core/log.h"
#include "core/hash.h"
#include "data/loader.h"
#include "io/atomic_file.h"
#include "memory/counting_allocator.h"
#include "memory/memory_policy.h"
#include "recipes/recipe_parser.h"
#include "text/tokenizer.h"
#include "recipes/run_setup.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/lm_loss.h"
#include "trainer/trainer.h"

namespace condense {
namespace fs = std::filesystem;

std::string resolve_out_dir(const RunConfig& cfg) {
  return cfg.out_dir.empty() ? (fs::path("runs") / cfg.name).string() : cfg.out_dir;
}

namespace {

// The store's path: data.dataset, or the cache name its corpus, tokenizer and split options give.
// `recorded_split`: the split a checkpoint was trained on (resume, eval); a store cached under
// the name max_documents had before the spread sample ("-n{N}", the first N documents) is used
// when it holds that split and no "-even{N}" store is there.
std::string dataset_path(const DataConfig& data, const std::string& recorded_split = "") {
  std::string path = data.dataset;
  if (path.empty()) {
    // "-d2": documents start with <s> only where the tokenizer adds one (before 2026-12-07 every
    // vocabulary with a bos had it): stores cached under the old name are not picked up.
    std::string tok = data.tokenizer.empty()
                          ? fmt::format("bpe{}", data.vocab_size)
                          : "tok" + load_tokenizer_file(data.tokenizer).sha256().substr(0, 12) + "-d2";
    std::string source = data.path.empty() ? "" : "-" + sha256_hex(fs::absolute(data.path).string()).substr(0, 8);
    // "-even": the sample is spread over the corpus (before 2026-12-06 21:00 UTC it was the first N,
    // cached as "-n{N}": a different store, so those are not picked up under this name).
    std::string docs = data.max_documents > 0 ? fmt::format("-even{}", data.max_documents) : "";
    auto name = [&](const std::string& docs_part) {
      return (fs::path(data.cache_dir) / fmt::format("{}{}-{}{}-val{}-seed{}.h5", data.corpus, source,
                                                     tok, docs_part, data.val_fraction, data.seed))
          .string();
    };
    path = name(docs);
    const std::string legacy = name(fmt::format("-n{}", data.max_documents));
    if (data.max_documents > 0 && !recorded_split.empty() && !fs::exists(path) && fs::exists(legacy)) {
      try {
        if (TokenStore::open(legacy).split_signature() == recorded_split) {
          spdlog::info("using {}: the store of the first {} documents this checkpoint was trained "
                       "on (max_documents now keeps a spread sample)", legacy, data.max_documents);
          return legacy;
        }
      } catch (const Error&) {  // unreadable or without split attributes: not the one
      }
    }
  }
  return path;
}

}  // namespace

std::string resolve_dataset(const DataConfig& data, const std::string& recorded_split) {
  const std::string path = dataset_path(data, recorded_split);
  if (fs::exists(path)) return path;
  // A data.dataset that does not exist is a mistyped path, not a request to build a store there.
  CONDENSE_CHECK(data.dataset.empty(), "data.dataset={}: no such token store; build one with "
                 "`condense prepare ... --out {}`, or leave data.dataset empty to build it under "
                 "data.cache_dir on first use", data.dataset, data.dataset);
  spdlog::info("preparing token store {} from corpus '{}' (first use; cached afterwards)", path,
               data.corpus);
  // The directories made for the store go again if it cannot be made (a missing corpus, say):
  // a refused run leaves nothing behind.
  const fs::path dir = fs::absolute(path).parent_path();
  fs::path made;  // the highest directory this call creates
  for (fs::path p = dir; !p.empty() && !fs::exists(p) && p != p.parent_path(); p = p.parent_path())
    made = p;
  fs::create_directories(dir);
  PrepareOptions p;
  p.corpus = CorpusSpec{data.corpus, data.path, data.max_documents};
  p.tokenizer_path = data.tokenizer;
  p.vocab_size = data.vocab_size;
  p.val_fraction = data.val_fraction;
  p.seed = data.seed;
  p.out_path = path;
  try {
    prepare_token_store(p);
  } catch (...) {
    std::error_code ec;  // fs::remove removes only empty directories
    if (!made.empty())
      for (fs::path q = dir; fs::remove(q, ec) && q != made; q = q.parent_path()) {
      }
    throw;
  }
  return path;
}

RunConfig checkpoint_recipe(const Checkpoint& ckpt, const std::string& source) {
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), source + ":recipe");
  const YAML::Node recorded = YAML::Load(ckpt.recipe_yaml());
  if (!(recorded["data"] && recorded["data"]["seed"])) cfg.data.seed = cfg.train.seed;
  return cfg;
}

void warn_if_other_split(const Checkpoint& init, const std::string& source, const TokenStore& store) {
  // mine: this run's split; theirs: the init's.
  auto differ = [&](const std::string& mine, const std::string& theirs) {
    spdlog::warn("init {} was trained on {} but this run holds out the documents of {} ({}): some "
                 "of them may be in the init's training split, so validation would read low; use "
                 "the init's data settings (data.seed, data.val_fraction) or its store",
                 source, theirs, store.path(), mine);
  };
  try {
    // Recorded by training (and carried by prune and the kv kinds): compared directly.
    const std::string recorded = init.state().data_split;
    if (!recorded.empty()) {
      const std::string mine = store.split_signature();
      if (recorded != mine) differ(mine, "the split " + recorded);
      return;
    }
    // Older checkpoints: the store their recipe names, when it is here and the init was trained.
    if (init.state().step == 0) return;
    const std::string theirs = dataset_path(checkpoint_recipe(init, source).data);
    if (!fs::exists(theirs)) return;
    const std::string a = store.split_signature(), b = TokenStore::open(theirs).split_signature();
    if (a != b) differ(a, theirs + " (" + b + ")");
  } catch (const Error& e) {
    spdlog::warn("init {}: its training split could not be compared with this run's ({})", source,
                 e.what());
  }
}

void check_same_split(const std::string& recorded, const TokenStore& store, const std::string& source) {
  if (recorded.empty()) return;  // an older checkpoint, or one trained on its own streams
  std::string mine;
  try {
    mine = store.split_signature();
  } catch (const Error&) {  // an older store without the attributes: nothing to compare
    return;
  }
  CONDENSE_CHECK(mine == recorded, "{} was trained on the split '{}' but {} holds '{}': give the "
                 "store it was trained on (--data, or data.dataset=...; nothing was changed)", source,
                 recorded, store.path(), mine);
}

void check_resume_split(const Checkpoint& ckpt, const std::string& source, const DataConfig& data) {
  DataConfig was;
  try {
    was = checkpoint_recipe(ckpt, source).data;
  } catch (const Error& e) {
    spdlog::warn("{}: its recipe could not be read to compare the split ({})", source, e.what());
    return;
  }
  CONDENSE_CHECK(was.seed == data.seed && was.val_fraction == data.val_fraction &&
                     was.corpus == data.corpus && was.max_documents == data.max_documents,
                 "{} was trained on the split of data.seed {}, data.val_fraction {}, data.corpus {}, "
                 "data.max_documents {}; the recipe now names {}, {}, {}, {}, so the resumed run would "
                 "train on documents it held out (a run from before data.seed drew its split from "
                 "train.seed): resume with data.seed={} data.val_fraction={} (nothing was changed)",
                 source, was.seed, was.val_fraction, was.corpus, was.max_documents, data.seed,
                 data.val_fraction, data.corpus, data.max_documents, was.seed, was.val_fraction);
}

TokenStore open_checkpoint_store(const Checkpoint& ckpt, const std::string& source,
                                 const std::string& data) {
  std::string dataset = data;
  if (dataset.empty()) {
    const RunConfig cfg = checkpoint_recipe(ckpt, source);
    const std::string recorded = ckpt.state().data_split;
    dataset = dataset_path(cfg.data, recorded);
    CONDENSE_CHECK(cfg.data.dataset.empty() || fs::exists(dataset), "{}: no --data given, and the "
                   "token store its recipe names ({}) is not here; pass --data STORE.h5", source,
                   dataset);
    if (!fs::exists(dataset) && cfg.data.tokenizer.empty()) {
      // Building would train a sentencepiece tokenizer of data.vocab_size pieces.
      const Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), source + ":tokenizer");
      CONDENSE_CHECK(!tok.bpe() && tok.vocab_size() == cfg.data.vocab_size,
                     "{}: no --data given, and the token store its recipe names ({}) is not here; "
                     "building it would train another tokenizer than this checkpoint's ({} of {} "
                     "pieces), so pass --data STORE.h5 (made with `condense prepare ... --tokenizer`"
                     " from this model's tokenizer)", source, dataset,
                     tok.bpe() ? "a byte-level BPE" : "a sentencepiece model", tok.vocab_size());
    }
    dataset = resolve_dataset(cfg.data, recorded);
    // The store the recipe names must hold the documents the checkpoint was trained on and
    // held out, or its validation would read training text.
    TokenStore store = TokenStore::open(dataset);
    check_same_split(recorded, store, source);
    store.check_tokenizer(sha256_hex(ckpt.tokenizer_bytes()), source);
    return store;
  }
  TokenStore store = TokenStore::open(dataset);
  store.check_tokenizer(sha256_hex(ckpt.tokenizer_bytes()), source);
  return store;
}

int run_pretrain(const RunConfig& cfg_in, const RunOptions& options) {
  // The model's shape is checked before start_run, which may spend minutes building the token
  // store on first use (the vocabulary comes from the store: any positive stand-in here).
  LlamaConfig shape = cfg_in.model;
  if (shape.vocab_size == 0) shape.vocab_size = 1;
  shape.finalize();
  // The model section has no rope_scaling, qkv_bias, qk_norm or no_rope_layers key: training an
  // init's weights at other RoPE frequencies than they were trained with, without its biases or
  // with RoPE in its NoPE layers or without its sliding window would change the model silently
  // (as would another partial_rotary_factor, which the section has). (A resume reads no init, which
  // may be gone by then: only an init that exists is opened here.)
  std::optional<LlamaConfig> init_config;
  if (!cfg_in.init.empty() && std::filesystem::is_regular_file(cfg_in.init)) {
    init_config = Checkpoint::open(cfg_in.init).config();
    CONDENSE_CHECK(attention_extras(*init_config).empty(), "init {} has {}, which a pretrain recipe's "
                   "model section cannot express; use kind=finetune (its model is the init's)",
                   cfg_in.init, attention_extras(*init_config));
    // The recipe's factor on the init's heads must rotate the init's channels (the factor itself
    // may be written rounded, 0.667 for 0.6666...).
    CONDENSE_CHECK(static_cast<int64_t>(static_cast<double>(init_config->head_size()) *
                                        shape.partial_rotary_factor) == init_config->rotary_dim(),
                   "init {} rotates "
                   "{} of each head's {} channels (partial_rotary_factor {}) but model.partial_rotary_factor "
                   "is {}; set it to the init's", cfg_in.init, init_config->rotary_dim(),
                   init_config->head_size(), init_config->partial_rotary_factor, shape.partial_rotary_factor);
    CONDENSE_CHECK(init_config->sliding_window == 0, "init {} attends within a sliding window of {} "
                   "positions, which a pretrain recipe's model section cannot express; use kind=finetune "
                   "(its model is the init's)", cfg_in.init, init_config->sliding_window);
    CONDENSE_CHECK(init_config->rope_scaling.type.empty(), "init {} uses rope_scaling {}, which a "
                   "pretrain recipe's model section cannot express; use kind=finetune (its model is "
                   "the init's, scaling included)", cfg_in.init,
                   to_hf_json(*init_config)["rope_scaling"].dump());
  }
  CONDENSE_CHECK(cfg_in.data.seq_len <= shape.max_position_embeddings,
                 "data.seq_len ({}) exceeds model.max_position_embeddings ({})", cfg_in.data.seq_len,
                 shape.max_position_embeddings);
  RunSetup run = start_run(cfg_in, options);
  const RunConfig& cfg = run.cfg;
  // Before the model: count everything (CUDA runs read the caching allocator's stats instead).
  if (cfg.memory.meter && run.device.is_cpu()) install_counting_cpu_allocator();
  torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));
  LlamaForCausalLM model(cfg.model);
  if (!cfg.init.empty() && !run.resume) {
    Checkpoint::open(cfg.init).load_model(model);
    spdlog::info("initialized weights from {}", cfg.init);
    // Nor has the model section an eos list: the run's model has the tokenizer's eos alone.
    if (init_config && !init_config->more_eos_token_ids.empty())
      spdlog::warn("init {} ends generation at several ids ({}); this pretrain run's model keeps "
                   "the tokenizer's eos {} alone (kind=finetune keeps the init's list)", cfg.init,
                   to_hf_json(*init_config)["eos_token_id"].dump(), cfg.model.eos_token_id);
  }
  // Built and initialized on the CPU (the same weights for a seed on every device), then moved.
  model->to(run.device);
  spdlog::info("model: {:.2f}M parameters, {} layers, hidden {}, heads {}/{} (q/kv), vocab {}; "
               "{} threads, {}, {}", cfg.model.num_parameters() / 1e6, cfg.model.num_hidden_layers,
               cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.kv_heads(),
               cfg.model.vocab_size, run.threads, device_description(run.device),
               cfg.train.precision);

  // memory: recomputation / offload / compressed activations around the forward, and the loss
  // (full logits or chunked); with the defaults this is exactly causal_lm_loss.
  if (!cfg.train.trainable.empty()) set_trainable(model, cfg.train.trainable, "train.trainable");
  auto memory = std::make_shared<MemoryPolicy>(cfg.memory, model);
  spdlog::info("memory: {}", memory->describe());
  Trainable t;
  t.model = model;
  t.loss = [memory](LlamaForCausalLM& m, const Batch& b) {
    return memory->loss(m, b.inputs, b.targets);
  };
  train_run(run, std::move(t));
  return 0;
}

}  // namespace condense
