// Recipe parser: the binding tables (one line per struct field, in struct order), the walk
// over the YAML document and overrides, the final range checks and the resolved-recipe emitter.
// Range checks run once after the file and all overrides are applied, so that cross-field rules
// (min_lr <= lr) do not depend on key order; each key remembers where it was last set.
#include "recipes/recipe_parser.h"

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>

#include "comm/codec.h"
#include "comm/error_control.h"
#include "comm/local_update.h"
#include "core/error.h"
#include "core/hash.h"
#include "recipes/recipe_kinds.h"
#include "recipes/yaml_binder.h"
#include "trainer/device.h"

namespace condense {
namespace {

std::string at(const std::string& source, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return source;
  return fmt::format("{}:{}", source, mark.line + 1);
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

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

// Binds every key of a RunConfig; holds references into it, so it must not outlive it.
class RecipeBinder {
 public:
  explicit RecipeBinder(RunConfig& c)
      : top_{"",
             {bind_string("kind", c.kind, recipe_kind_names()), bind_string("name", c.name),
              bind_string("out_dir", c.out_dir), bind_string("init", c.init)}},
        sections_{model_section(c.model), data_section(c.data), train_section(c.train),
                  checkpoint_section(c.checkpoint), comm_section(c.comm),
                  compression_section(c.comm.compression), sync_section(c.comm.sync, c.train),
                  outer_section(c.comm.sync), memory_section(c.memory),
                  wta_crs_section(c.memory), recovery_section(c.recovery),
                  distill_section(c.distill), context_section(c.context), kv_section(c.kv)} {
    top_.fields[1].check = [&c]() -> std::string { return c.name.empty() ? "must not be empty" : ""; };
  }
  RecipeBinder(const RecipeBinder&) = delete;
  RecipeBinder& operator=(const RecipeBinder&) = delete;

  void apply_document(const YAML::Node& root, const std::string& source) {
    if (!root.IsDefined() || root.IsNull()) return;  // empty document: all defaults
    if (!root.IsMap()) {
      fail("{}: a recipe is a mapping with keys {}; got {}", at(source, root.Mark()),
           top_key_list(), describe_node(root));
    }
    for_each_key(root, source, "", [&](const std::string& key, const YAML::Node& value,
                                       const std::string& where) {
      if (const FieldBinding* f = top_.find(key)) return set(top_, *f, value, where);
      const SectionBinding* s = find_section(key);
      if (!s) fail("{}: unknown key '{}'; valid top-level keys: {}", where, key, top_key_list());
      apply_section(*s, value, source, where);
    });
  }

  // A section's mapping: its fields, and nested sections (comm.compression) as sub-mappings.
  void apply_section(const SectionBinding& s, const YAML::Node& value, const std::string& source,
                     const std::string& where) {
    if (value.IsNull()) return;  // `train:` with nothing under it
    if (!value.IsMap()) {
      fail("{}: key '{}' expects a mapping with keys {}; got {}", where, s.name, keys_of(s),
           describe_node(value));
    }
    for_each_key(value, source, s.name + ".", [&](const std::string& sub, const YAML::Node& v,
                                                  const std::string& sub_where) {
      if (const FieldBinding* f = s.find(sub)) return set(s, *f, v, sub_where);
      if (const SectionBinding* nested = find_section(s.name + "." + sub))
        return apply_section(*nested, v, source, sub_where);
      fail("{}: unknown key '{}.{}'; valid keys in '{}': {}", sub_where, s.name, sub, s.name,
           keys_of(s));
    });
  }

  void apply_override(const std::string& text) {
    const std::string where = fmt::format("override '{}'", text);
    size_t eq = text.find('=');
    std::string key = trim(text.substr(0, eq));
    if (eq == std::string::npos || key.empty()) {
      fail("{}: expected the form section.key=value (e.g. train.lr=1e-3) or key=value "
           "(e.g. name=run1)", where);
    }
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      fail("{}: the value is not valid YAML: {}", where, e.msg);
    }
    size_t dot = key.rfind('.');
    if (dot == std::string::npos) {
      if (const FieldBinding* f = top_.find(key)) return set(top_, *f, value, where);
    }
    if (const SectionBinding* whole = find_section(key)) {
      fail("{}: '{}' is a section; override one of its keys as {}.<key>=value; valid keys in "
           "'{}': {}", where, key, key, key, keys_of(*whole));
    }
    if (dot == std::string::npos) {
      fail("{}: unknown key '{}'; valid top-level keys: {}", where, key, top_key_list());
    }
    std::string head = key.substr(0, dot);
    const SectionBinding* s = find_section(head);
    if (!s) {
      std::string first = key.substr(0, key.find('.'));
      if (!find_section(first))
        fail("{}: unknown key '{}'; valid top-level keys: {}", where, first, top_key_list());
      fail("{}: unknown key '{}'; valid keys in '{}': {}", where, key, first,
           keys_of(*find_section(first)));
    }
    const FieldBinding* f = s->find(key.substr(dot + 1));
    if (!f) fail("{}: unknown key '{}'; valid keys in '{}': {}", where, key, head, keys_of(*s));
    set(*s, *f, value, where);
  }

  // Range and choice checks over the final values; errors point at where the key was last set.
  void validate(const std::string& source) const {
    auto check = [&](const SectionBinding& s) {
      for (const auto& f : s.fields) {
        std::string problem = f.check();
        if (problem.empty()) continue;
        std::string key = s.full_key(f.key);
        auto it = origins_.find(key);
        if (it != origins_.end()) fail("{}: key '{}' {}", it->second, key, problem);
        fail("{}: key '{}' {} (left at its default)", source, key, problem);
      }
    };
    check(top_);
    for (const auto& s : sections_) check(s);
  }

  std::string emit() const {
    std::string out;
    for (const auto& f : top_.fields) out += fmt::format("{}: {}\n", f.key, f.emit());
    for (const auto& s : sections_)
      if (s.name.find('.') == std::string::npos) emit_section(s, s.name, "", out);
    return out;
  }

 private:
  template <typename Fn>
  static void for_each_key(const YAML::Node& map, const std::string& source,
                           const std::string& prefix, Fn&& fn) {
    std::map<std::string, int> first_line;  // yaml-cpp keeps duplicate keys; we refuse them
    for (const auto& kv : map) {
      const YAML::Node k = kv.first;
      std::string where = at(source, k.Mark());
      if (!k.IsScalar()) fail("{}: keys must be plain names, got {}", where, describe_node(k));
      std::string key = k.Scalar();
      auto [seen, inserted] = first_line.emplace(key, k.Mark().line + 1);
      if (!inserted) {
        fail("{}: duplicate key '{}{}' (first given at line {})", where, prefix, key, seen->second);
      }
      fn(key, kv.second, where);
    }
  }

  void set(const SectionBinding& s, const FieldBinding& f, const YAML::Node& value,
           const std::string& where) {
    std::string key = s.full_key(f.key);
    f.set(value, where, key);
    origins_[key] = where;
  }

  const SectionBinding* find_section(const std::string& name) const {
    for (const auto& s : sections_) {
      if (s.name == name) return &s;
    }
    return nullptr;
  }

  std::string top_key_list() const {
    std::string keys = top_.key_list();
    for (const auto& s : sections_)
      if (s.name.find('.') == std::string::npos) keys += ", " + s.name;
    return keys;
  }

  // Whether `nested` is a direct sub-section of `parent` (comm.sync of comm, not comm.sync.outer).
  static bool is_child(const SectionBinding& parent, const SectionBinding& nested) {
    const std::string prefix = parent.name + ".";
    return nested.name.rfind(prefix, 0) == 0 &&
           nested.name.find('.', prefix.size()) == std::string::npos;
  }

  // A section as YAML under `indent`: its fields, then its sub-sections, recursively.
  void emit_section(const SectionBinding& s, const std::string& key, const std::string& indent,
                    std::string& out) const {
    out += indent + key + ":\n";
    for (const auto& f : s.fields) out += fmt::format("{}  {}: {}\n", indent, f.key, f.emit());
    for (const auto& nested : sections_)
      if (is_child(s, nested))
        emit_section(nested, nested.name.substr(s.name.size() + 1), indent + "  ", out);
  }

  // A section's fields followed by its sub-sections ("backend, ..., compression, sync").
  std::string keys_of(const SectionBinding& s) const {
    std::string keys = s.key_list();
    for (const auto& nested : sections_)
      if (is_child(s, nested)) keys += ", " + nested.name.substr(s.name.size() + 1);
    return keys;
  }

  SectionBinding top_;                          // kind, name, out_dir, init
  std::vector<SectionBinding> sections_;        // model, data, ..., and nested ones (comm.compression)
  std::map<std::string, std::string> origins_;  // dotted key -> where it was last set
};

// Where each YAML document starts, and where its content starts, read with yaml-cpp's event
// parser. Reason: yaml-cpp 0.7's LoadAll never returns on some invalid input (a lone ",": every
// call parses an empty document at the same position), allocating until memory runs out
// (found by tests/fuzz/fuzz_recipe.cpp). Reading events instead, a document that starts where
// the previous one did is caught, and reading stops at the second document.
class DocumentMarks : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start, content;
    bool has_content = false;
  };
  std::vector<Document> documents;

  void OnDocumentStart(const YAML::Mark& m) override { documents.push_back({m, m, false}); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t) override { content(m); }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { content(m); }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                const std::string&) override { content(m); }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override { content(m); }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override { content(m); }
  void OnMapEnd() override {}

 private:
  void content(const YAML::Mark& m) {
    if (!documents.empty() && !documents.back().has_content) {
      documents.back().content = m;
      documents.back().has_content = true;
    }
  }
};

// The recipe's one YAML document (none for a text without any). Throws YAML::Exception for
// invalid YAML, and fails naming the source for a second document or a parser that makes no
// progress.
std::optional<YAML::Node> load_one_document(const std::string& yaml_text,
                                            const std::string& source_name) {
  std::istringstream in(yaml_text);
  YAML::Parser parser(in);
  DocumentMarks marks;
  while (marks.documents.size() < 2 && parser.HandleNextDocument(marks)) {
  }
  const auto& docs = marks.documents;
  if (docs.size() > 1) {
    const YAML::Mark& second = docs[1].content;
    if (docs[1].start.pos <= docs[0].start.pos) {
      fail("{}:{}:{}: invalid YAML: '{}' cannot start a value", source_name, second.line + 1,
           second.column + 1,
           second.pos >= 0 && static_cast<size_t>(second.pos) < yaml_text.size()
               ? yaml_text.substr(second.pos, 1) : std::string());
    }
    fail("{}: a recipe is one YAML document, found more than one", at(source_name, second));
  }
  if (docs.empty()) return std::nullopt;
  return YAML::Load(yaml_text);
}

}  // namespace

RunConfig parse_recipe(const std::string& yaml_text, const std::string& source_name,
                       const std::vector<std::string>& overrides) {
  RunConfig config;
  RecipeBinder binder(config);
  std::optional<YAML::Node> doc;
  try {
    doc = load_one_document(yaml_text, source_name);
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) fail("{}: invalid YAML: {}", source_name, e.msg);
    fail("{}:{}:{}: invalid YAML: {}", source_name, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  try {
    if (doc) binder.apply_document(*doc, source_name);
    for (const auto& o : overrides) binder.apply_override(o);
  } catch (const YAML::Exception& e) {  // not expected: node access on a well-formed tree
    fail("{}: {}", source_name, e.what());
  }
  binder.validate(source_name);
  return config;
}

RunConfig load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail("recipe '{}' does not exist or is not a regular file", path);
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  CONDENSE_CHECK(in.good() || in.eof(), "cannot read recipe '{}'", path);
  return parse_recipe(text.str(), path, overrides);
}

std::string to_yaml(const RunConfig& config) {
  RunConfig copy = config;
  return RecipeBinder(copy).emit();
}

std::string recipe_hash(const RunConfig& config) { return sha256_hex(to_yaml(config)); }

}  // namespace condense
