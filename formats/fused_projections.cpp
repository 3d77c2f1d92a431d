#include "formats/fused_projections.h"

#include <ATen/ATen.h>

#include <map>
#include <regex>

#include "core/error.h"

namespace condense {

std::optional<FusedRows> fused_rows(const std::string& name, const LlamaConfig& c) {
  static const std::regex re(R"((model\.layers\.\d+\.)(self_attn|mlp)\.(q|k|v|gate|up)_proj\.weight)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return std::nullopt;
  const std::string part = m[3];
  if (m[2] == "self_attn") {
    const int64_t q = c.num_attention_heads * c.head_size(), kv = c.kv_heads() * c.head_size();
    const int64_t begin = part == "q" ? 0 : part == "k" ? q : q + kv;
    return FusedRows{m[1].str() + "self_attn.qkv_proj.weight", begin, part == "q" ? q : kv, q + 2 * kv};
  }
  const int64_t n = c.intermediate_size;
  return FusedRows{m[1].str() + "mlp.gate_up_proj.weight", part == "gate" ? 0 : n, n, 2 * n};
}

std::vector<std::pair<std::string, at::Tensor>> fuse_projections(
    const std::vector<std::pair<std::string, at::Tensor>>& split, const LlamaConfig& c) {
  std::map<std::string, at::Tensor> by_name(split.begin(), split.end());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, t] : split) {
    const std::optional<FusedRows> f = fused_rows(name, c);
    if (!f) {
      out.emplace_back(name, t);
      continue;
    }
    if (f->begin != 0) continue;  // k, v, up: inside the fused tensor written at q / gate
    const bool attn = f->fused.find("qkv_proj") != std::string::npos;
    const std::string first = attn ? ".q_proj." : ".gate_proj.";
    const size_t at = name.find(first);
    std::vector<at::Tensor> parts;
    for (const char* part : attn ? std::vector<const char*>{"q", "k", "v"} : std::vector<const char*>{"gate", "up"}) {
      const std::string part_name = name.substr(0, at) + "." + part + "_proj." + name.substr(at + first.size());
      auto it = by_name.find(part_name);
      CONDENSE_CHECK(it != by_name.end(), "fusing {}: no tensor '{}'", f->fused, part_name);
      parts.push_back(it->second);
    }
    at::Tensor fused = at::cat(parts).contiguous();
    CONDENSE_CHECK(fused.size(0) == f->fused_rows, "fusing {}: {} rows, expected {}", f->fused,
                   fused.size(0), f->fused_rows);
    out.emplace_back(f->fused, fused);
  }
  return out;
}

}  // namespace condense
