#include "recipes/finetune.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "compressors/cskv.h"
#include "compressors/distill.h"
#include "compressors/kv_project.h"
#include "compressors/lora.h"
#include "compressors/masks.h"
#include "compressors/recovery_data.h"
#include "core/error.h"
#include "core/hash.h"
#include "memory/counting_allocator.h"
#include "memory/memory_policy.h"
#include "recipes/run_setup.h"
#include "text/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/lm_loss.h"
#include "trainer/optimizer.h"

namespace condense {
namespace {

// Which model parameters train, by recovery method, unless train.trainable names them.
void select_model_parameters(LlamaForCausalLM& model, const RunConfig& cfg) {
  if (!cfg.train.trainable.empty()) return set_trainable(model, cfg.train.trainable, "train.trainable");
  const RecoveryConfig& rc = cfg.recovery;
  if (rc.method == "full") return;  // everything trains (the masks hold the pruned zeros)
  std::vector<std::string> patterns;
  if (rc.method == "perp") {
    patterns.push_back(R"(.*norm\.weight)");  // Qwen3's q/k norms among them
    // PERP's "highly expressive parameters" are the biases and the norms (Zimmer et al. 2023);
    // Llamas have no biases, Qwen2 its q/k/v ones.
    if (model->config().qkv_bias) patterns.push_back(R"(.*_proj\.bias)");
    if (rc.train_embeddings) {
      patterns.push_back(R"(model\.embed_tokens\.weight)");
      if (!model->config().tie_word_embeddings) patterns.push_back(R"(lm_head\.weight)");
    }
  }
  if (patterns.empty()) {  // lora / kv_project / cskv: only the added modules train
    for (auto& p : model->named_parameters()) p.value().requires_grad_(false);
    return;
  }
  set_trainable(model, patterns, "recovery.method perp");
}

// distill.hidden_layers "s:t" pairs; default: every student layer output against the teacher's
// at the same relative depth.
std::vector<std::pair<int64_t, int64_t>> hidden_pairs(const DistillConfig& d, int64_t student_layers,
                                                      int64_t teacher_layers) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (d.hidden_layers.empty()) {
    for (int64_t i = 1; i <= student_layers; ++i)
      out.emplace_back(i, static_cast<int64_t>(std::llround(double(i) * teacher_layers / student_layers)));
    return out;
  }
  for (const std::string& item : d.hidden_layers) {
    size_t colon = item.find(':');
    try {
      CONDENSE_CHECK(colon != std::string::npos, "");
      out.emplace_back(std::stoll(item.substr(0, colon)), std::stoll(item.substr(colon + 1)));
    } catch (const std::exception&) {
      fail("distill.hidden_layers: '{}' is not a pair s:t of hidden-state indices (0 = embeddings, "
           "i + 1 = output of layer i)", item);
    }
  }
  return out;
}

// The LM-head rows distillation compares: every row when teacher and student have as many (the
// padded rows too, as before), else the shared tokenizer's pieces (two paddings of it).
int64_t distill_rows(const LlamaConfig& teacher, const LlamaConfig& student, const Checkpoint& init,
                     const std::string& teacher_path) {
  if (teacher.vocab_size == student.vocab_size) return student.vocab_size;
  const int64_t pieces =
      Tokenizer::from_serialized(init.tokenizer_bytes(), init.file().path() + ":tokenizer").vocab_size();
  CONDENSE_CHECK(std::min(teacher.vocab_size, student.vocab_size) >= pieces, "distill.teacher {} has "
                 "{} embedding rows and init {} {}, for a tokenizer of {} pieces", teacher_path,
                 teacher.vocab_size, init.file().path(), student.vocab_size, pieces);
  return pieces;
}

// The frozen teacher: the same tokenizer as the student (the init checkpoint, whose tokenizer
// start_run checks against the data), checked by hash; its embedding may be padded to another
// size (Qwen2.5-7B's 152064 rows, 0.5B's 151936, one tokenizer), as long as both cover the
// tokenizer's pieces: KD then runs over those rows (distill_rows).
LlamaForCausalLM load_teacher(const DistillConfig& d, const Checkpoint& student) {
  Checkpoint ckpt = Checkpoint::open(d.teacher);
  std::string teacher_sha = sha256_hex(ckpt.tokenizer_bytes());
  std::string student_sha = sha256_hex(student.tokenizer_bytes());
  CONDENSE_CHECK(teacher_sha == student_sha,
                 "distill.teacher {} uses tokenizer {} but init {} uses {}; teacher and student "
                 "must share one tokenizer", d.teacher, teacher_sha.substr(0, 16),
                 student.file().path(), student_sha.substr(0, 16));
  LlamaForCausalLM teacher(ckpt.config());
  ckpt.load_model(teacher);
  merge_stored_adapters(teacher, ckpt.file());
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  teacher->eval();
  return teacher;
}

// The training windows of recovery.selection (empty: all of them).
std::vector<int64_t> select_windows(const RunSetup& run, LlamaForCausalLM& model,
                                    LlamaForCausalLM& teacher) {
  const RecoveryConfig& rc = run.cfg.recovery;
  if (rc.selection == "all") return {};
  DataSelectionOptions opt;
  opt.method = rc.selection;
  opt.budget = rc.budget;
  opt.candidates = rc.candidates;
  opt.clusters = rc.clusters;
  opt.seed = run.cfg.train.seed;
  LlamaForCausalLM& reference = teacher.is_empty() ? model : teacher;
  DataSelection sel = select_recovery_windows(reference, model, run.store->ids("train"),
                                              run.cfg.data.seq_len, opt);
  spdlog::info("recovery data ({}): {}", rc.selection, sel.describe());
  return sel.windows;
}

int run_recovery(const RunConfig& cfg_in, const RunOptions& options, bool distill) {
  CONDENSE_CHECK(!cfg_in.init.empty(), "kind {} needs init: the checkpoint to recover (e.g. the "
                 "output of `condense prune`)", cfg_in.kind);
  CONDENSE_CHECK(distill || cfg_in.distill.teacher.empty(),
                 "distill.teacher is set but kind is finetune; use kind: distill");
  CONDENSE_CHECK(!distill || !cfg_in.distill.teacher.empty(),
                 "kind distill needs distill.teacher: the checkpoint of the unpruned model");
  // Everything the recipe can get wrong is checked before start_run writes the run directory.
  const std::string& init_path = options.init_weights.empty() ? cfg_in.init : options.init_weights;
  Checkpoint init = Checkpoint::open(init_path);
  const RecoveryConfig& rc = cfg_in.recovery;
  CONDENSE_CHECK(rc.kv_window == 0 || rc.method == "cskv", "recovery.kv_window {} applies to "
                 "recovery.method cskv, not {}", rc.kv_window, rc.method);
  // Before the models: count them (CUDA runs read the caching allocator's statistics).
  if (cfg_in.memory.meter && device_type_name(cfg_in.train.device) == "cpu")
    install_counting_cpu_allocator();
  torch::manual_seed(static_cast<uint64_t>(cfg_in.train.seed));
  LlamaForCausalLM model(init.config());
  init.load_model(model);
  WeightMasks masks = WeightMasks::from_file(init.file());
  masks.apply(model);
  select_model_parameters(model, cfg_in);
  LlamaForCausalLM teacher{nullptr};
  if (distill) teacher = load_teacher(cfg_in.distill, init);
  const int64_t kd_rows =
      distill ? distill_rows(teacher->config(), init.config(), init, cfg_in.distill.teacher) : 0;
  CONDENSE_CHECK(rc.selection != "paser" || distill,
                 "recovery.selection paser scores windows by the teacher-vs-pruned divergence and "
                 "needs distill.teacher (kind distill; distill.kd_ratio=0 trains on cross-entropy alone)");
  std::vector<std::pair<int64_t, int64_t>> pairs;
  if (distill && cfg_in.distill.hidden_loss != "none") {
    const LlamaConfig &sc = model->config(), &tc = teacher->config();
    pairs = hidden_pairs(cfg_in.distill, sc.num_hidden_layers, tc.num_hidden_layers);
    for (const auto& [si, ti] : pairs) {
      CONDENSE_CHECK(si >= 0 && si <= sc.num_hidden_layers && ti >= 0 && ti <= tc.num_hidden_layers,
                     "distill.hidden_layers: pair {}:{} is outside [0, {}] x [0, {}] (0 = embeddings, "
                     "i + 1 = output of layer i)", si, ti, sc.num_hidden_layers, tc.num_hidden_layers);
    }
    CONDENSE_CHECK(sc.hidden_size == tc.hidden_size,
                   "distill.hidden_loss {} compares hidden states, but the student's width is {} and "
                   "the teacher's {}; use logit distillation alone (distill.hidden_loss=none)",
                   cfg_in.distill.hidden_loss, sc.hidden_size, tc.hidden_size);
  }
  std::shared_ptr<KVProjection> projection;
  int64_t kv_rank = 0;
  if (rc.method == "kv_project") {
    projection = KVProjection::from_file(init.file(), init.config());
    CONDENSE_CHECK(projection, "recovery.method kv_project trains the KV-cache projections of init, "
                   "but {} has none; make them with `condense prune CKPT --method kv-project "
                   "--out OUT.h5` and use OUT.h5 as init", init_path);
    const int64_t d = init.config().head_size();
    kv_rank = rc.kv_rank > 0 ? rc.kv_rank : std::max<int64_t>(1, d / 2);
    CONDENSE_CHECK(kv_rank <= d, "recovery.kv_rank {}: valid is 0..{} (head_dim; 0: head_dim / 2)",
                   rc.kv_rank, d);
  }
  std::shared_ptr<LowRankKV> low_rank;
  if (rc.method == "cskv") {
    low_rank = LowRankKV::from_file(init.file(), init.config());
    CONDENSE_CHECK(low_rank, "recovery.method cskv trains the low-rank KV factors of init, but {} "
                   "has none; make them with `condense prune CKPT --method cskv --key-rank R "
                   "--out OUT.h5` and use OUT.h5 as init", init_path);
  }
  std::shared_ptr<LoraAdapters> adapters;
  if (rc.method == "lora" || rc.method == "perp") {
    LoraSpec spec{rc.method == "lora" ? "lora" : rc.adapter, rc.rank, rc.alpha};
    // Plain LoRA's merge W + s B A would fill the pruned zeros: on a masked model its adapters
    // are masked (MaskLoRA without PERP's norms), so masks hold through export whatever trains.
    if (spec.kind == "lora" && !masks.empty()) spec.kind = "masklora";
    adapters = std::make_shared<LoraAdapters>(model, adapter_targets(model, rc, masks), spec, &masks);
  }

  RunSetup run = start_run(cfg_in, options, [&](RunSetup& r) {
    // The model is the init checkpoint's (a pruned model has its own sizes).
    r.cfg.model = init.config();
  });
  const RunConfig& cfg = run.cfg;
  // Built on the CPU before start_run (so a bad recipe changes nothing on disk), moved now that
  // the rank's device is known.
  if (!run.device.is_cpu()) {
    model->to(run.device);
    if (distill) teacher->to(run.device);
    masks.to(run.device);
    if (adapters) adapters->to(run.device);
  }
  if (projection) {
    projection->to(run.device, model->lm_head_weight().scalar_type());
    projection->make_trainable();
  }
  if (low_rank) {
    low_rank->to(run.device, model->lm_head_weight().scalar_type());
    low_rank->make_trainable();
    low_rank->set_window(rc.kv_window);
  }
  spdlog::info("initialized from {}: {:.2f}M parameters, {} layers, hidden {}; {}", init_path,
               cfg.model.num_parameters() / 1e6, cfg.model.num_hidden_layers,
               cfg.model.hidden_size, masks.describe());

  Trainable t;
  t.model = model;
  if (adapters) {
    const LoraSpec& spec = adapters->spec();
    model->set_projection_hook(adapters);
    t.modules = adapters->parameters();
    t.state = adapters->state();
    spdlog::info("recovery {}: {} adapters of rank {} (alpha {}), {:.4f}M parameters", rc.method,
                 spec.kind, spec.rank, spec.alpha, adapters->num_parameters() / 1e6);
  }
  if (projection) {
    model->set_kv_hook(projection);
    t.modules = projection->parameters();
    for (auto& [name, u] : projection->state()) t.state[name] = u;
    int64_t n = 0;
    for (const auto& p : t.modules) n += p.second.numel();
    spdlog::info("recovery kv_project: orthogonal KV projections (Cayley generators, {:.4f}M "
                 "parameters), ranks sampled per head from the nested set; validation at rank {}",
                 n / 1e6, kv_rank);
  }
  if (low_rank) {
    model->set_kv_hook(low_rank);
    t.modules = low_rank->parameters();
    int64_t n = 0;
    for (const auto& p : t.modules) n += p.second.numel();
    spdlog::info("recovery cskv: low-rank K/V factors (key rank {}, value rank {}; {:.4f}M "
                 "parameters) trained on {}; validation reports the compressed model's loss{}",
                 low_rank->key_rank(), low_rank->value_rank(), n / 1e6,
                 distill ? "the distillation loss through the frozen model"
                         : "layer-wise reconstruction of keys and values",
                 rc.kv_window > 0 ? fmt::format(" with a recent window of {} positions (use "
                                                "--kv-window {} at inference)", rc.kv_window,
                                                rc.kv_window)
                                  : "");
  }
  for (auto& [name, m] : masks.entries()) t.state[name] = m;
  if (!masks.empty()) {
    t.before_step = [masks, model]() mutable { masks.mask_gradients(model); };
    t.after_step = [masks, model](Optimizer& opt) mutable {
      masks.apply(model);
      masks.mask_state(opt.state());
    };
  }

  auto memory = std::make_shared<MemoryPolicy>(cfg.memory, model);
  spdlog::info("memory: {}", memory->describe());
  t.eval_loss = [](LlamaForCausalLM& m, const Batch& b) { return causal_lm_loss(m, b); };
  if (!distill) {
    t.loss = [memory](LlamaForCausalLM& m, const Batch& b) {
      return memory->loss(m, b.inputs, b.targets);
    };
  } else {
    const DistillConfig& d = cfg.distill;
    KdLossOptions kd;
    kd.temperature = d.temperature;
    kd.temperature_squared = d.temperature_squared;
    kd.top_k = d.top_k;
    kd.kd_ratio = d.kd_ratio;
    kd.token_chunk = d.chunk;
    kd.softcap = model->config().final_logit_softcapping;
    kd.teacher_softcap = teacher->config().final_logit_softcapping;
    const bool hidden = !pairs.empty();
    spdlog::info("distilling from {} ({:.2f}M parameters): KD ratio {}, temperature {}{}{}", d.teacher,
                 teacher->config().num_parameters() / 1e6, d.kd_ratio, d.temperature,
                 d.top_k > 0 ? fmt::format(", teacher top-{}", d.top_k) : "",
                 hidden ? fmt::format(", {} hidden loss on {} layer pairs (weight {})", d.hidden_loss,
                                      pairs.size(), d.hidden_weight)
                        : "");
    t.loss = [memory, teacher, kd, pairs, d, kd_rows](LlamaForCausalLM& m, const Batch& b) mutable {
      std::vector<at::Tensor> s_states, t_states;
      DecoderInput s_in{b.inputs};
      if (!pairs.empty()) s_in.hidden_states = &s_states;
      at::Tensor s_hidden = memory->hidden(m, s_in);
      at::Tensor t_hidden;
      {
        at::NoGradGuard no_grad;
        DecoderInput t_in{b.inputs};
        if (!pairs.empty()) t_in.hidden_states = &t_states;
        t_hidden = teacher->hidden(t_in);
      }
      int64_t h = s_hidden.size(-1);
      at::Tensor loss = chunked_kd_loss(s_hidden.reshape({-1, h}), m->lm_head_weight().narrow(0, 0, kd_rows),
                                        t_hidden.reshape({-1, t_hidden.size(-1)}),
                                        teacher->lm_head_weight().narrow(0, 0, kd_rows),
                                        b.targets.reshape({-1}), kd);
      if (!pairs.empty())
        loss = loss + hidden_state_loss(s_states, t_states, pairs, d.hidden_loss) * d.hidden_weight;
      return loss;
    };
  }
  if (projection) {
    // MatryoshkaKV: every step trains a fresh draw of per-head ranks (the process's generator,
    // which checkpoints save, so a resumed run draws what the uninterrupted one would), and
    // validation reports one fixed rank.
    LossFn inner = t.loss;
    t.loss = [projection, inner](LlamaForCausalLM& m, const Batch& b) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      projection->sample_ranks(gen);
      return inner(m, b);
    };
    t.eval_loss = [projection, kv_rank](LlamaForCausalLM& m, const Batch& b) {
      projection->set_rank(kv_rank, kv_rank, "recovery.kv_rank");
      return causal_lm_loss(m, b);
    };
  }
  if (low_rank && !distill) {
    // CSKV's objective: a forward without gradients through the compressed model records every
    // layer's attention input; each layer's factors then learn to rebuild that layer's keys and
    // values from it (compressors/cskv.h). No logits, no backward through the model.
    t.loss = [low_rank](LlamaForCausalLM& m, const Batch& b) {
      {
        at::NoGradGuard no_grad;
        low_rank->record_inputs(true);
        m->hidden({b.inputs});
      }
      at::Tensor loss = low_rank->reconstruction_loss(m);
      low_rank->record_inputs(false);
      return loss;
    };
  }
  train_run(run, std::move(t), select_windows(run, model, teacher));
  return 0;
}

}  // namespace

int run_finetune(const RunConfig& cfg, const RunOptions& options) {
  return run_recovery(cfg, options, /*distill=*/false);
}

int run_distill(const RunConfig& cfg, const RunOptions& options) {
  return run_recovery(cfg, options, /*distill=*/true);
}

}  // namespace condense
