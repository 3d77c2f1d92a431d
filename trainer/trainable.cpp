#include "trainer/trainable.h"

#include <fmt/format.h>

#include <regex>

#include "core/error.h"

namespace condense {

std::vector<std::pair<std::string, at::Tensor>> trained_parameters(const Trainable& t) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : t.model->named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  for (const auto& m : t.modules) out.push_back(m);
  return out;
}

void set_trainable(LlamaForCausalLM& model, const std::vector<std::string>& patterns,
                   const std::string& key) {
  std::vector<std::regex> res;
  for (const std::string& p : patterns) {
    try {
      res.emplace_back(p);
    } catch (const std::regex_error& e) {
      fail("{}: '{}' is not a valid regular expression: {}", key, p, e.what());
    }
  }
  std::vector<bool> used(res.size(), false);
  for (auto& p : model->named_parameters()) {
    bool hit = false;
    for (size_t i = 0; i < res.size(); ++i)
      if (std::regex_match(p.key(), res[i])) used[i] = hit = true;
    p.value().requires_grad_(hit);
  }
  for (size_t i = 0; i < res.size(); ++i)
    CONDENSE_CHECK(used[i], "{}: '{}' matches no parameter (full match over Hugging Face names "
                   "such as model.layers.0.input_layernorm.weight, lm_head.weight)", key, patterns[i]);
}

std::string describe_trainable(const Trainable& t) {
  int64_t model_total = 0, model_trained = 0, added = 0;
  for (auto& p : t.model->named_parameters()) {
    model_total += p.value().numel();
    if (p.value().requires_grad()) model_trained += p.value().numel();
  }
  for (const auto& m : t.modules) added += m.second.numel();
  const int64_t total = model_total + added, trained = model_trained + added;
  return fmt::format("training {:.4f}M of {:.4f}M parameters ({:.3f}%): {:.4f}M of the model's, "
                     "{:.4f}M added", trained / 1e6, total / 1e6, 100.0 * trained / std::max<int64_t>(total, 1),
                     model_trained / 1e6, added / 1e6);
}

}  // namespace condense
