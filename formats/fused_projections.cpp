#include "formats/fused_projections.h"

#include <regex>

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

}  // namespace condense
