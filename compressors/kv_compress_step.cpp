#include "compressors/kv_compress_step.h"

#include <fmt/format.h>

#include <chrono>

#include "compressors/calibration.h"
#include "compressors/kv_project.h"
#include "core/error.h"

namespace condense {

KVCompressed compress_kv_cache(LlamaForCausalLM& model, const KVCompressOptions& o,
                               const std::function<std::vector<at::Tensor>()>& windows) {
  KVCompressed out;
  out.model = model;
  const LlamaConfig& c = model->config();
  // Runs a calibration pass, timing it into calibration_s.
  auto timed = [&](auto&& pass) {
    auto t0 = std::chrono::steady_clock::now();
    auto result = pass();
    out.calibration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
  };
  if (o.method == "kv-project") {
    std::vector<at::Tensor> w = windows();
    out.extra = timed([&] { return KVProjection::from_calibration(model, w); })->entries();
    out.summary = fmt::format("PCA bases of keys (after RoPE) and values for {} layers x {} KV heads "
                              "of {}; choose the cached rank with --kv-rank R (1..{}) in eval, score "
                              "and generate", c.num_hidden_layers, c.kv_heads(), c.head_size(),
                              c.head_size());
  } else if (o.method == "cskv") {
    const LowRankKVOptions& opt = o.low_rank;
    CalibrationStats stats;
    if (opt.init != "svd") {
      std::vector<at::Tensor> w = windows();
      stats = timed([&] {
        return calibrate(model, w, opt.init == "whiten" ? low_rank_kv_gram_weights(c)
                                                        : std::vector<std::string>{});
      });
    }
    out.extra = LowRankKV::from_model(model, opt, opt.init == "svd" ? nullptr : &stats)->entries();
    const int64_t full = 2 * c.kv_heads() * c.head_size();
    out.summary = fmt::format("low-rank K/V ({} init): the cache stores {} + {} of {} values per "
                              "token and layer ({:.1f}%)", opt.init, opt.key_rank, opt.value_rank,
                              full, 100.0 * static_cast<double>(opt.key_rank + opt.value_rank) / full);
  } else {
    CONDENSE_CHECK(o.method == "kv-heads", "KV compression '{}': valid: kv-heads, kv-project, cskv",
                   o.method);
    const KVMergeOptions& opt = o.merge;
    CalibrationStats stats;
    if (opt.init == "svd") {
      std::vector<at::Tensor> w = windows();
      stats = timed([&] { return calibrate(model, w, kv_merge_gram_weights(c)); });
    }
    const int64_t before = c.kv_heads(), layers = c.num_hidden_layers, d = c.head_size();
    out.model = merge_kv_heads(model, opt, &stats);
    out.summary = fmt::format("num_key_value_heads {} -> {} ({} init); KV cache per token {} -> {} "
                              "values", before, opt.kv_heads, opt.init, 2 * before * d * layers,
                              2 * opt.kv_heads * d * layers);
  }
  return out;
}

}  // namespace condense
