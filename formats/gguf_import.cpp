#include "formats/gguf_llama.h"
#include "formats/gguf_arch.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "core/error.h"
#include "core/finite.h"
#include "core/shape.h"
#include "data/tokenizer_file.h"
#include "io/gguf_reader.h"
#include "io/mapped_file.h"
#include "text/tokenizer.h"
#include "formats/fused_projections.h"
#include "formats/hf_import.h"
#include "model/rope.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"
#include "io/atomic_file.h"

namespace condense {

using namespace gguf_arch;

namespace {

// The rotated channels per head (rope.dimension_count, where present; absent, whole heads).
// llama.cpp's phi3 graph rotates the first rope.dimension_count (Phi-4-mini: 96 of 128), which
// becomes partial_rotary_factor; its llama graph refuses anything but whole heads, and so does
// condense for every architecture but phi3.
void read_rotary_dim(const GgufReader& r, const ArchKeys& k, LlamaConfig& c, const std::string& path) {
  if (!r.has(k("rope.dimension_count"))) return;
  const int64_t rotary = static_cast<int64_t>(r.get_uint(k("rope.dimension_count")));
  if (rotary == c.head_size()) return;
  CONDENSE_CHECK(k.arch == "phi3", "{}: {} is {} but the heads are {} wide; partial rotary "
                 "embeddings are read for the phi3 architecture only", path, k("rope.dimension_count"),
                 rotary, c.head_size());
  CONDENSE_CHECK(rotary >= 2 && rotary < c.head_size() && rotary % 2 == 0, "{}: {} is {}, expected an "
                 "even count of channels up to the head width {}", path, k("rope.dimension_count"),
                 rotary, c.head_size());
  c.partial_rotary_factor = partial_rotary_factor_for(rotary, c.head_size());
}

// RoPE as llama.cpp reads it for the llama architecture: whole heads rotated (a narrower
// rotary part is refused), linear scaling from llama.rope.scaling.type/factor (or the older
// llama.rope.scale_linear), Llama 3's from rope_freqs.weight. rope_freqs holds only the
// per-frequency divisors, so the Llama 3 parameters that give them are recovered (factor = the
// largest divisor; the original context from llama.rope.scaling.original_context_length, the
// frequency factors from condense's keys, else 8192, 1 and 4 as every Llama 3.1/3.2 has) and
// the file is refused unless they reproduce it. YaRN and other kinds are refused: importing them
// would give other probabilities than llama.cpp's.
RopeScaling read_rope_scaling(const GgufReader& r, const ArchKeys& k, const LlamaConfig& c,
                              const std::string& path) {
  RopeScaling out;
  if (r.has(k("rope.scaling.type"))) {
    const auto& type = r.get(k("rope.scaling.type")).value;
    CONDENSE_CHECK(type == "none" || type == "linear", "{}: {} is {}; condense reads 'none' and "
                   "'linear' (and Llama 3's rope_freqs.weight)", path, k("rope.scaling.type"), type.dump());
    if (type == "linear") out.type = "linear";
  }
  // The factor, or where it is absent the older key, as llama.cpp reads them: 1, or 0 for none,
  // is plain RoPE; a type "none" never scales.
  for (const std::string& key : {k("rope.scaling.factor"), k("rope.scale_linear")}) {
    if (!r.has(key)) continue;
    const auto& f = r.get(key).value;
    CONDENSE_CHECK(f.is_number(), "{}: {} is {}, expected a number", path, key, f.dump());
    const double factor = f.get<double>();
    if (factor != 0.0 && factor != 1.0) {
      CONDENSE_CHECK(out.type == "linear" || !r.has(k("rope.scaling.type")), "{}: {} is {} but "
                     "{} says none", path, key, f.dump(), k("rope.scaling.type"));
      out.type = "linear";
      out.factor = factor;
    }
    break;
  }
  // llama.cpp multiplies every cos and sin by this, whatever the type.
  if (r.has(k("rope.scaling.attn_factor"))) {
    const auto& f = r.get(k("rope.scaling.attn_factor")).value;
    CONDENSE_CHECK(f.is_number() && f.get<double>() == 1.0, "{}: {} is {}; condense computes RoPE "
                   "without an attention factor (only 1)", path, k("rope.scaling.attn_factor"), f.dump());
  }
  CONDENSE_CHECK(!r.has(k("rope.dimension_count")) ||
                     static_cast<int64_t>(r.get_uint(k("rope.dimension_count"))) == c.head_size(),
                 "{}: {} is {} but the heads are {} wide; partial rotary embeddings are read for the "
                 "phi3 architecture only", path, k("rope.dimension_count"),
                 r.get_uint(k("rope.dimension_count")), c.head_size());
  if (!r.has_tensor("rope_freqs.weight")) return out;
  CONDENSE_CHECK(k.arch == "llama", "{}: a {} file with rope_freqs.weight, which llama.cpp's {} graph "
                 "does not read", path, k.arch, k.arch);
  CONDENSE_CHECK(out.type.empty(), "{}: both linear RoPE scaling and rope_freqs.weight", path);
  const GgufTensorInfo& info = r.tensor("rope_freqs.weight");
  CONDENSE_CHECK(info.numel() == c.head_size() / 2, "{}: tensor 'rope_freqs.weight' has {} values, "
                 "expected one per frequency ({})", path, info.numel(), c.head_size() / 2);
  const std::vector<float> freqs = r.dequantize(info);
  out.type = "llama3";
  out.factor = *std::max_element(freqs.begin(), freqs.end());
  if (r.has(k("rope.scaling.original_context_length")))
    out.original_max_position_embeddings =
        static_cast<int64_t>(r.get_uint(k("rope.scaling.original_context_length")));
  for (auto [key, field] : {std::pair{kGgufFactorKey, &out.factor},
                            {kGgufLowFreqFactorKey, &out.low_freq_factor},
                            {kGgufHighFreqFactorKey, &out.high_freq_factor}}) {
    if (!r.has(key)) continue;
    CONDENSE_CHECK(r.get(key).value.is_number(), "{}: {} is not a number", path, key);
    *field = r.get(key).value.get<double>();
  }
  const std::vector<float> want = Rope(c.head_size(), c.rope_theta, out).freq_factors();
  for (size_t i = 0; i < freqs.size(); ++i)
    CONDENSE_CHECK(std::isfinite(freqs[i]) && std::abs(freqs[i] - want[i]) <= 1e-5 * std::abs(want[i]),
                   "{}: tensor 'rope_freqs.weight' does not follow Llama 3's rule (frequency {}: {}, "
                   "expected {} for factor {}, low_freq_factor {}, high_freq_factor {}, original "
                   "context {}); condense computes RoPE from those parameters only", path, i, freqs[i],
                   want[i], out.factor, out.low_freq_factor, out.high_freq_factor,
                   out.original_max_position_embeddings);
  return out;
}

// llama.cpp's gemma3 (src/models/gemma3.cpp): the attention scale its graph fixes, the windowed
// layers from attention.sliding_window and attention.sliding_window_pattern (a per-layer array, or
// a period, 6 where absent; no window key or 0: none), their RoPE base rope.freq_base_swa (10000
// where absent). A final logit soft cap, which its graph does not apply, is refused. Norms hold
// 1 + w already.
void read_gemma3_extras(const GgufReader& r, const ArchKeys& k, LlamaConfig& c, const std::string& path) {
  if (r.has(k("final_logit_softcapping"))) {
    const nlohmann::json& cap = r.get(k("final_logit_softcapping")).value;
    CONDENSE_CHECK(cap.is_number() && cap.get<double>() == 0.0, "{}: {} is {}, which llama.cpp's gemma3 "
                   "graph does not apply (transformers' Gemma 3 would): refused rather than read either way",
                   path, k("final_logit_softcapping"), cap.dump());
  }
  c.query_pre_attn_scalar = gemma_gguf_query_scalar(c);
  c.rope_local_theta = 10000.0;
  if (r.has(k("rope.freq_base_swa"))) {
    const nlohmann::json& base = r.get(k("rope.freq_base_swa")).value;
    CONDENSE_CHECK(base.is_number() && base.get<double>() > 0, "{}: {} is {}, expected a positive number",
                   path, k("rope.freq_base_swa"), base.dump());
    c.rope_local_theta = base.get<double>();
  }
  const int64_t window = r.has(k("attention.sliding_window"))
                             ? static_cast<int64_t>(r.get_uint(k("attention.sliding_window"))) : 0;
  if (window == 0) return;
  c.sliding_window = window;
  const std::string key = k("attention.sliding_window_pattern");
  const nlohmann::json pattern = r.has(key) ? r.get(key).value : nlohmann::json(6);
  if (pattern.is_array()) {
    CONDENSE_CHECK(static_cast<int64_t>(pattern.size()) == c.num_hidden_layers, "{}: {} has {} entries for "
                   "{} layers", path, key, pattern.size(), c.num_hidden_layers);
    for (const nlohmann::json& v : pattern) {
      CONDENSE_CHECK(v.is_boolean() || v.is_number_integer(), "{}: {} holds {}, expected 1 (windowed) or 0",
                     path, key, v.dump());
      c.sliding_window_layers.push_back(v.is_boolean() ? v.get<bool>() : v.get<int64_t>() != 0);
    }
  } else {
    CONDENSE_CHECK(pattern.is_number_integer() && pattern.get<int64_t>() >= 0, "{}: {} is {}, expected a "
                   "per-layer array or a period",
                   path, key, pattern.dump());
    c.sliding_window_layers = gemma3_gguf_window_layers(c.num_hidden_layers, pattern.get<int64_t>());
  }
}

// llama.cpp's gemma2 (src/models/gemma2-iswa.cpp): the attention scale its graph fixes, its soft
// caps (attn_logit_softcapping, final_logit_softcapping; 50 and 30 where absent, as llama.cpp's
// defaults), the window attention.sliding_window (4096 where absent) on the even layers (fixed).
// One RoPE base; norms hold 1 + w already.
void read_gemma2_extras(const GgufReader& r, const ArchKeys& k, LlamaConfig& c, const std::string& path) {
  c.query_pre_attn_scalar = gemma_gguf_query_scalar(c);
  auto positive = [&](const char* key, double fallback) {
    if (!r.has(k(key))) return fallback;
    const nlohmann::json& v = r.get(k(key)).value;
    CONDENSE_CHECK(v.is_number() && v.get<double>() > 0, "{}: {} is {}, expected a positive number", path,
                   k(key), v.dump());
    return v.get<double>();
  };
  c.attn_logit_softcapping = positive("attn_logit_softcapping", 50.0);
  c.final_logit_softcapping = positive("final_logit_softcapping", 30.0);
  c.sliding_window = r.has(k("attention.sliding_window"))
                         ? static_cast<int64_t>(r.get_uint(k("attention.sliding_window"))) : 4096;
  CONDENSE_CHECK(c.sliding_window > 0, "{}: {} is 0; llama.cpp's gemma2 windows its even layers always",
                 path, k("attention.sliding_window"));
  c.sliding_window_layers = gemma2_gguf_window_layers(c.num_hidden_layers);
}

// llama.cpp's phi3 architecture (convert_hf_to_gguf.py's Phi3MiniModel): RoPE over
// rope.dimension_count channels of each head (read_rotary_dim), a sliding window
// (attention.sliding_window, 0 for none) that caps the context (llama.cpp runs phi3 without its
// window, which equals the model up to the window's length), and for Phi-3.5 / Phi-3-128k LongRoPE:
// rope_factors_short.weight / rope_factors_long.weight, rope.scaling.original_context_length and
// rope.scaling.attn_factor. llama.cpp uses the short factors while the context is within the
// original length, as condense does after capping it there (RopeScaling's comment).
void read_phi3_extras(const GgufReader& r, const ArchKeys& k, LlamaConfig& c, const std::string& path) {
  read_rotary_dim(r, k, c, path);
  if (r.has(k("rope.scaling.type"))) {
    const auto& type = r.get(k("rope.scaling.type")).value;
    CONDENSE_CHECK(type == "none", "{}: {} is {}; condense reads phi3's LongRoPE from its "
                   "rope_factors tensors only", path, k("rope.scaling.type"), type.dump());
  }
  const bool longrope = r.has_tensor("rope_factors_short.weight") || r.has_tensor("rope_factors_long.weight");
  if (longrope) {
    RopeScaling& rs = c.rope_scaling;
    rs.type = "longrope";
    for (auto [name, out] : {std::pair{"rope_factors_short.weight", &rs.short_factor},
                             {"rope_factors_long.weight", &rs.long_factor}}) {
      CONDENSE_CHECK(r.has_tensor(name), "{}: LongRoPE needs both rope_factors_short.weight and "
                     "rope_factors_long.weight; '{}' is missing", path, name);
      const std::vector<float> v = r.dequantize(r.tensor(name));
      out->assign(v.begin(), v.end());
    }
    CONDENSE_CHECK(r.has(k("rope.scaling.original_context_length")), "{}: LongRoPE without {}", path,
                   k("rope.scaling.original_context_length"));
    rs.original_max_position_embeddings =
        static_cast<int64_t>(r.get_uint(k("rope.scaling.original_context_length")));
    rs.attention_factor = longrope_attention_factor(
        static_cast<double>(c.max_position_embeddings) / static_cast<double>(rs.original_max_position_embeddings),
        rs.original_max_position_embeddings);
    if (r.has(k("rope.scaling.attn_factor"))) {
      const auto& f = r.get(k("rope.scaling.attn_factor")).value;
      CONDENSE_CHECK(f.is_number() && f.get<double>() > 0, "{}: {} is {}, expected a positive number", path,
                     k("rope.scaling.attn_factor"), f.dump());
      rs.attention_factor = f.get<double>();
    }
    if (c.max_position_embeddings > rs.original_max_position_embeddings) {
      spdlog::warn("{}: LongRoPE: condense computes the short factors, which llama.cpp and transformers "
                   "use up to the original context {}, so the context {} becomes {}", path,
                   rs.original_max_position_embeddings, c.max_position_embeddings,
                   rs.original_max_position_embeddings);
      c.max_position_embeddings = rs.original_max_position_embeddings;
    }
  } else if (r.has(k("rope.scaling.attn_factor"))) {
    const auto& f = r.get(k("rope.scaling.attn_factor")).value;
    CONDENSE_CHECK(f.is_number() && f.get<double>() == 1.0, "{}: {} is {} without LongRoPE factors; "
                   "condense computes RoPE without an attention factor there (only 1)", path,
                   k("rope.scaling.attn_factor"), f.dump());
  }
  if (r.has(k("attention.sliding_window"))) {
    const int64_t window = static_cast<int64_t>(r.get_uint(k("attention.sliding_window")));
    if (window > 0 && window < c.max_position_embeddings) {
      spdlog::warn("{}: sliding window {} is below the context {}: condense attends to every earlier "
                   "position, which equals the window for up to {} positions, so the context becomes {}",
                   path, window, c.max_position_embeddings, window, window);
      c.max_position_embeddings = window;
    }
  }
}

}  // namespace

LlamaForCausalLM load_gguf_model(const std::string& path, std::string* tokenizer_bytes,
                                 std::string* tokenizer_problem) {
  CONDENSE_CHECK(!std::filesystem::is_directory(path), "{}: is a directory, expected a GGUF file",
                 path);
  // Mapped, not read: every tensor is dequantized out of it once.
  const auto file = MappedFile::open(path);
  GgufReader r(file->data(), file->size(), path);
  const nlohmann::json arch = r.has("general.architecture") ? r.get("general.architecture").value
                                                             : nlohmann::json();
  CONDENSE_CHECK(arch == "llama" || arch == "qwen2" || arch == "qwen3" || arch == "smollm3" ||
                     arch == "phi3" || arch == "gemma2" || arch == "gemma3",
                 "{}: general.architecture is {}, expected 'llama' (or 'qwen2', 'qwen3', 'smollm3', "
                 "'phi3', 'gemma2', 'gemma3')", path, arch.dump());
  const ArchKeys k{arch.get<std::string>()};
  if (tokenizer_bytes) {
    try {
      if (std::optional<std::string> bytes = gguf_tokenizer_bytes(r, path)) *tokenizer_bytes = *bytes;
    } catch (const Error& e) {
      if (!tokenizer_problem) throw;
      *tokenizer_problem = e.what();
    }
  }
  LlamaConfig c;
  c.qkv_bias = k.arch == "qwen2";
  c.qk_norm = k.arch == "qwen3" || k.arch == "gemma3";
  c.gemma = k.arch == "gemma2" ? 2 : k.arch == "gemma3" ? 3 : 0;
  c.vocab_size = r.tensor("token_embd.weight").ne[1];
  if (k.arch == "smollm3")
    c.no_rope_layers = smollm3_gguf_rope_layers(static_cast<int64_t>(r.get_uint(k("block_count"))));
  c.hidden_size = static_cast<int64_t>(r.get_uint(k("embedding_length")));
  c.num_hidden_layers = static_cast<int64_t>(r.get_uint(k("block_count")));
  c.intermediate_size = static_cast<int64_t>(r.get_uint(k("feed_forward_length")));
  c.num_attention_heads = static_cast<int64_t>(r.get_uint(k("attention.head_count")));
  c.num_key_value_heads = r.has(k("attention.head_count_kv"))
                              ? static_cast<int64_t>(r.get_uint(k("attention.head_count_kv")))
                              : c.num_attention_heads;
  // Head width: attention.key_length where the writer set it (models whose heads are not
  // hidden / heads wide), else hidden / heads as in llama.cpp (0: finalize() computes it).
  c.head_dim = r.has(k("attention.key_length"))
                   ? static_cast<int64_t>(r.get_uint(k("attention.key_length")))
                   : 0;
  c.max_position_embeddings = static_cast<int64_t>(r.get_uint(k("context_length")));
  const auto& eps = r.get(k("attention.layer_norm_rms_epsilon")).value;
  const auto& theta = r.has(k("rope.freq_base")) ? r.get(k("rope.freq_base")).value : nlohmann::json(10000.0);
  CONDENSE_CHECK(eps.is_number() && theta.is_number(), "{}: rms epsilon / rope base are not numbers", path);
  c.rms_norm_eps = eps.get<double>();
  c.rope_theta = theta.get<double>();
  c.tie_word_embeddings = !r.has_tensor("output.weight");
  if (c.gemma == 2) read_gemma2_extras(r, k, c, path);
  if (c.gemma == 3) read_gemma3_extras(r, k, c, path);
  if (r.has("tokenizer.ggml.bos_token_id"))
    c.bos_token_id = static_cast<int64_t>(r.get_uint("tokenizer.ggml.bos_token_id"));
  if (r.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_id = static_cast<int64_t>(r.get_uint("tokenizer.ggml.eos_token_id"));
  try {
    c.finalize();
  } catch (const Error& e) {
    fail("{0}: its {1}.* metadata do not give a valid model: {2} (hidden_size is "
         "{1}.embedding_length, intermediate_size {1}.feed_forward_length, num_hidden_layers "
         "{1}.block_count, num_attention_heads {1}.attention.head_count, num_key_value_heads "
         "{1}.attention.head_count_kv, head_dim {1}.attention.key_length or "
         "embedding_length / head_count)", path, k.arch, e.what());
  }
  if (k.arch == "phi3") {
    read_phi3_extras(r, k, c, path);
  } else {
    c.rope_scaling = read_rope_scaling(r, k, c, path);
  }
  c.finalize();
  LlamaForCausalLM model(c);
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  if (c.rope_scaling.type == "llama3") used.insert("rope_freqs.weight");  // read into the config
  if (c.rope_scaling.type == "longrope") used.insert({"rope_factors_short.weight", "rope_factors_long.weight"});
  std::map<std::string, at::Tensor> fused_cache;  // phi3: each fused tensor dequantized once
  for (auto& p : model->named_parameters()) {
    std::string gname = gguf_tensor_name(p.key(), c.is_gemma());
    // phi3 keeps q/k/v in attn_qkv (when it has no attn_q) and gate/up in ffn_up (when it has no
    // ffn_gate; ffn_up then holds both): this weight's rows of the fused tensor.
    std::optional<FusedRows> fused;
    if (k.arch == "phi3") {
      fused = fused_rows(p.key(), c);
      if (fused) {
        const bool attn = fused->fused.find("qkv_proj") != std::string::npos;
        const std::string split = std::regex_replace(gname, std::regex(attn ? R"(attn_[qkv]\.)" : R"(ffn_(gate|up)\.)"),
                                                     attn ? "attn_q." : "ffn_gate.");
        if (r.has_tensor(split)) fused.reset();
        else gname = gguf_tensor_name(fused->fused);
      }
    }
    used.insert(gname);
    const GgufTensorInfo& info = r.tensor(gname);
    const std::vector<int64_t> want =
        fused ? std::vector<int64_t>{fused->fused_rows, p.value().size(1)}
              : std::vector<int64_t>(p.value().sizes().begin(), p.value().sizes().end());
    CONDENSE_CHECK(info.torch_shape() == want, "{}: tensor '{}' has shape {}, the model expects {}", path,
                   gname, shape_str(info.torch_shape()), shape_str(want));
    at::Tensor t;
    if (fused && fused_cache.count(gname)) {
      t = fused_cache[gname];
    } else {
      std::vector<float> v = r.dequantize(info);
      t = at::from_blob(v.data(), info.torch_shape(), at::kFloat).clone();
      check_finite(t, path, gname);  // corrupt quantization scales decode to inf / NaN
      if (fused) fused_cache[gname] = t;
    }
    if (fused) {
      t = t.narrow(0, fused->begin, fused->rows);
      // The last part (v, up) read: the fused copy is not needed again.
      if (fused->begin + fused->rows == fused->fused_rows) fused_cache.erase(gname);
    }
    if (k.permutes_qk() && is_q(p.key())) t = unpermute_qk_from_gguf(t, c.num_attention_heads);
    if (k.permutes_qk() && is_k(p.key())) t = unpermute_qk_from_gguf(t, c.kv_heads());
    p.value().copy_(t);
  }
  // A tensor the model has no place for would be silently dropped (attention biases, another
  // architecture's extras): refused, naming it.
  for (const auto& t : r.tensors())
    CONDENSE_CHECK(used.count(t.name), "{}: tensor '{}' has no place in the {} model condense builds "
                   "({}); refusing to drop it", path, t.name, k.arch,
                   c.qkv_bias ? "biases on q/k/v only" : c.qk_norm ? "q/k norms, no biases" : "no biases");
  return model;
}

ImportStats import_gguf(const std::string& path, const std::string& out_path,
                        const std::string& tokenizer_path) {
  auto t0 = std::chrono::steady_clock::now();
  check_new_output(out_path);
  std::string tokenizer_bytes, problem;
  LlamaForCausalLM model = load_gguf_model(path, tokenizer_path.empty() ? &tokenizer_bytes : nullptr,
                                           &problem);
  std::string tokenizer_source = path;
  if (!tokenizer_path.empty()) {
    tokenizer_bytes = load_tokenizer_file(tokenizer_path).serialized();
    tokenizer_source = tokenizer_path;
  }
  if (tokenizer_bytes.empty())
    spdlog::warn("{}: {}; the checkpoint has none, so eval, generate and score will need "
                 "--tokenizer (or import again with --tokenizer)", path,
                 problem.empty() ? "holds no tokenizer condense reads (it reads tokenizer.ggml.model "
                                   "\"gpt2\" and \"llama\")"
                                 : "its tokenizer cannot be used: " + problem);
  else if (int64_t n = Tokenizer::from_serialized(tokenizer_bytes, tokenizer_source).vocab_size();
           n > model->config().vocab_size)
    fail("{}: the vocabulary has {} tokens but {}'s token_embd.weight {} rows", tokenizer_source, n,
         path, model->config().vocab_size);
  else if (n < model->config().vocab_size)  // [PAD] tokens dropped (data/tokenizer_file.cpp)
    spdlog::info("{}: {} tokens for {} embedding rows: the rows past them are padding", path, n,
                 model->config().vocab_size);
  RunConfig cfg;
  cfg.name = std::filesystem::path(out_path).stem().string();
  cfg.model = model->config();
  std::string recipe = to_yaml(cfg);
  parse_recipe(recipe, out_path + ":recipe");  // the recipe must read back
  write_checkpoint(out_path, model, nullptr, TrainingState{}, recipe, tokenizer_bytes);
  ImportStats st;
  for (const auto& p : model->parameters()) st.weight_bytes += p.numel() * 4;
  st.has_tokenizer = !tokenizer_bytes.empty();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace condense
