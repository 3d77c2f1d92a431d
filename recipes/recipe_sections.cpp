#include "recipes/recipe_sections.h"

#include <fmt/format.h>

#include <cmath>
#include <regex>

#include "comm/codec.h"
#include "comm/error_control.h"
#include "comm/local_update.h"
#include "recipes/recipe_kinds.h"
#include "trainer/device.h"

namespace condense {
namespace {

SectionBinding model_section(LlamaConfig& m) {
  return {"model",
          {bind_int("vocab_size", m.vocab_size, at_least(0)),
           bind_int("hidden_size", m.hidden_size, positive()),
           bind_int("intermediate_size", m.intermediate_size, positive()),
           bind_int("num_hidden_layers", m.num_hidden_layers, positive()),
           bind_int("num_attention_heads", m.num_attention_heads, positive()),
           bind_int("num_key_value_heads", m.num_key_value_heads, at_least(0)),
           bind_int("head_dim", m.head_dim, at_least(0)),
           bind_real("rms_norm_eps", m.rms_norm_eps, positive()),
           bind_real("rope_theta", m.rope_theta, positive()),
           bind_real("partial_rotary_factor", m.partial_rotary_factor, unit_interval()),
           bind_int("max_position_embeddings", m.max_position_embeddings, positive()),
           bind_bool("tie_word_embeddings", m.tie_word_embeddings),
           bind_real("initializer_range", m.initializer_range, at_least(0)),
           bind_real("attention_dropout", m.attention_dropout, fraction()),
           bind_int("bos_token_id", m.bos_token_id, at_least(0)),
           bind_int("eos_token_id", m.eos_token_id, at_least(0))}};
}

SectionBinding data_section(DataConfig& d) {
  SectionBinding s{"data",
                   {bind_string("corpus", d.corpus, {"gcide", "fortunes", "dir"}),
                    bind_string("path", d.path),
                    bind_string("dataset", d.dataset),
                    bind_string("cache_dir", d.cache_dir),
                    bind_string("tokenizer", d.tokenizer),
                    bind_int("vocab_size", d.vocab_size, at_least(256)),  // room for byte fallback
                    bind_int("max_documents", d.max_documents, at_least(0)),
                    bind_real("val_fraction", d.val_fraction, fraction()),
                    bind_int("seed", d.seed),  // any integer, as train.seed (older splits used it)
                    bind_int("seq_len", d.seq_len, positive()),
                    bind_int("batch_size", d.batch_size, positive())}};
  s.fields[1].check = [&d]() -> std::string {
    if (d.corpus == "dir" && d.path.empty()) return "must name the directory when data.corpus is 'dir'";
    return "";
  };
  return s;
}

SectionBinding train_section(TrainConfig& t) {
  SectionBinding s{"train",
                   {bind_int("steps", t.steps, positive()),
                    bind_real("lr", t.lr, positive()),
                    bind_real("min_lr", t.min_lr),
                    bind_int("warmup_steps", t.warmup_steps, at_least(0)),
                    bind_string("optimizer", t.optimizer, {"adamw", "sgd", "sign"}),
                    bind_real("weight_decay", t.weight_decay, at_least(0)),
                    bind_real("beta1", t.beta1, fraction()),
                    bind_real("beta2", t.beta2, fraction()),
                    bind_real("eps", t.eps, positive()),
                    bind_real("momentum", t.momentum, fraction()),
                    bind_real("grad_clip", t.grad_clip, at_least(0)),
                    bind_int("grad_accum", t.grad_accum, positive()),
                    bind_int("seed", t.seed),
                    bind_int("threads", t.threads, between(0, kMaxThreads)),
                    bind_string("device", t.device),
                    bind_string("precision", t.precision, {"fp32", "bf16"}),
                    bind_int("eval_every", t.eval_every, at_least(0)),
                    bind_int("eval_batches", t.eval_batches, at_least(1)),
                    bind_int("log_every", t.log_every, at_least(1)),
                    bind_string_list("trainable", t.trainable),
                    bind_string("nonfinite", t.nonfinite, {"stop", "skip"}),
                    bind_int("max_consecutive_skips", t.max_consecutive_skips, positive())}};
  s.fields[2].check = [&t]() -> std::string {
    if (t.min_lr >= 0 && t.min_lr <= t.lr) return "";
    return fmt::format("must be in [0, train.lr = {}], got {}", t.lr, t.min_lr);
  };
  for (FieldBinding& f : s.fields) {
    if (f.key != "device") continue;
    f.check = [&t]() -> std::string {
      static const std::regex form(R"(cpu|cuda(:[0-9]+)?)");
      if (std::regex_match(t.device, form)) return "";
      return fmt::format("must be cpu, cuda or cuda:N, got '{}'", t.device);
    };
  }
  return s;
}

SectionBinding checkpoint_section(CheckpointConfig& c) {
  return {"checkpoint",
          {bind_string("dir", c.dir),
           bind_int("every", c.every, at_least(0)),
           bind_int("keep", c.keep, at_least(1))}};
}

SectionBinding comm_section(CommConfig& c) {
  return {"comm",
          {bind_string("backend", c.backend, {"auto", "mpi", "nccl", "self"}),
           bind_real("bucket_cap_mb", c.bucket_cap_mb, positive()),
           bind_bool("overlap", c.overlap),
           bind_real("timeout_s", c.timeout_s, at_least(0))}};
}

SectionBinding compression_section(CompressionConfig& c) {
  SectionBinding s{"comm.compression",
          {bind_string("codec", c.codec, codec_names()),
           bind_real("ratio", c.ratio, unit_interval()),
           bind_int("k", c.k, at_least(0)),
           bind_string("scope", c.scope, {"bucket", "tensor"}),
           bind_int("levels", c.levels, between(1, 127)),
           bind_int("block", c.block, at_least(1)),
           bind_string("collective", c.collective, {"all_gather", "compressed_all_reduce"}),
           bind_int("rank", c.rank, at_least(1)),
           bind_int("bits", c.bits, between(2, 32)),
           bind_int("chunk", c.chunk, between(1, 32768)),
           bind_string("transform", c.transform, {"none", "dct"}),
           bind_string("error_control", c.error_control, ErrorControl::kinds()),
           bind_real("eta", c.eta, unit_interval()),
           bind_real("decay", c.decay, between(0, 1)),
           bind_int("warmup_steps", c.warmup_steps, at_least(0)),
           bind_int("min_bucket_numel", c.min_bucket_numel, at_least(0)),
           bind_int("seed", c.seed, at_least(0))}};
  for (FieldBinding& f : s.fields) {
    if (f.key == "bits") {
      f.check = [&c]() -> std::string {
        return (c.bits >= 2 && c.bits <= 8) || c.bits == 32
                   ? "" : fmt::format("must be in [2, 8], or 32 (fp32 values), got {}", c.bits);
      };
    } else if (f.key == "transform") {
      f.check = [&c, choice = f.check]() -> std::string {
        std::string problem = choice();
        if (!problem.empty() || c.transform == "none") return problem;
        if (c.codec != "sparseloco")
          return fmt::format("'dct' applies to codec sparseloco, got '{}'", c.codec);
        const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(c.chunk))));
        return side * side == c.chunk
                   ? "" : fmt::format("'dct' needs a square comm.compression.chunk, got {}", c.chunk);
      };
    } else if (f.key == "scope") {
      f.check = [&c, choice = f.check]() -> std::string {
        std::string problem = choice();
        if (!problem.empty() || c.scope == "bucket") return problem;
        return c.codec == "topk" ? "" : fmt::format("'tensor' applies to codec topk, got '{}'", c.codec);
      };
    } else if (f.key == "collective") {
      f.check = [&c, choice = f.check]() -> std::string {
        std::string problem = choice();
        if (!problem.empty()) return problem;
        return c.collective == "compressed_all_reduce" && c.codec != "sign" && c.codec != "qsgd"
                   ? fmt::format("'compressed_all_reduce' needs codec sign or qsgd, got '{}'", c.codec)
                   : "";
      };
    }
  }
  return s;
}

SectionBinding sync_section(SyncConfig& c, const TrainConfig& t) {
  SectionBinding s{"comm.sync",
                   {bind_string("mode", c.mode, sync_modes()),
                    bind_int("inner_steps", c.inner_steps, at_least(1)),
                    bind_int("fragments", c.fragments, at_least(1)),
                    bind_int("freeze_steps", c.freeze_steps, at_least(1)),
                    bind_int("var_update_scaler", c.var_update_scaler, at_least(1))}};
  // inner_steps and fragments shape DiLoCo's rounds; set under another mode they would be
  // ignored, which reads as a setting that took effect.
  const SyncConfig defaults;
  s.fields[1].check = [&c, defaults, range = s.fields[1].check]() -> std::string {
    std::string problem = range();
    if (!problem.empty() || c.local_update() || c.inner_steps == defaults.inner_steps) return problem;
    return fmt::format("applies to comm.sync.mode diloco, got '{}'", c.mode);
  };
  s.fields[2].check = [&c, defaults, range = s.fields[2].check]() -> std::string {
    std::string problem = range();
    if (!problem.empty()) return problem;
    if (!c.local_update() && c.fragments != defaults.fragments)
      return fmt::format("applies to comm.sync.mode diloco, got '{}'", c.mode);
    return c.inner_steps % c.fragments == 0
               ? "" : fmt::format("must divide comm.sync.inner_steps ({}), got {}", c.inner_steps,
                                  c.fragments);
  };
  s.fields[0].check = [&c, &t, choice = s.fields[0].check]() -> std::string {
    std::string problem = choice();
    if (!problem.empty()) return problem;
    return c.frozen_variance() && t.optimizer != "adamw"
               ? fmt::format("'{}' is AdamW with a frozen second moment; it needs "
                             "train.optimizer adamw, got '{}'", c.mode, t.optimizer)
               : "";
  };
  return s;
}

// comm.sync.outer: {optimizer, lr, momentum}, the outer step of local-update training.
SectionBinding outer_section(SyncConfig& c) {
  return {"comm.sync.outer",
          {bind_string("optimizer", c.outer_optimizer, outer_optimizers()),
           bind_real("lr", c.outer_lr, positive()),
           bind_real("momentum", c.outer_momentum, between(0, 0.999999))}};
}

SectionBinding memory_section(MemoryConfig& m) {
  SectionBinding s{"memory",
                   {bind_string("recompute", m.recompute, {"none", "full", "every_k", "selective", "attention", "budget"}),
                    bind_int("recompute_every", m.recompute_every, at_least(1)),
                    bind_real("budget_mb", m.budget_mb, at_least(0)),
                    bind_string("offload", m.offload, {"none", "host", "disk"}),
                    bind_string("offload_dir", m.offload_dir),
                    bind_int("offload_min_bytes", m.offload_min_bytes, at_least(0)),
                    bind_string("activations", m.activations, {"fp32", "bf16", "int8"}),
                    bind_int("int8_block", m.int8_block, positive()),
                    bind_string("loss", m.loss, {"full", "chunked"}),
                    bind_int("loss_chunk", m.loss_chunk, positive()),
                    bind_int("loss_vocab_chunk", m.loss_vocab_chunk, positive()),
                    bind_real("loss_filter_eps", m.loss_filter_eps, fraction()),
                    bind_bool("meter", m.meter)}};
  s.fields[2].check = [&m]() -> std::string {  // budget_mb: needed by recompute=budget
    return m.recompute == "budget" && !(m.budget_mb > 0)
               ? fmt::format("must be > 0 when memory.recompute is 'budget', got {}", m.budget_mb)
               : "";
  };
  s.fields[6].check = [&m, choice = s.fields[6].check]() -> std::string {  // activations
    std::string c = choice();
    if (!c.empty()) return c;
    return m.offload != "none" && m.activations != "fp32"
               ? fmt::format("'{}' cannot be combined with memory.offload '{}'; choose one",
                             m.activations, m.offload)
               : "";
  };
  return s;
}

// memory.wta_crs: {enabled, ratio}
SectionBinding wta_crs_section(MemoryConfig& m) {
  return {"memory.wta_crs",
          {bind_bool("enabled", m.wta_crs), bind_real("ratio", m.wta_crs_ratio, unit_interval())}};
}

SectionBinding recovery_section(RecoveryConfig& r) {
  return {"recovery",
          {bind_string("method", r.method, {"full", "lora", "perp", "kv_project", "cskv"}),
           bind_string("adapter", r.adapter, {"masklora", "scalelora"}),
           bind_int("rank", r.rank, at_least(1)),
           bind_real("alpha", r.alpha, positive()),
           bind_string_list("targets", r.targets),
           bind_bool("train_embeddings", r.train_embeddings),
           bind_string("selection", r.selection, {"all", "random", "paser"}),
           bind_real("budget", r.budget, unit_interval()),
           bind_int("candidates", r.candidates, at_least(0)),
           bind_int("clusters", r.clusters, at_least(1)),
           bind_int("kv_rank", r.kv_rank, at_least(0)),
           bind_int("kv_window", r.kv_window, at_least(0))}};
}

SectionBinding kv_section(KVConfig& k) {
  return {"kv",
          {bind_int("heads", k.heads, at_least(0)),
           bind_string("init", k.init, {"", "svd", "mean", "whiten", "asvd"}),
           bind_int("key_rank", k.key_rank, at_least(0)),
           bind_int("value_rank", k.value_rank, at_least(0)),
           bind_int("calib_windows", k.calib_windows, at_least(1)),
           bind_int("calib_seq_len", k.calib_seq_len, at_least(0))}};
}

SectionBinding distill_section(DistillConfig& d) {
  return {"distill",
          {bind_string("teacher", d.teacher),
           bind_real("kd_ratio", d.kd_ratio, between(0, 1)),
           bind_real("temperature", d.temperature, positive()),
           bind_bool("temperature_squared", d.temperature_squared),
           bind_int("top_k", d.top_k, at_least(0)),
           bind_int("chunk", d.chunk, positive()),
           bind_string("hidden_loss", d.hidden_loss, {"none", "mse", "cosine"}),
           bind_real("hidden_weight", d.hidden_weight, at_least(0)),
           bind_string_list("hidden_layers", d.hidden_layers)}};
}

SectionBinding context_section(ContextConfig& c) {
  return {"context",
          {bind_string("method", c.method, {"arc", "compllm", "xrag"}),
           bind_int("pooling_factor", c.pooling_factor, at_least(1)),
           bind_int("chunk_len", c.chunk_len, at_least(1)),
           bind_int("prefix_len", c.prefix_len, at_least(0)),
           bind_int("encoder_layers", c.encoder_layers, at_least(1)),
           bind_int("bottleneck", c.bottleneck, at_least(0)),
           bind_real("reconstruction_share", c.reconstruction_share, between(0, 1)),
           bind_int("segment_len", c.segment_len, at_least(1)),
           bind_int("lora_rank", c.lora_rank, at_least(1)),
           bind_real("lora_alpha", c.lora_alpha, positive()),
           bind_real("kd_ratio", c.kd_ratio, between(0, 1)),
           bind_string("start_from", c.start_from),
           bind_string("documents", c.documents),
           bind_int("embedding_dim", c.embedding_dim, at_least(0)),
           bind_int("held_out", c.held_out, at_least(1)),
           bind_int("answer_len", c.answer_len, at_least(1)),
           bind_int("stage", c.stage, between(1, 2)),
           bind_real("kl_weight", c.kl_weight, at_least(0)),
           bind_string("paraphrase_template", c.paraphrase_template),
           bind_string("task_template", c.task_template)}};
}

}  // namespace

SectionBinding top_level_keys(RunConfig& c) {
  SectionBinding top{"",
                     {bind_string("kind", c.kind, recipe_kind_names()), bind_string("name", c.name),
                      bind_string("out_dir", c.out_dir), bind_string("init", c.init)}};
  top.fields[1].check = [&c]() -> std::string { return c.name.empty() ? "must not be empty" : ""; };
  return top;
}

std::vector<SectionBinding> recipe_sections(RunConfig& c) {
  return {model_section(c.model), data_section(c.data), train_section(c.train),
          checkpoint_section(c.checkpoint), comm_section(c.comm),
          compression_section(c.comm.compression), sync_section(c.comm.sync, c.train),
          outer_section(c.comm.sync), memory_section(c.memory),
          wta_crs_section(c.memory), recovery_section(c.recovery),
          distill_section(c.distill), context_section(c.context), kv_section(c.kv)};
}

}  // namespace condense
