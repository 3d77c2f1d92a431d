// Minitron width/depth pruning: importance ranking and target checks (plan_minitron), then
// physical slicing of every tensor into a new, smaller model (apply_minitron). See the header
// for the importance measures.
#include "compressors/prune_minitron.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "core/error.h"

namespace condense {
namespace {

std::string weight_name(int64_t layer, const char* module, const char* kind = "weight") {
  return fmt::format("model.layers.{}.{}.{}", layer, module, kind);
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t{0});
  return v;
}

// Indices of the `keep` highest scores, sorted ascending. A stable sort by descending score
// leaves equal scores in index order, so ties keep the lower index.
std::vector<int64_t> top(const std::vector<double>& score, int64_t keep) {
  std::vector<int64_t> order = iota(static_cast<int64_t>(score.size()));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

// input_sq_norms[name] as doubles; names the missing or misshapen statistic.
std::vector<double> sq_norms(const CalibrationStats& stats, const std::string& name, int64_t size,
                             const char* why) {
  auto it = stats.input_sq_norms.find(name);
  CONDENSE_CHECK(it != stats.input_sq_norms.end() && it->second.defined(),
                 "minitron: the calibration statistics have no input norms for '{}' (needed to "
                 "rank {})", name, why);
  at::Tensor t = it->second.detach().to(at::kCPU, at::kDouble).contiguous().reshape({-1});
  CONDENSE_CHECK(t.numel() == size, "minitron: input norms of '{}' have {} entries, expected {}",
                 name, t.numel(), size);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + size);
}

// 0 keeps the size; anything else must lie in 1..current.
int64_t resolve(const char* key, int64_t value, int64_t current) {
  if (value == 0) return current;
  CONDENSE_CHECK(value >= 1 && value <= current,
                 "minitron target {}={} is out of range: valid 1..{} (the model's {}), or 0 to "
                 "keep it", key, value, current, key);
  return value;
}

// Checks the depth targets; without statistics only the number of kept layers is meaningful.
std::vector<int64_t> kept_layers(const LlamaConfig& c, const CalibrationStats* stats,
                                 const MinitronTarget& t) {
  const int64_t n = c.num_hidden_layers;
  if (!t.drop_layers.empty()) {
    CONDENSE_CHECK(t.num_hidden_layers == 0,
                   "minitron targets num_hidden_layers={} and drop_layers={} exclude each other; "
                   "give one", t.num_hidden_layers, join(t.drop_layers));
    std::set<int64_t> drop;
    for (int64_t d : t.drop_layers) {
      CONDENSE_CHECK(d >= 0 && d < n, "minitron target drop_layers={}: layer {} is out of range "
                     "(valid 0..{})", join(t.drop_layers), d, n - 1);
      CONDENSE_CHECK(drop.insert(d).second, "minitron target drop_layers={}: layer {} is named "
                     "twice", join(t.drop_layers), d);
    }
    CONDENSE_CHECK(static_cast<int64_t>(drop.size()) < n, "minitron target drop_layers={} drops "
                   "all {} layers; keep at least one", join(t.drop_layers), n);
    std::vector<int64_t> kept;
    for (int64_t i = 0; i < n; ++i)
      if (!drop.count(i)) kept.push_back(i);
    return kept;
  }
  int64_t keep = resolve("num_hidden_layers", t.num_hidden_layers, n);
  if (keep == n || !stats) return iota(keep);
  CONDENSE_CHECK(static_cast<int64_t>(stats->block_influence.size()) == n,
                 "minitron target num_hidden_layers={} needs the calibration's block_influence "
                 "for {} layers (got {})", keep, n, stats->block_influence.size());
  return top(stats->block_influence, keep);
}

// A num_parameters target: the free widths (hidden / intermediate) shrink by one factor s;
// every step of the larger free width is tried and the count closest to the target wins (the
// larger model on a tie), then the intermediate size is refined. `c` already carries every
// other pruned size.
void fit_parameters(LlamaConfig& c, const LlamaConfig& original, const MinitronTarget& t) {
  const double target = t.num_parameters;
  const int64_t total = original.num_parameters();
  CONDENSE_CHECK(target >= 1 && target <= static_cast<double>(total),
                 "minitron target num_parameters={} is out of range: valid 1..{} (the model's "
                 "parameter count)", target, total);
  const bool hidden_free = t.hidden_size == 0, inter_free = t.intermediate_size == 0;
  CONDENSE_CHECK(hidden_free || inter_free,
                 "minitron target num_parameters={} needs hidden_size or intermediate_size left "
                 "free (both are given: {}, {})", target, t.hidden_size, t.intermediate_size);
  const int64_t base = std::max(hidden_free ? original.hidden_size : 0,
                                inter_free ? original.intermediate_size : 0);
  auto sized = [&](int64_t v) {
    LlamaConfig x = c;
    auto scale = [&](int64_t full) {
      return std::max<int64_t>(1, std::llround(static_cast<double>(full) * v / base));
    };
    if (hidden_free) x.hidden_size = scale(original.hidden_size);
    if (inter_free) x.intermediate_size = scale(original.intermediate_size);
    return x;
  };
  const int64_t lo = sized(1).num_parameters(), hi = sized(base).num_parameters();
  CONDENSE_CHECK(target >= static_cast<double>(lo) && target <= static_cast<double>(hi),
                 "minitron target num_parameters={} is not reachable by shrinking {} with the "
                 "other targets: valid {}..{}", target,
                 hidden_free && inter_free ? "hidden_size and intermediate_size"
                                           : hidden_free ? "hidden_size" : "intermediate_size",
                 lo, hi);
  int64_t best = base;
  double best_miss = -1;
  for (int64_t v = 1; v <= base; ++v) {
    double miss = std::abs(static_cast<double>(sized(v).num_parameters()) - target);
    if (best_miss < 0 || miss <= best_miss) best = v, best_miss = miss;
  }
  c = sized(best);
  // The hidden size moves in coarse steps (every channel carries a vocabulary row or two);
  // the count is linear in the intermediate size, so that absorbs the rounding.
  if (inter_free) {
    LlamaConfig x = c;
    x.intermediate_size = 0;
    const double p0 = static_cast<double>(x.num_parameters());
    x.intermediate_size = 1;
    const double per = static_cast<double>(x.num_parameters()) - p0;
    c.intermediate_size = std::clamp<int64_t>(std::llround((target - p0) / per), 1,
                                              original.intermediate_size);
  }
}

// SmolLM3's per-layer RoPE flags of the kept layers (each layer keeps its own: a NoPE layer
// was trained without positions); empty for a model with RoPE everywhere.
std::vector<int64_t> kept_flags(const std::vector<int64_t>& flags, const std::vector<int64_t>& layers) {
  if (flags.empty()) return {};
  std::vector<int64_t> out;
  for (int64_t i : layers) out.push_back(flags.at(static_cast<size_t>(i)));
  return out;
}

// Each kept layer keeps its own attention (SmolLM3's NoPE layers were trained without
// positions, a sliding-window layer with its window); empty lists (RoPE everywhere, every layer
// windowed or none) stay empty.
void keep_layer_flags(LlamaConfig& c, const LlamaConfig& orig, const std::vector<int64_t>& layers) {
  c.no_rope_layers = kept_flags(orig.no_rope_layers, layers);
  // The window too: finalize() drops it when the layers kept before (pruned_config's first N)
  // had none windowed.
  c.sliding_window = orig.sliding_window;
  c.sliding_window_layers = kept_flags(orig.sliding_window_layers, layers);
}

// The pruned sizes with every target checked; needs no statistics (a num_hidden_layers target's
// layers are chosen later, by plan_minitron from calibration, which sets their per-layer flags:
// here the model has none, so that the first layers' flags cannot fail a check the chosen ones
// pass).
LlamaConfig pruned_config(const LlamaConfig& orig, const MinitronTarget& target) {
  const int64_t kv = orig.kv_heads();
  LlamaConfig c = orig;
  c.num_attention_heads = resolve("num_attention_heads", target.num_attention_heads,
                                  orig.num_attention_heads);
  CONDENSE_CHECK(c.num_attention_heads % kv == 0,
                 "minitron target num_attention_heads={} must be a multiple of "
                 "num_key_value_heads={} (every KV group keeps the same number of query heads)",
                 c.num_attention_heads, kv);
  const std::vector<int64_t> layers = kept_layers(orig, nullptr, target);
  c.num_hidden_layers = static_cast<int64_t>(layers.size());
  if (target.drop_layers.empty() && c.num_hidden_layers < orig.num_hidden_layers) {
    c.no_rope_layers.clear();
    c.sliding_window_layers.clear();
  } else {
    keep_layer_flags(c, orig, layers);
  }
  c.hidden_size = resolve("hidden_size", target.hidden_size, orig.hidden_size);
  // Gemma multiplies its embeddings by sqrt(hidden_size), a constant no slice of the weights keeps
  // (with a tied head, rescaling the embedding would rescale the logits too).
  CONDENSE_CHECK(!orig.is_gemma() || c.hidden_size == orig.hidden_size, "minitron: hidden_size {} -> {} in "
                 "a Gemma, whose embeddings are multiplied by sqrt(hidden_size): its width cannot be "
                 "pruned (prune heads, intermediate_size or layers)", orig.hidden_size, c.hidden_size);
  c.intermediate_size = resolve("intermediate_size", target.intermediate_size,
                                orig.intermediate_size);
  c.num_key_value_heads = kv;
  c.head_dim = orig.head_size();  // explicit: heads x head_dim need not equal hidden_size any more
  if (target.num_parameters != 0) fit_parameters(c, orig, target);
  c.finalize();
  return c;
}

}  // namespace

void check_minitron_target(const LlamaConfig& config, const MinitronTarget& target) {
  LlamaConfig orig = config;
  orig.finalize();
  pruned_config(orig, target);
}

MinitronPlan plan_minitron(const LlamaConfig& config, const CalibrationStats& stats,
                           const MinitronTarget& target) {
  LlamaConfig orig = config;
  orig.finalize();
  const int64_t hd = orig.head_size(), kv = orig.kv_heads();
  MinitronPlan plan;
  plan.original = orig;
  plan.config = pruned_config(orig, target);  // target errors before statistics errors
  plan.layers = kept_layers(orig, &stats, target);
  keep_layer_flags(plan.config, orig, plan.layers);
  try {
    plan.config.finalize();
  } catch (const Error& e) {  // the chosen layers' own attention (NoPE, windows) has no HF form
    fail("minitron: the layers block influence keeps ({}) do not make a model: {}; name the layers "
         "to drop with drop_layers", join(plan.layers), e.what());
  }
  const LlamaConfig& c = plan.config;
  const int64_t heads = c.num_attention_heads;

  // Everything below only reads statistics of kept layers: dropped ones need none.
  for (int64_t i : plan.layers) {
    if (c.intermediate_size < orig.intermediate_size) {
      std::vector<double> s = sq_norms(stats, weight_name(i, "mlp.down_proj"),
                                       orig.intermediate_size, "MLP neurons");
      for (double& x : s) x = std::sqrt(x);
      plan.neurons.push_back(top(s, c.intermediate_size));
    } else {
      plan.neurons.push_back(iota(orig.intermediate_size));
    }
    if (heads < orig.num_attention_heads) {
      std::vector<double> s = sq_norms(stats, weight_name(i, "self_attn.o_proj"),
                                       orig.num_attention_heads * hd, "query heads");
      // Rank inside each KV group so that every group keeps heads / kv query heads and the
      // grouping (new head j reads kv head j / (heads / kv)) survives the renumbering.
      const int64_t group = orig.num_attention_heads / kv, keep = heads / kv;
      std::vector<int64_t> kept;
      for (int64_t g = 0; g < kv; ++g) {
        std::vector<double> score(static_cast<size_t>(group), 0.0);
        for (int64_t h = 0; h < group; ++h) {
          for (int64_t d = 0; d < hd; ++d) score[h] += s[(g * group + h) * hd + d];
          score[h] = std::sqrt(score[h]);
        }
        for (int64_t h : top(score, keep)) kept.push_back(g * group + h);
      }
      plan.heads.push_back(kept);
    } else {
      plan.heads.push_back(iota(orig.num_attention_heads));
    }
  }
  if (c.hidden_size < orig.hidden_size) {
    std::vector<double> score(static_cast<size_t>(orig.hidden_size), 0.0);
    for (int64_t i : plan.layers) {
      for (const char* m : {"self_attn.q_proj", "mlp.gate_proj"}) {
        std::vector<double> s = sq_norms(stats, weight_name(i, m), orig.hidden_size,
                                         "embedding channels");
        for (size_t j = 0; j < s.size(); ++j) score[j] += std::sqrt(s[j]);
      }
    }
    plan.channels = top(score, c.hidden_size);
  } else {
    plan.channels = iota(orig.hidden_size);
  }
  return plan;
}

std::string MinitronPlan::describe() const {
  const LlamaConfig& a = original;
  const LlamaConfig& b = config;
  std::vector<int64_t> dropped;
  for (int64_t i = 0, k = 0; i < a.num_hidden_layers; ++i) {
    if (k < static_cast<int64_t>(layers.size()) && layers[k] == i) ++k;
    else dropped.push_back(i);
  }
  const double pa = static_cast<double>(a.num_parameters()), pb = static_cast<double>(b.num_parameters());
  return fmt::format(
      "hidden_size {} -> {}, intermediate_size {} -> {}, num_attention_heads {} -> {} "
      "(kv {}, head_dim {}), num_hidden_layers {} -> {}{}; parameters {} -> {} ({:.1f}%)",
      a.hidden_size, b.hidden_size, a.intermediate_size, b.intermediate_size,
      a.num_attention_heads, b.num_attention_heads, b.kv_heads(), b.head_size(),
      a.num_hidden_layers, b.num_hidden_layers,
      dropped.empty() ? "" : " (dropped " + join(dropped) + ")", a.num_parameters(),
      b.num_parameters(), pa > 0 ? 100.0 * pb / pa : 0.0);
}

LlamaForCausalLM apply_minitron(LlamaForCausalLM& model, const MinitronPlan& plan) {
  const LlamaConfig& c = model->config();
  const LlamaConfig& o = plan.original;
  CONDENSE_CHECK(to_hf_json(c) == to_hf_json(o),
                 "minitron: the plan was made for another model (hidden_size {}, "
                 "num_hidden_layers {}; this model: {}, {})",
                 o.hidden_size, o.num_hidden_layers, c.hidden_size, c.num_hidden_layers);
  const size_t n = plan.layers.size();
  CONDENSE_CHECK(static_cast<int64_t>(n) == plan.config.num_hidden_layers && plan.neurons.size() == n &&
                     plan.heads.size() == n &&
                     static_cast<int64_t>(plan.channels.size()) == plan.config.hidden_size,
                 "minitron: inconsistent plan ({} layers, {} neuron lists, {} head lists, {} "
                 "channels for hidden_size {})", n, plan.neurons.size(), plan.heads.size(),
                 plan.channels.size(), plan.config.hidden_size);

  LlamaForCausalLM out = new_model_like(model, plan.config);
  at::Tensor ref = model->model->embed_tokens->weight;
  auto index = [&](const std::vector<int64_t>& v, int64_t bound, const char* what) {
    for (int64_t x : v)
      CONDENSE_CHECK(x >= 0 && x < bound, "minitron: plan keeps {} {} of {}", what, x, bound);
    return at::tensor(v, at::kLong).to(ref.device());
  };
  const int64_t hd = o.head_size();
  at::Tensor ch = index(plan.channels, o.hidden_size, "channel");

  auto src = model->named_parameters();
  auto dst = out->named_parameters();
  size_t assigned = 0;
  at::NoGradGuard no_grad;
  auto assign = [&](const std::string& to, const std::string& from, at::Tensor rows,
                    at::Tensor cols) {
    const at::Tensor* s = src.find(from);
    at::Tensor* d = dst.find(to);
    CONDENSE_CHECK(s && d, "minitron: no tensor '{}' to slice into '{}'", from, to);
    at::Tensor t = *s;
    if (rows.defined()) t = t.index_select(0, rows);
    if (cols.defined()) t = t.index_select(1, cols);
    CONDENSE_CHECK(d->sizes() == t.sizes(), "minitron: slice of '{}' does not fit '{}'", from, to);
    d->copy_(t);
    ++assigned;
  };
  assign("model.embed_tokens.weight", "model.embed_tokens.weight", {}, ch);
  assign("model.norm.weight", "model.norm.weight", ch, {});
  if (!o.tie_word_embeddings) assign("lm_head.weight", "lm_head.weight", {}, ch);
  for (size_t j = 0; j < n; ++j) {
    const int64_t i = plan.layers[j];
    CONDENSE_CHECK(i >= 0 && i < o.num_hidden_layers && (j == 0 || i > plan.layers[j - 1]),
                   "minitron: plan layers {} are not ascending indices below {}",
                   join(plan.layers), o.num_hidden_layers);
    at::Tensor nr = index(plan.neurons[j], o.intermediate_size, "neuron");
    index(plan.heads[j], o.num_attention_heads, "head");
    std::vector<int64_t> rows;  // q_proj rows / o_proj columns of the kept heads
    for (int64_t h : plan.heads[j])
      for (int64_t d = 0; d < hd; ++d) rows.push_back(h * hd + d);
    at::Tensor qr = at::tensor(rows, at::kLong).to(ref.device());
    auto to = [&](const char* m) { return weight_name(static_cast<int64_t>(j), m); };
    auto from = [&](const char* m) { return weight_name(i, m); };
    assign(to("input_layernorm"), from("input_layernorm"), ch, {});
    assign(to("post_attention_layernorm"), from("post_attention_layernorm"), ch, {});
    if (o.is_gemma()) {  // the norms around Gemma's MLP
      assign(to("pre_feedforward_layernorm"), from("pre_feedforward_layernorm"), ch, {});
      assign(to("post_feedforward_layernorm"), from("post_feedforward_layernorm"), ch, {});
    }
    assign(to("self_attn.q_proj"), from("self_attn.q_proj"), qr, ch);
    assign(to("self_attn.k_proj"), from("self_attn.k_proj"), {}, ch);
    assign(to("self_attn.v_proj"), from("self_attn.v_proj"), {}, ch);
    if (o.qkv_bias) {  // Qwen2: the kept heads' q biases; k/v heads all stay
      auto bias = [&](int64_t layer, const char* m) { return weight_name(layer, m, "bias"); };
      const int64_t jj = static_cast<int64_t>(j);
      assign(bias(jj, "self_attn.q_proj"), bias(i, "self_attn.q_proj"), qr, {});
      assign(bias(jj, "self_attn.k_proj"), bias(i, "self_attn.k_proj"), {}, {});
      assign(bias(jj, "self_attn.v_proj"), bias(i, "self_attn.v_proj"), {}, {});
    }
    if (o.qk_norm) {  // Qwen3, Gemma 3: one [head_dim] weight each, shared by the heads, kept whole
      assign(to("self_attn.q_norm"), from("self_attn.q_norm"), {}, {});
      assign(to("self_attn.k_norm"), from("self_attn.k_norm"), {}, {});
    }
    assign(to("self_attn.o_proj"), from("self_attn.o_proj"), ch, qr);
    assign(to("mlp.gate_proj"), from("mlp.gate_proj"), nr, ch);
    assign(to("mlp.up_proj"), from("mlp.up_proj"), nr, ch);
    assign(to("mlp.down_proj"), from("mlp.down_proj"), ch, nr);
  }
  // Every tensor of the new model must have come from a slice: a parameter kind added to the
  // model later fails here instead of keeping its random initialization.
  CONDENSE_CHECK(assigned == dst.size(), "minitron: sliced {} of the new model's {} tensors",
                 assigned, dst.size());
  return out;
}

}  // namespace condense
