#include "compressors/prune_masked.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <regex>

#include "compressors/calibration.h"
#include "core/error.h"

namespace condense {
namespace {

const char* kDefaultTarget = R"(model\.layers\.[0-9]+\.(self_attn\.(q|k|v|o)|mlp\.(gate|up|down))_proj\.weight)";

// Keeps the `keep` highest entries of each row of `score` [R, C]; ties keep the lower index
// (a stable sort of the negated score puts equal scores in index order).
at::Tensor keep_top_per_row(const at::Tensor& score, int64_t keep) {
  at::Tensor mask = at::zeros(score.sizes(), score.options().dtype(at::kBool));
  if (keep <= 0) return mask;
  at::Tensor order = std::get<1>(at::sort(score.neg(), /*stable=*/true, /*dim=*/1, false));
  mask.scatter_(1, order.narrow(1, 0, keep), true);
  return mask;
}

int64_t layer_of(const std::string& name) {
  static const std::regex re(R"(model\.layers\.([0-9]+)\..*)");
  std::smatch m;
  return std::regex_match(name, m, re) ? std::stoll(m[1]) : -1;
}

// Scores and prunes the named weights with the given input norms (null for magnitude).
void prune_weights(const std::vector<std::string>& names, std::map<std::string, at::Tensor>& params,
                   const CalibrationStats* stats, const MaskPruneOptions& opt, WeightMasks& masks) {
  at::NoGradGuard no_grad;
  for (const std::string& name : names) {
    at::Tensor w = params.at(name);
    at::Tensor score = w.abs().to(at::kFloat);
    if (stats) score = score * stats->input_norms(name).unsqueeze(0);
    at::Tensor mask = score_mask(score, opt.sparsity, opt.method == "wanda", opt.n, opt.m);
    w.mul_(mask);
    masks.set(name, mask);
  }
}

}  // namespace

const std::vector<std::string>& mask_prune_methods() {
  static const std::vector<std::string> names = {"magnitude", "wanda"};
  return names;
}

at::Tensor score_mask(const at::Tensor& score, double sparsity, bool per_row, int64_t n, int64_t m) {
  CONDENSE_CHECK(score.dim() == 2, "score_mask expects a matrix");
  const int64_t rows = score.size(0), cols = score.size(1);
  if (m > 0) {
    at::Tensor groups = score.reshape({rows * (cols / m), m});
    return keep_top_per_row(groups, n).reshape({rows, cols});
  }
  if (per_row) return keep_top_per_row(score, cols - static_cast<int64_t>(sparsity * cols));
  const int64_t numel = score.numel();
  return keep_top_per_row(score.reshape({1, numel}), numel - static_cast<int64_t>(sparsity * numel))
      .reshape({rows, cols});
}

std::vector<std::string> mask_prune_targets(LlamaForCausalLM& model, const MaskPruneOptions& opt) {
  const auto& methods = mask_prune_methods();
  CONDENSE_CHECK(std::find(methods.begin(), methods.end(), opt.method) != methods.end(),
                 "unknown pruning method '{}'; valid: magnitude, wanda (minitron prunes structure)",
                 opt.method);
  if (opt.m > 0) {
    CONDENSE_CHECK(opt.n >= 1 && opt.n < opt.m,
                   "pattern {}:{}: N must be in [1, M) (keep N of every M weights), got N = {}",
                   opt.n, opt.m, opt.n);
  } else {
    CONDENSE_CHECK(opt.sparsity >= 0 && opt.sparsity < 1, "sparsity must be in [0, 1), got {}",
                   opt.sparsity);
  }
  std::vector<std::regex> res;
  std::vector<std::string> sources = opt.targets.empty() ? std::vector<std::string>{kDefaultTarget} : opt.targets;
  for (const std::string& t : sources) {
    try {
      res.emplace_back(t);
    } catch (const std::regex_error& e) {
      fail("target '{}' is not a valid regular expression: {}", t, e.what());
    }
  }
  std::vector<std::string> names;
  std::vector<bool> used(res.size(), false);
  for (auto& p : model->named_parameters()) {
    bool hit = false;
    for (size_t i = 0; i < res.size(); ++i) {
      if (std::regex_match(p.key(), res[i])) used[i] = hit = true;
    }
    if (!hit) continue;
    CONDENSE_CHECK(p.value().dim() == 2, "target '{}' is not a matrix; prune projection weights",
                   p.key());
    if (opt.m > 0) {
      CONDENSE_CHECK(p.value().size(1) % opt.m == 0,
                     "pattern {}:{}: M = {} does not divide the input width {} of '{}'", opt.n,
                     opt.m, opt.m, p.value().size(1), p.key());
    }
    names.push_back(p.key());
  }
  for (size_t i = 0; i < res.size(); ++i)
    CONDENSE_CHECK(used[i], "target '{}' matches no weight of this model (names look like "
                   "model.layers.0.mlp.up_proj.weight)", sources[i]);
  return names;
}

WeightMasks prune_masked(LlamaForCausalLM& model, const MaskPruneOptions& opt,
                         const std::vector<at::Tensor>& windows, double* calibration_seconds) {
  double calib = 0;
  auto timed = [&calib](auto&& fn) {
    auto t0 = std::chrono::steady_clock::now();
    auto out = fn();
    calib += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  };
  struct Report {  // writes the calibration time on every return path
    double* out;
    double& value;
    ~Report() { if (out) *out = value; }
  } report{calibration_seconds, calib};
  std::vector<std::string> names = mask_prune_targets(model, opt);
  auto params = parameter_map(model);
  WeightMasks masks;
  if (opt.method == "magnitude") {
    prune_weights(names, params, nullptr, opt, masks);
    return masks;
  }
  CONDENSE_CHECK(!windows.empty(), "wanda needs calibration windows (activation norms)");
  if (!opt.sequential) {
    CalibrationStats stats = timed([&] { return calibrate(model, windows); });
    prune_weights(names, params, &stats, opt, masks);
    return masks;
  }
  // Layer by layer: record layer i's inputs from the already pruned layers below it, prune
  // it, then run it again (pruned) to produce the next layer's inputs.
  SequentialCalibration seq = timed([&] { return SequentialCalibration(model, windows); });
  const int64_t layers = model->config().num_hidden_layers;
  for (int64_t i = 0; i < layers; ++i) {
    std::vector<std::string> here;
    for (const std::string& n : names)
      if (layer_of(n) == i) here.push_back(n);
    if (here.empty()) {
      timed([&] { seq.advance(i); return 0; });
      continue;
    }
    CalibrationStats stats = timed([&] { return seq.record(i); });
    prune_weights(here, params, &stats, opt, masks);
    timed([&] { seq.advance(i); return 0; });
  }
  return masks;
}

}  // namespace condense
