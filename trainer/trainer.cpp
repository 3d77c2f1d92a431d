#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <set>
#include <sstream>

#include "comm/local_update.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/shape.h"
#include "memory/counting_allocator.h"
#include "memory/memory_meter.h"
#include "trainer/device.h"
#include "trainer/onebit_adam.h"
#include "trainer/optimizer.h"
#include "trainer/grad_clip.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_logger.h"
#include "trainer/stop_signal.h"
#include "trainer/token_weights.h"

namespace condense {
namespace {

// The CPU generator state of every rank ("rng/torch_cpu_rank<r>"), gathered to rank 0 (empty
// elsewhere). Collective when data parallel.
// On CUDA also the device generator's ("rng/torch_cuda_rank<r>").
std::map<std::string, at::Tensor> gather_rng_states(Communicator* comm, c10::Device device) {
  at::Tensor mine;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    mine = gen.get_state();
  }
  std::map<std::string, at::Tensor> out;
  auto gather = [&](const at::Tensor& t, const std::string& prefix) {
    std::vector<at::Tensor> all = comm ? comm->gather_v(t, 0) : std::vector<at::Tensor>{t};
    for (size_t r = 0; r < all.size(); ++r) out[prefix + std::to_string(r)] = all[r];
  };
  gather(mine, "rng/torch_cpu_rank");
  // CPU tensors both (NCCL stages them through the device; comm/nccl_communicator.cpp).
  if (device.is_cuda()) gather(cuda_rng_state(device), "rng/torch_cuda_rank");
  return out;
}

// The steps at which this rank's loss is made NaN for the non-finite tests
// (CONDENSE_TEST_NAN_RANK, CONDENSE_TEST_NAN_STEPS="3,4"); empty unless this rank is named.
std::set<int64_t> test_nan_steps(int rank) {
  std::set<int64_t> steps;
  const char* r = std::getenv("CONDENSE_TEST_NAN_RANK");
  const char* list = std::getenv("CONDENSE_TEST_NAN_STEPS");
  if (!r || !list || std::atoi(r) != rank) return steps;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) steps.insert(std::stoll(item));
  return steps;
}

// Which ranks saw what, given this rank's health (1: non-finite loss, 2: non-finite gradients,
// 3: both), as "non-finite loss on rank(s) 1; non-finite gradients on rank(s) 0, 1". Collective
// (one all-reduce of world doubles, only on a step some rank found non-finite).
std::string nonfinite_ranks(Communicator* comm, double health) {
  const int world = comm ? comm->size() : 1;
  std::vector<double> all(world, 0.0);
  all[comm ? comm->rank() : 0] = health;
  if (world > 1) {
    all = all_reduce_mean(*comm, all);
    for (double& h : all) h *= world;
  }
  std::vector<int> loss, grads;
  for (int r = 0; r < world; ++r) {
    const long h = std::lround(all[r]);
    if (h & 1) loss.push_back(r);
    if (h & 2) grads.push_back(r);
  }
  std::string out;
  if (!loss.empty()) out = fmt::format("non-finite loss on rank(s) {}", fmt::join(loss, ", "));
  if (!grads.empty())
    out += fmt::format("{}non-finite gradients on rank(s) {}", out.empty() ? "" : "; ",
                       fmt::join(grads, ", "));
  return out;
}

Batch on_device(Batch b, c10::Device device) {
  if (device.is_cpu()) return b;
  return {b.inputs.to(device, /*non_blocking=*/true), b.targets.to(device, /*non_blocking=*/true)};
}

// Error-control and codec state of every rank ("comm/compression_rank<r>") and the compressor's
// step counter, gathered to rank 0 for its checkpoint (empty elsewhere). Collective.
std::map<std::string, at::Tensor> gather_compression_state(Communicator& comm,
                                                           GradientCompression& compression) {
  std::vector<at::Tensor> all = comm.gather_v(compression.state(), 0);
  std::map<std::string, at::Tensor> out;
  for (size_t r = 0; r < all.size(); ++r) out["comm/compression_rank" + std::to_string(r)] = all[r];
  out["comm/compression_step"] = at::full({1}, compression.step(), at::kLong);
  return out;
}

void restore_compression(const Checkpoint& ckpt, GradientCompression& compression, int rank,
                         int world) {
  const H5File& f = ckpt.file();
  const std::string name = "comm/compression_rank" + std::to_string(rank);
  if (!f.has("comm/compression_step")) {
    spdlog::warn("{} has no gradient-compression state (written without comm.compression?): "
                 "error control starts from zero, after {} dense warm-up steps",
                 f.path(), compression.config().warmup_steps);
    return;
  }
  CONDENSE_CHECK(f.has(name), "{}: no '{}': the checkpoint was written by fewer ranks; resume "
                 "with the same number of ranks to keep the gradient-compression state", f.path(), name);
  CONDENSE_CHECK(!f.has("comm/compression_rank" + std::to_string(world)),
                 "{}: the checkpoint was written by more than {} ranks; resume with the same number "
                 "of ranks to keep the gradient-compression state", f.path(), world);
  compression.load_state(f.read_tensor(name), f.read_tensor("comm/compression_step").item<int64_t>(),
                         f.path() + ":" + name);
}

// Local-update (diloco) state of every rank, gathered to rank 0 for its checkpoint (empty
// elsewhere): the rank's local weights (the trained tensors, flat, in order) and inner
// optimizer state, which differ between exchanges, its error-control state, and the shared
// anchor and outer momentum. Collective.
std::map<std::string, at::Tensor> gather_local_update_state(
    Communicator& comm, LocalUpdate& local, const std::vector<std::pair<std::string, at::Tensor>>& params,
    const Optimizer& optimizer) {
  std::map<std::string, at::Tensor> out = gather_compression_state(comm, local.compression());
  if (comm.rank() == 0) out.merge(local.shared_state());
  auto gather = [&](const at::Tensor& t, const std::string& name) {
    std::vector<at::Tensor> all = comm.gather_v(t.detach().reshape({-1}).contiguous(), 0);
    for (size_t r = 0; r < all.size(); ++r)
      out[fmt::format("local_update/rank{}/{}", r, name)] = all[r].view(t.sizes());
  };
  std::vector<at::Tensor> flat;
  for (const auto& p : params) flat.push_back(p.second.detach().reshape({-1}));
  gather(at::cat(flat), "weights");
  for (const auto& [key, t] : optimizer.state()) gather(t, "optimizer/" + key);  // same keys everywhere
  return out;
}

void restore_local_update(const Checkpoint& ckpt, LocalUpdate& local,
                          const std::vector<std::pair<std::string, at::Tensor>>& params,
                          Optimizer& optimizer, int rank, int world) {
  const H5File& f = ckpt.file();
  if (!f.has("local_update/anchor0")) {
    spdlog::warn("{} was not written by a comm.sync.mode=diloco run: every rank starts from its "
                 "weights with zero outer momentum and error buffers", f.path());
    return;
  }
  const std::string mine = fmt::format("local_update/rank{}/", rank);
  CONDENSE_CHECK(f.has(mine + "weights"), "{}: no '{}weights': the checkpoint was written by fewer "
                 "ranks; resume a diloco run with the same number of ranks", f.path(), mine);
  CONDENSE_CHECK(!f.has(fmt::format("local_update/rank{}/weights", world)), "{}: the checkpoint was "
                 "written by more than {} ranks; resume a diloco run with the same number of ranks",
                 f.path(), world);
  std::map<std::string, at::Tensor> shared;
  for (const auto& [name, t] : local.shared_state())
    if (f.has(name)) shared[name] = f.read_tensor(name);
  local.load_shared_state(shared, f.path());
  at::NoGradGuard no_grad;
  at::Tensor flat = f.read_tensor(mine + "weights");
  int64_t total = 0;
  for (const auto& p : params) total += p.second.numel();
  CONDENSE_CHECK(flat.numel() == total, "{}: '{}weights' has {} elements, the trained tensors {}",
                 f.path(), mine, flat.numel(), total);
  int64_t offset = 0;
  for (const auto& [name, p] : params) {
    at::Tensor(p).detach().copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  std::map<std::string, at::Tensor> state;
  for (const auto& [key, t] : optimizer.state()) {
    const std::string name = mine + "optimizer/" + key;
    CONDENSE_CHECK(f.has(name), "{}: no '{}' (was the run's train.optimizer another?)", f.path(), name);
    state[key] = f.read_tensor(name);
  }
  optimizer.load_state(state);
  restore_compression(ckpt, local.compression(), rank, world);
}

// The trainable's modules and state from a checkpoint, by name and shape.
void restore_trainable(const Checkpoint& ckpt, Trainable& t) {
  at::NoGradGuard no_grad;
  const H5File& f = ckpt.file();
  auto take = [&](const std::string& name, at::Tensor& dst, const char* what) {
    CONDENSE_CHECK(f.has(name), "{}: missing {} '{}' (was it written by another recipe?)", f.path(),
                   what, name);
    at::Tensor src = f.read_tensor(name);
    CONDENSE_CHECK(src.sizes() == dst.sizes(), "{}: {} '{}' has shape {}, expected {}", f.path(),
                   what, name, shape_str(src.sizes()), shape_str(dst.sizes()));
    dst.copy_(src);
  };
  for (auto& [name, p] : t.modules) take(name, p, "module parameter");
  for (auto& [name, s] : t.state) take(name, s, "state tensor");
}

}  // namespace

Trainer::Trainer(TrainerSetup setup, Trainable trainable, BatchLoader loader,
                 std::vector<Batch> validation)
    : setup_(std::move(setup)),
      t_(std::move(trainable)),
      model_(t_.model),
      loader_(std::move(loader)),
      validation_(std::move(validation)) {
  CONDENSE_CHECK(t_.loss, "a Trainable needs a loss");
  if (!t_.eval_loss) t_.eval_loss = t_.loss;
  if (!t_.eval_tokens) t_.eval_tokens = t_.tokens;
  for (Batch& b : validation_) b = on_device(std::move(b), setup_.device);
}

double Trainer::validate() {
  if (validation_.empty()) return std::nan("");
  at::NoGradGuard no_grad;
  model_->eval();
  double total = 0, tokens = 0;
  for (const Batch& b : validation_) {
    PrecisionScope precision(setup_.train.precision, setup_.device);
    const double loss = t_.eval_loss(model_, b).item<double>();
    const double n = t_.eval_tokens ? static_cast<double>(t_.eval_tokens(b)) : 1.0;
    total += loss * n;  // with eval_tokens: the batch's summed loss
    tokens += n;
  }
  model_->train();
  if (t_.eval_tokens && setup_.comm) {
    // Token-weighted over all ranks' batches: the sums and counts, then one division.
    const std::vector<double> both = all_reduce_mean(*setup_.comm, {total, tokens});
    return both[0] / both[1];
  }
  double mean = total / tokens;
  // Every rank holds the same number of validation batches (validation_batches shards evenly).
  return setup_.comm ? all_reduce_mean(*setup_.comm, {mean})[0] : mean;
}

TrainResult Trainer::run(const std::optional<std::string>& resume_from) {
  const TrainConfig& tc = setup_.train;
  // Only what trains reaches the optimizer, the gradient buckets and the clip.
  std::vector<std::pair<std::string, at::Tensor>> params = trained_parameters(t_);
  CONDENSE_CHECK(!params.empty(), "nothing to train: every parameter is frozen and no module was added");
  std::vector<at::Tensor> trainable;
  for (auto& p : params) trainable.push_back(p.second);
  // comm.sync.mode=onebit_adam / zero_one_adam: AdamW whose momentum, not the gradient, is
  // exchanged between its variance steps (trainer/onebit_adam.h); gradients then stay local.
  OneBitAdam* onebit = nullptr;
  std::unique_ptr<Optimizer> optimizer_ptr;
  const SyncConfig& sync_mode = setup_.local_update;
  if (sync_mode.frozen_variance()) {
    CONDENSE_CHECK(tc.optimizer == "adamw", "comm.sync.mode={} is AdamW with its second moment "
                   "frozen; train.optimizer must be adamw, got '{}'", sync_mode.mode, tc.optimizer);
    CONDENSE_CHECK(setup_.comm, "comm.sync.mode={} needs a communicator", sync_mode.mode);
    VarianceSchedule variance{sync_mode.freeze_steps,
                              sync_mode.mode == "zero_one_adam" ? sync_mode.var_update_scaler : 0};
    auto o = std::make_unique<OneBitAdam>(
        params, AdamWOptions{tc.beta1, tc.beta2, tc.eps, tc.weight_decay}, variance,
        *setup_.comm, setup_.sync.compression, setup_.sync.bucket_cap_mb);
    onebit = o.get();
    optimizer_ptr = std::move(o);
  } else {
    optimizer_ptr = make_optimizer(tc, params);
  }
  Optimizer& optimizer = *optimizer_ptr;
  LrSchedule schedule{tc.lr, tc.min_lr, tc.warmup_steps, tc.steps};
  CheckpointManager checkpoints(setup_.checkpoint.dir, setup_.checkpoint.keep);

  TrainingState state;
  TrainResult result;
  std::optional<Checkpoint> resumed;
  if (resume_from) {
    resumed.emplace(Checkpoint::open(*resume_from));
    Checkpoint& ckpt = *resumed;
    ckpt.load_model(model_);
    restore_trainable(ckpt, t_);
    ckpt.load_optimizer(optimizer);
    const int rank = setup_.comm ? setup_.comm->rank() : 0;
    ckpt.restore_rng(rank);
    const std::string cuda_rng = "rng/torch_cuda_rank" + std::to_string(rank);
    if (setup_.device.is_cuda() && ckpt.file().has(cuda_rng))
      set_cuda_rng_state(setup_.device, ckpt.file().read_tensor(cuda_rng));
    state = ckpt.state();
    loader_.restore(state.cursor);
    result.checkpoint = *resume_from;
    spdlog::info("resumed from {} at step {} ({} tokens seen)", *resume_from, state.step,
                 state.tokens_seen);
    result.step = state.step;  // a run resumed at train.steps trains nothing and reports that
    result.train_loss = std::nan("");
  }

  Communicator* comm = setup_.comm;
  const int world = comm ? comm->size() : 1;
  state.world_size = world;  // recorded in every checkpoint (a resume needs as many ranks)
  state.data_split = setup_.data_split;
  const bool rank0 = !comm || comm->rank() == 0;
  const bool diloco = setup_.local_update.local_update();
  CONDENSE_CHECK(!diloco || comm, "comm.sync.mode=diloco needs a communicator");
  std::unique_ptr<GradientSync> sync;
  std::unique_ptr<LocalUpdate> local;
  if (world > 1 || diloco) {
    // Every rank starts from rank 0's weights (they agree already when all ranks built the model
    // from the same seed or loaded the same checkpoint; this makes it a guarantee). Frozen
    // parameters were loaded from the same checkpoint and never change: not broadcast.
    at::NoGradGuard no_grad;
    // Fault injection (tests/python/test_mpi_lifecycle.py): the rank named by
    // CONDENSE_TEST_PERTURB_RANK starts from other weights, which the broadcast must overwrite.
    const char* perturb = std::getenv("CONDENSE_TEST_PERTURB_RANK");
    for (auto& [name, p] : params) {
      at::Tensor t = p.detach();
      if (perturb && std::atoi(perturb) == comm->rank()) t.add_(0.5);
      if (world > 1) comm->broadcast(t, 0);
    }
    if (diloco) {
      // The checkpoint's weights are the anchor; each rank's own weights come back below.
      local = std::make_unique<LocalUpdate>(*comm, params, setup_.local_update,
                                            setup_.sync.compression, setup_.sync.bucket_cap_mb);
      if (resumed) restore_local_update(*resumed, *local, params, optimizer, comm->rank(), world);
    } else {
      GradSyncConfig gradients = setup_.sync;
      if (onebit) gradients.compression = CompressionConfig{};  // comm.compression is the momentum's
      sync = std::make_unique<GradientSync>(*comm, params, gradients);
      if (rank0)
        spdlog::info("gradient sync: {} buckets (cap {} MB), exchanged {}", sync->buckets().size(),
                     gradients.bucket_cap_mb,
                     gradients.overlap ? "while backward runs" : "after backward (comm.overlap=false)");
    }
    if (sync && sync->compression() && resumed)
      restore_compression(*resumed, *sync->compression(), comm->rank(), world);
    if (onebit && resumed) restore_compression(*resumed, onebit->compression(), comm->rank(), world);
    const std::string& ec = setup_.sync.compression.error_control;
    if (!diloco && !onebit && tc.optimizer == "adamw" && (ec == "ef21" || ec == "econtrol") && rank0)
      spdlog::warn("comm.compression.error_control={} with AdamW: the exchanged estimate keeps "
                   "stale coordinates, which AdamW applies at full normalized size; measured worse "
                   "than ef on the quickstart model and divergent with econtrol eta 0.2 (README "
                   "\"Compressed communication\"). ef, or train.optimizer=sgd, is the safer pairing",
                   ec);
  }
  if (setup_.before_writing) setup_.before_writing();
  MetricsLogger metrics(setup_.out_dir, /*enabled=*/rank0, state.step);
  std::optional<Progress> progress;
  if (rank0) progress.emplace(tc.steps, state.step, tc.log_every);
  auto message = [&](const std::string& line) {
    if (progress) progress->message(line);
  };
  // Rank 0 alone looks for the STOP file: the step's collective below tells the others.
  StopSignal stop(rank0 ? setup_.out_dir + "/STOP" : "");
  model_->train();
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  // Local update: the step that ended the last round (for the byte ratio per covered step).
  const int64_t exchange_every = setup_.local_update.inner_steps / setup_.local_update.fragments;
  int64_t last_exchange_step = state.step - (local ? state.step % exchange_every : 0);

  auto save = [&] {
    std::map<std::string, at::Tensor> extra = gather_rng_states(comm, setup_.device);
    for (const auto& [name, p] : t_.modules) extra[name] = p.detach();
    for (const auto& [name, st] : t_.state) extra[name] = st;
    if (sync && sync->compression()) extra.merge(gather_compression_state(*comm, *sync->compression()));
    if (onebit) extra.merge(gather_compression_state(*comm, onebit->compression()));
    if (local) extra.merge(gather_local_update_state(*comm, *local, params, optimizer));
    if (rank0) {
      // The model in a checkpoint is the global one: in the middle of a diloco round, the anchor.
      if (local) local->swap_anchor();
      result.checkpoint = checkpoints.save(model_, &optimizer, state, setup_.recipe_yaml,
                                           setup_.tokenizer_bytes, extra);
      if (local) local->swap_anchor();
      message(fmt::format("checkpoint {}", result.checkpoint));
    }
  };

  // Fault injection for the failure tests (tests/python/test_data_parallel.py): the rank named
  // by CONDENSE_TEST_FAIL_RANK throws at step CONDENSE_TEST_FAIL_STEP.
  const char* fail_rank = std::getenv("CONDENSE_TEST_FAIL_RANK");
  const char* fail_step = std::getenv("CONDENSE_TEST_FAIL_STEP");
  // ... the rank named by CONDENSE_TEST_STALL_RANK stops itself (SIGSTOP) at the start of step
  // CONDENSE_TEST_STALL_STEP (tests/python/test_watchdog.py) ...
  const char* stall_rank = std::getenv("CONDENSE_TEST_STALL_RANK");
  const char* stall_step = std::getenv("CONDENSE_TEST_STALL_STEP");
  const int my_rank = comm ? comm->rank() : 0;
  // ... and for the non-finite tests: the rank named by CONDENSE_TEST_NAN_RANK gets a NaN loss
  // (so NaN gradients) at each step listed in CONDENSE_TEST_NAN_STEPS (comma-separated).
  const std::set<int64_t> nan_steps = test_nan_steps(my_rank);
  int64_t consecutive_skips = 0;

  // Per-phase peak tensor bytes in metrics (memory.meter; memory/memory_meter.h): on CPU when
  // the recipe installed the counting allocator, on CUDA from the caching allocator's stats.
  std::optional<MemoryMeter> meter;
  if (setup_.device.is_cuda() ? setup_.memory_meter : counting_cpu_allocator_installed())
    meter.emplace(setup_.device);

  while (state.step < tc.steps) {
    if (fail_rank && fail_step && std::atoi(fail_rank) == my_rank &&
        std::atoll(fail_step) == state.step + 1)
      fail("injected failure at step {} (CONDENSE_TEST_FAIL_RANK={})", state.step + 1, fail_rank);
    if (stall_rank && stall_step && std::atoi(stall_rank) == my_rank &&
        std::atoll(stall_step) == state.step + 1)
      std::raise(SIGSTOP);  // until mpirun ends the job (the watchdog test)
    auto t0 = clock::now();
    double lr = schedule.at(state.step);
    // 1-bit / 0-1 Adam's momentum steps exchange the momentum inside optimizer.step() instead.
    const bool momentum_step = onebit && onebit->compressed(state.step + 1);
    const bool exchange_gradients = !momentum_step;
    double loss_sum = 0;
    std::vector<Batch> micro_batches;
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro)
      micro_batches.push_back(on_device(loader_.next(), setup_.device));
    // Micro-batches weigh alike (1 / grad_accum) unless the loss counts tokens (token_weights.h).
    std::optional<TokenWeights> by_tokens;
    if (t_.tokens)
      by_tokens = token_weights(micro_batches, t_.tokens,
                                sync && exchange_gradients && world > 1 ? comm : nullptr);
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      Batch& batch = micro_batches[micro];
      if (meter) meter->begin("forward");
      at::Tensor loss;
      {
        PrecisionScope precision(tc.precision, setup_.device);
        loss = t_.loss(model_, batch);
      }
      if (meter) meter->begin("backward");
      if (sync) sync->begin_backward(micro == tc.grad_accum - 1 && exchange_gradients);
      if (nan_steps.count(state.step + 1)) loss = loss * std::nan("");
      if (by_tokens) {
        (loss * by_tokens->backward[micro]).backward();
        loss_sum += loss.item<double>() * by_tokens->report[micro];
      } else {
        (loss / static_cast<double>(tc.grad_accum)).backward();
        loss_sum += loss.item<double>();
      }
    }
    double loss = by_tokens ? loss_sum : loss_sum / tc.grad_accum;
    const bool my_loss_finite = std::isfinite(loss);
    std::array<double, 3> comm_seconds{};  // compress, exchange, decompress: mean over ranks
    bool stop_now = stop.requested();
    if (sync && exchange_gradients) sync->finish();
    if (t_.before_step) t_.before_step();
    // The gradients this rank is about to apply: after the exchange in data parallel (the same
    // on every rank), its own in local-update inner steps and 1-bit Adam's momentum steps.
    at::Tensor norm = total_grad_norm(trainable);
    double grad_norm = norm.item<double>();
    // Health of this step on this rank: 1 for a non-finite loss, 2 for non-finite gradients.
    const double health = (my_loss_finite ? 0 : 1) + (std::isfinite(grad_norm) ? 0 : 2);
    double unhealthy = health;  // > 0 when some rank's step is non-finite
    // The metrics' loss over ranks: with t_.tokens weighted by each rank's tokens (the mean of
    // loss x tokens over the mean of tokens), else a plain mean (weight 1: the same bits).
    const double weight = by_tokens ? by_tokens->tokens : 1.0;
    if (sync && exchange_gradients) {
      // One small collective per step: the mean loss for metrics, whether any rank was asked
      // to stop (so that all ranks stop after the same step), and whether any rank's loss or
      // gradients are non-finite (so that all ranks drop or stop at the same step).
      const ExchangeStats& x = sync->last_step().exchange;
      std::vector<double> r = all_reduce_mean(*comm, {loss * weight, stop_now ? 1.0 : 0.0, health,
                                                      x.compress_s, x.exchange_s, x.decompress_s, weight});
      loss = r[0] / r[6];
      stop_now = r[1] > 0;
      unhealthy = r[2];
      comm_seconds = {r[3], r[4], r[5]};
    } else if ((local || onebit) && world > 1) {
      // The same small collective (not metered) in local-update training and on 1-bit Adam's
      // momentum steps: their other exchanges come after the optimizer step.
      std::vector<double> r = all_reduce_mean(*comm, {loss * weight, stop_now ? 1.0 : 0.0, health, weight});
      loss = r[0] / r[3];
      stop_now = r[1] > 0;
      unhealthy = r[2];
    }
    const bool skip = unhealthy > 0;
    if (skip) {
      const std::string where = nonfinite_ranks(comm, health);
      CONDENSE_CHECK(tc.nonfinite == "skip",
                     "training diverged at step {} (lr {:.3e}): {}; lower train.lr or raise "
                     "train.warmup_steps, or set train.nonfinite: skip to drop such steps",
                     state.step + 1, lr, where);
      ++consecutive_skips;
      CONDENSE_CHECK(consecutive_skips <= tc.max_consecutive_skips,
                     "training diverged: {} consecutive steps skipped up to step {} (train."
                     "max_consecutive_skips is {}); the last: {}", consecutive_skips,
                     state.step + 1, tc.max_consecutive_skips, where);
      // Nothing of this step reaches the weights or the optimizer; error-feedback residuals
      // (and PowerSGD's Q) restart on every rank, since the exchange may have left the
      // non-finite values in them. 1-bit Adam exchanges inside optimizer.step(): not reached.
      optimizer.zero_grad();
      if (sync && sync->compression()) sync->compression()->reset_state();
      message(fmt::format("step {} skipped ({} in a row): {}", state.step + 1, consecutive_skips,
                          where));
    } else {
      consecutive_skips = 0;
      clip_grads(trainable, norm, tc.grad_clip);
      if (meter) meter->begin("optimizer");
      optimizer.step(lr);
      optimizer.zero_grad();
      if (t_.after_step) t_.after_step(optimizer);
      if (meter) meter->end();
    }
    if (momentum_step && !skip) {
      const ExchangeStats& x = onebit->compression().stats();
      std::vector<double> r = world > 1
          ? all_reduce_mean(*comm, {x.compress_s, x.exchange_s, x.decompress_s})
          : std::vector<double>{x.compress_s, x.exchange_s, x.decompress_s};
      comm_seconds = {r[0], r[1], r[2]};
    }
    bool exchanged = false;
    const std::vector<int64_t> due = local ? local->fragments_due(state.step + 1, tc.steps)
                                           : std::vector<int64_t>{};
    if (!due.empty()) {
      local->outer_step(due);
      exchanged = true;
      const ExchangeStats& x = local->last_stats();
      std::vector<double> r = world > 1
          ? all_reduce_mean(*comm, {x.compress_s, x.exchange_s, x.decompress_s})
          : std::vector<double>{x.compress_s, x.exchange_s, x.decompress_s};
      comm_seconds = {r[0], r[1], r[2]};
    }

    state.step += 1;
    int64_t tokens = setup_.tokens_per_micro_batch * tc.grad_accum * world;
    state.tokens_seen += tokens;
    state.cursor = loader_.cursor();
    double dt = std::chrono::duration<double>(clock::now() - t0).count();
    double tokens_per_s = tokens / dt;
    double elapsed = std::chrono::duration<double>(clock::now() - start).count();
    result.step = state.step;
    result.train_loss = loss;
    std::vector<std::pair<std::string, double>> values = {
        {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_s},
        {"tokens_seen", double(state.tokens_seen)}, {"elapsed_s", elapsed}};
    if (skip) values.emplace_back("skipped", 1.0);
    if (local) {
      // This step's exchange (zeros on inner steps); comm_ratio compares the exchange with a
      // dense fp32 all-reduce of the whole model on each of the steps since the last exchange
      // (with fragments, an exchange of 1/P of the model covers H/P steps).
      const ExchangeStats& x = local->last_stats();
      const int64_t covered = state.step - last_exchange_step;
      values.emplace_back("comm_bytes", exchanged ? double(x.payload_bytes) : 0.0);
      values.emplace_back("comm_wire_bytes", exchanged ? double(x.wire_bytes) : 0.0);
      if (exchanged) {
        const double dense = double(local->compression().plan().dense_wire_bytes) * covered;
        values.emplace_back("comm_ratio", x.wire_bytes > 0 ? dense / double(x.wire_bytes) : 1.0);
        values.emplace_back("comm_s", comm_seconds[1]);
        values.emplace_back("comm_compress_s", comm_seconds[0]);
        values.emplace_back("comm_decompress_s", comm_seconds[2]);
        values.emplace_back("outer_step", double(local->outer_steps()));
        last_exchange_step = state.step;
      }
    }
    if (sync || momentum_step) {
      // Bytes are this rank's (the same on every rank); seconds are means over ranks. A skipped
      // momentum step exchanged nothing.
      static const ExchangeStats nothing{};
      const ExchangeStats& x = !momentum_step ? sync->last_step().exchange
                               : skip         ? nothing
                                              : onebit->compression().stats();
      values.emplace_back("comm_bytes", double(x.payload_bytes));
      values.emplace_back("comm_wire_bytes", double(x.wire_bytes));
      values.emplace_back("comm_ratio", x.ratio());
      values.emplace_back("comm_s", comm_seconds[1]);
      if (momentum_step || sync->compression()) {
        values.emplace_back("comm_compress_s", comm_seconds[0]);
        values.emplace_back("comm_decompress_s", comm_seconds[2]);
      }
    }
    if (meter) {
      for (const auto& [key, mb] : meter->metrics()) values.emplace_back(key, mb);
    }
    metrics.log(state.step, values);
    if (progress) progress->update(state.step, loss, tokens_per_s, lr);

    bool last = state.step == tc.steps;
    if (tc.eval_every > 0 && (state.step % tc.eval_every == 0 || last) && !validation_.empty()) {
      // Local-update training evaluates the global model (the anchor) in the middle of a round
      // (swapping is a no-op for fragments that have just been synchronized).
      const bool swap = local != nullptr;
      if (swap) local->swap_anchor();
      double val = validate();
      if (swap) local->swap_anchor();
      result.val_loss = val;
      result.val_step = state.step;
      metrics.log(state.step, {{"loss", val}, {"perplexity", std::exp(val)}, {"elapsed_s", elapsed}},
                  "val");
      message(fmt::format("step {} validation loss {:.4f} perplexity {:.2f}", state.step, val,
                          std::exp(val)));
    }
    bool periodic = setup_.checkpoint.every > 0 && state.step % setup_.checkpoint.every == 0;
    if (periodic || last || stop_now) save();
    if (rank0 && periodic) stop.note_time_to_stop(std::chrono::duration<double>(clock::now() - t0).count());
    if (stop_now && !last) {
      result.interrupted = true;
      message(fmt::format("stopped by {} at step {}; continue with --resume", StopSignal::last_signal() ? "signal" : "the STOP file", state.step));
      break;
    }
  }
  if (progress) progress->finish();
  metrics.flush();
  return result;
}

}  // namespace condense
