#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/progress.h"
#include "trainer/adamw.h"
#include "trainer/grad_clip.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_logger.h"
#include "trainer/stop_signal.h"

namespace condense {

Trainer::Trainer(TrainerSetup setup, LlamaForCausalLM model, BatchLoader loader,
                 std::vector<Batch> validation, LossFn loss)
    : setup_(std::move(setup)),
      model_(std::move(model)),
      loader_(std::move(loader)),
      validation_(std::move(validation)),
      loss_(std::move(loss)) {}

double Trainer::validate() {
  if (validation_.empty()) return std::nan("");
  at::NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  for (const Batch& b : validation_) total += loss_(model_, b).item<double>();
  model_->train();
  return total / validation_.size();
}

TrainResult Trainer::run(const std::optional<std::string>& resume_from) {
  const TrainConfig& tc = setup_.train;
  std::vector<std::pair<std::string, at::Tensor>> params;
  std::vector<at::Tensor> trainable;
  for (auto& p : model_->named_parameters()) {
    params.emplace_back(p.key(), p.value());
    if (p.value().requires_grad()) trainable.push_back(p.value());
  }
  AdamW optimizer(params, AdamWOptions{tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  LrSchedule schedule{tc.lr, tc.min_lr, tc.warmup_steps, tc.steps};
  CheckpointManager checkpoints(setup_.checkpoint.dir, setup_.checkpoint.keep);

  TrainingState state;
  TrainResult result;
  if (resume_from) {
    Checkpoint ckpt = Checkpoint::open(*resume_from);
    ckpt.load_model(model_);
    ckpt.load_optimizer(optimizer);
    ckpt.restore_rng();
    state = ckpt.state();
    loader_.restore(state.cursor);
    result.checkpoint = *resume_from;
    spdlog::info("resumed from {} at step {} ({} tokens seen)", *resume_from, state.step,
                 state.tokens_seen);
  }

  MetricsLogger metrics(setup_.out_dir, /*enabled=*/true);
  Progress progress(tc.steps, state.step, tc.log_every);
  StopSignal stop;
  model_->train();
  using clock = std::chrono::steady_clock;
  auto start = clock::now();

  auto save = [&] {
    result.checkpoint = checkpoints.save(model_, &optimizer, state, setup_.recipe_yaml,
                                         setup_.tokenizer_bytes);
    progress.message(fmt::format("checkpoint {}", result.checkpoint));
  };

  while (state.step < tc.steps) {
    auto t0 = clock::now();
    double lr = schedule.at(state.step);
    double loss_sum = 0;
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      Batch batch = loader_.next();
      at::Tensor loss = loss_(model_, batch);
      (loss / static_cast<double>(tc.grad_accum)).backward();
      loss_sum += loss.item<double>();
    }
    double loss = loss_sum / tc.grad_accum;
    CONDENSE_CHECK(std::isfinite(loss), "training diverged: loss is {} at step {} (lr {:.3e}); "
                   "lower train.lr or raise train.warmup_steps", loss, state.step + 1, lr);
    double grad_norm = clip_grad_norm(trainable, tc.grad_clip);
    optimizer.step(lr);
    optimizer.zero_grad();

    state.step += 1;
    int64_t tokens = setup_.tokens_per_micro_batch * tc.grad_accum;
    state.tokens_seen += tokens;
    state.cursor = loader_.cursor();
    double dt = std::chrono::duration<double>(clock::now() - t0).count();
    double tokens_per_s = tokens / dt;
    double elapsed = std::chrono::duration<double>(clock::now() - start).count();
    result.step = state.step;
    result.train_loss = loss;
    metrics.log(state.step, {{"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                             {"tokens_per_s", tokens_per_s}, {"tokens_seen", double(state.tokens_seen)},
                             {"elapsed_s", elapsed}});
    progress.update(state.step, loss, tokens_per_s, lr);

    bool last = state.step == tc.steps;
    if (tc.eval_every > 0 && (state.step % tc.eval_every == 0 || last) && !validation_.empty()) {
      double val = validate();
      result.val_loss = val;
      metrics.log(state.step, {{"loss", val}, {"perplexity", std::exp(val)}}, "val");
      progress.message(fmt::format("step {} validation loss {:.4f} perplexity {:.2f}", state.step,
                                   val, std::exp(val)));
    }
    bool periodic = setup_.checkpoint.every > 0 && state.step % setup_.checkpoint.every == 0;
    if (periodic || last || stop.requested()) save();
    if (stop.requested() && !last) {
      result.interrupted = true;
      progress.message(fmt::format("stopped by signal {} at step {}; continue with --resume",
                                   StopSignal::last_signal(), state.step));
      break;
    }
  }
  progress.finish();
  metrics.flush();
  return result;
}

}  // namespace condense
