#include "formats/gguf_llama.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/finite.h"
#include "core/shape.h"
#include "data/tokenizer_file.h"
#include "io/gguf_reader.h"
#include "io/mapped_file.h"
#include "io/gguf_writer.h"
#include "core/base64.h"
#include "text/tokenizer.h"
#include "formats/fused_projections.h"
#include "formats/hf_import.h"
#include "formats/inference_model.h"
#include "model/rope.h"
#include "recipes/recipe_parser.h"
#include "text/bpe_tokenizer.h"
#include "trainer/checkpoint.h"
#include "io/atomic_file.h"

namespace condense {
namespace {

// Llama 3 RoPE parameters llama.cpp does not keep, written by condense's exports (the factor
// too: rope_freqs alone gives it only when some frequency is fully divided).
constexpr const char* kGgufFactorKey = "condense.rope.scaling.factor";
constexpr const char* kGgufLowFreqFactorKey = "condense.rope.scaling.low_freq_factor";
constexpr const char* kGgufHighFreqFactorKey = "condense.rope.scaling.high_freq_factor";

struct TypeChoice {
  GgmlType matrices;
  GgufFileType file_type;
};

TypeChoice parse_gguf_type(const std::string& t) {
  if (t == "f32") return {GgmlType::kF32, GgufFileType::kAllF32};
  if (t == "f16") return {GgmlType::kF16, GgufFileType::kMostlyF16};
  if (t == "bf16") return {GgmlType::kBF16, GgufFileType::kMostlyBF16};
  if (t == "q8_0") return {GgmlType::kQ8_0, GgufFileType::kMostlyQ8_0};
  fail("unknown GGUF type '{}' (valid: f32, f16, bf16, q8_0)", t);
}

// The architecture's metadata keys: "llama.block_count", "qwen2.block_count", ...
struct ArchKeys {
  std::string arch;
  std::string operator()(const char* key) const { return arch + "." + key; }
  // llama.cpp's llama and smollm3 graphs rotate adjacent pairs: their q/k rows are permuted
  // (qwen2/qwen3: NEOX).
  bool permutes_qk() const { return arch == "llama" || arch == "smollm3"; }
};

// Qwen2 (LlamaConfig::qkv_bias) and Qwen3 (qk_norm) go as llama.cpp's own qwen2 / qwen3
// architectures: the llama one with q/k/v biases or q/k norms and NEOX RoPE, which rotates the two
// halves of each head as Hugging Face does, so their q/k rows are not permuted. SmolLM3 (layers
// without RoPE) goes as llama.cpp's smollm3: llama's tensors and RoPE, no RoPE in every 4th layer.
// A model with LongRoPE goes as llama.cpp's phi3: Llama's math with NEOX RoPE, q/k/v and gate/up
// fused, LongRoPE's factors as tensors and its attention factor as a key.
std::string gguf_architecture(const LlamaConfig& c) {
  if (c.rope_scaling.type == "longrope") return "phi3";
  return c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : !c.no_rope_layers.empty() ? "smollm3" : "llama";
}

// The NoPE pattern llama.cpp's smollm3 graph fixes (hparams.n_no_rope_layer_step = 4, not a
// GGUF key): layer i applies RoPE unless (i + 1) % 4 == 0, as SmolLM3Config's default
// no_rope_layer_interval. Empty (RoPE everywhere) below 4 layers, as LlamaConfig stores it.
std::vector<int64_t> smollm3_gguf_rope_layers(int64_t layers) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < layers; ++i) out.push_back((i + 1) % 4 != 0 ? 1 : 0);
  if (layers < 4) out.clear();
  return out;
}

bool is_q(const std::string& n) { return n.find("self_attn.q_proj.weight") != std::string::npos; }
bool is_k(const std::string& n) { return n.find("self_attn.k_proj.weight") != std::string::npos; }

}  // namespace

at::Tensor permute_qk_for_gguf(const at::Tensor& w, int64_t n_head) {
  int64_t hd = w.size(0) / n_head;
  return w.reshape({n_head, 2, hd / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

at::Tensor unpermute_qk_from_gguf(const at::Tensor& w, int64_t n_head) {
  int64_t hd = w.size(0) / n_head;
  return w.reshape({n_head, hd / 2, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::string gguf_tensor_name(const std::string& n) {
  if (n == "model.embed_tokens.weight") return "token_embd.weight";
  if (n == "model.norm.weight") return "output_norm.weight";
  if (n == "lm_head.weight") return "output.weight";
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  static const std::pair<const char*, const char*> kMap[] = {
      {"input_layernorm", "attn_norm"},      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},        {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},   {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},         {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},         {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},   {"self_attn.qkv_proj", "attn_qkv"},  // phi3's fused
      {"mlp.gate_up_proj", "ffn_up"}};
  std::smatch m;
  if (std::regex_match(n, m, layer))
    for (const auto& [hf, gg] : kMap)
      if (m[2] == hf) return "blk." + m[1].str() + "." + gg + "." + m[3].str();
  fail("no GGUF name for tensor '{}'", n);
}

namespace {

uint32_t u32(int64_t v) {
  CONDENSE_CHECK(v >= 0 && v <= int64_t(UINT32_MAX), "GGUF export: {} does not fit a u32", v);
  return static_cast<uint32_t>(v);
}

// The sentencepiece vocabulary as llama.cpp's "llama" tokenizer: pieces, scores, token types
// (1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte; embedding rows past the
// vocabulary are unused padding), plus the exact model under kGgufSentencepieceKey.
void write_sentencepiece_vocabulary(GgufWriter& w, const Tokenizer& tok, int64_t model_vocab) {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    pieces.push_back(tok.piece(id));
    scores.push_back(tok.score(id));
    types.push_back(tok.token_type(id));
  }
  for (int64_t id = tok.vocab_size(); id < model_vocab; ++id) {  // padded embedding rows
    pieces.push_back(fmt::format("[PAD{}]", id));
    scores.push_back(-1000.0f);
    types.push_back(5);
  }
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", pieces);
  w.add_f32_array("tokenizer.ggml.scores", scores);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  w.add_u32("tokenizer.ggml.bos_token_id", u32(tok.bos_id()));
  w.add_u32("tokenizer.ggml.eos_token_id", u32(tok.eos_id()));
  w.add_u32("tokenizer.ggml.unknown_token_id", u32(tok.unk_id()));
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  w.add_bool("tokenizer.ggml.add_space_prefix", tok.adds_space_prefix());
  // The exact sentencepiece model, so `condense score OUT.gguf` needs no --tokenizer; llama.cpp
  // ignores keys it does not know.
  w.add_string(kGgufSentencepieceKey, base64_encode(tok.serialized()));
}

// A byte-level BPE as llama.cpp's "gpt2" tokenizer, with the keys its converter writes: tokens,
// token types, merges, the pre-tokenizer name ("gpt-2" for GPT-2's own), special ids,
// add_bos/add_eos and the chat template. Embedding rows past the vocabulary are unused padding.
void write_bpe_vocabulary(GgufWriter& w, const BpeVocabulary& v, int64_t model_vocab) {
  std::vector<std::string> tokens = v.tokens;
  std::vector<int32_t> types = v.token_types;
  if (types.empty()) types.assign(tokens.size(), static_cast<int32_t>(BpeTokenType::kNormal));
  for (int64_t id = static_cast<int64_t>(tokens.size()); id < model_vocab; ++id) {
    tokens.push_back(fmt::format("[PAD{}]", id));
    types.push_back(static_cast<int32_t>(BpeTokenType::kUnused));
  }
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", v.pre_tokenizer == "gpt2" ? "gpt-2" : v.pre_tokenizer);
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  w.add_string_array("tokenizer.ggml.merges", v.merges);
  auto id = [&](const char* key, const std::optional<int32_t>& value) {
    if (value) w.add_u32(key, static_cast<uint32_t>(*value));
  };
  id("tokenizer.ggml.bos_token_id", v.bos_id);
  id("tokenizer.ggml.eos_token_id", v.eos_id);
  id("tokenizer.ggml.padding_token_id", v.pad_id);
  id("tokenizer.ggml.unknown_token_id", v.unk_id);
  w.add_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.add_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (!v.chat_template.empty()) w.add_string("tokenizer.chat_template", v.chat_template);
  if (!v.normalizer.empty()) w.add_string(kGgufBpeNormalizerKey, v.normalizer);
}

}  // namespace

GgufExportStats export_gguf(const std::string& checkpoint_path, const std::string& out_path,
                            const std::string& type) {
  auto t0 = std::chrono::steady_clock::now();
  TypeChoice choice = parse_gguf_type(type);
  check_new_output(out_path);
  Checkpoint ckpt = Checkpoint::open(checkpoint_path);
  std::string tok_bytes = ckpt.tokenizer_bytes();
  CONDENSE_CHECK(!tok_bytes.empty(), "{}: the checkpoint has no tokenizer; a GGUF for llama.cpp "
                 "needs one (import with --tokenizer T.model)", checkpoint_path);
  Tokenizer tok = Tokenizer::from_serialized(tok_bytes, checkpoint_path + ":tokenizer");
  LlamaForCausalLM model = load_inference_model(ckpt);
  detach_kv_compression(model);  // the plain Llama (GGUF has no place for the compression)
  const LlamaConfig& c = model->config();
  CONDENSE_CHECK(tok.vocab_size() <= c.vocab_size, "{}: tokenizer has {} pieces, more than the "
                 "model's vocab_size {}", checkpoint_path, tok.vocab_size(), c.vocab_size);

  const ArchKeys k{gguf_architecture(c)};
  if (c.qkv_bias) {
    // llama.cpp's qwen2 graph reads q as [hidden, hidden].
    CONDENSE_CHECK(c.num_attention_heads * c.head_size() == c.hidden_size, "{}: a Qwen2 model "
                   "whose heads are not hidden_size / num_attention_heads wide (head_dim {}) has no "
                   "GGUF form llama.cpp reads", checkpoint_path, c.head_size());
  }
  if (k.arch == "smollm3") {
    // llama.cpp fixes the NoPE layers at every 4th; another pattern (a depth-pruned SmolLM3's)
    // would run with RoPE where the model has none, or the reverse.
    CONDENSE_CHECK(c.no_rope_layers == smollm3_gguf_rope_layers(c.num_hidden_layers), "{}: the "
                   "model's layers without RoPE ({}: no_rope_layers, 0 = none) are not every 4th "
                   "layer, the only pattern llama.cpp's smollm3 graph reads; export to Hugging Face "
                   "(export --format hf) keeps the pattern", checkpoint_path,
                   nlohmann::json(c.no_rope_layers).dump());
  }
  // llama.cpp's phi3 graph is a plain Llama's besides LongRoPE, and reads attn_qkv as
  // [hidden, hidden + 2 kv widths] (a Minitron head pruning makes the q part narrower).
  CONDENSE_CHECK(k.arch != "phi3" || attention_extras(c).empty(), "{}: a model with LongRoPE and {} "
                 "has no GGUF form llama.cpp reads", checkpoint_path, attention_extras(c));
  CONDENSE_CHECK(k.arch != "phi3" || c.num_attention_heads * c.head_size() == c.hidden_size, "{}: a "
                 "LongRoPE (phi3) model whose heads are not hidden_size / num_attention_heads wide "
                 "(head_dim {}, {} heads, hidden {}) has no GGUF form llama.cpp reads; export to "
                 "Hugging Face keeps it", checkpoint_path, c.head_size(), c.num_attention_heads,
                 c.hidden_size);
  // llama.cpp's qwen2, qwen3 and smollm3 graphs have no rope_freqs tensor.
  CONDENSE_CHECK(k.arch == "llama" || c.rope_scaling.type != "llama3", "{}: a {} model with Llama 3 "
                 "RoPE scaling has no GGUF form llama.cpp reads", checkpoint_path, k.arch);
  GgufWriter w;
  w.add_string("general.architecture", k.arch);
  w.add_string("general.name", std::filesystem::path(checkpoint_path).stem().string());
  w.add_u32("general.file_type", static_cast<uint32_t>(choice.file_type));
  w.add_u32("general.quantization_version", 2);
  w.add_u32("general.alignment", kGgufDefaultAlignment);
  w.add_u32(k("vocab_size"), u32(c.vocab_size));
  w.add_u32(k("context_length"), u32(c.max_position_embeddings));
  w.add_u32(k("embedding_length"), u32(c.hidden_size));
  w.add_u32(k("block_count"), u32(c.num_hidden_layers));
  w.add_u32(k("feed_forward_length"), u32(c.intermediate_size));
  w.add_u32(k("rope.dimension_count"), u32(c.head_size()));
  w.add_u32(k("attention.head_count"), u32(c.num_attention_heads));
  w.add_u32(k("attention.head_count_kv"), u32(c.kv_heads()));
  w.add_u32(k("attention.key_length"), u32(c.head_size()));
  w.add_u32(k("attention.value_length"), u32(c.head_size()));
  w.add_f32(k("attention.layer_norm_rms_epsilon"), static_cast<float>(c.rms_norm_eps));
  w.add_f32(k("rope.freq_base"), static_cast<float>(c.rope_theta));
  // RoPE scaling as llama.cpp's converter writes it: linear as two keys, Llama 3's as the
  // per-frequency divisors in rope_freqs.weight (written after the parameters below).
  if (c.rope_scaling.type == "linear") {
    w.add_string(k("rope.scaling.type"), "linear");
    w.add_f32(k("rope.scaling.factor"), static_cast<float>(c.rope_scaling.factor));
  }
  if (k.arch == "phi3") {  // as convert_hf_to_gguf.py's Phi3MiniModel writes them
    w.add_u32(k("rope.scaling.original_context_length"), u32(c.rope_scaling.original_max_position_embeddings));
    w.add_f32(k("rope.scaling.attn_factor"), static_cast<float>(c.rope_scaling.attention_factor));
    w.add_u32(k("attention.sliding_window"), 0);  // none
  }

  if (tok.bpe() && !tok.bpe()->vocab().normalizer.empty())
    spdlog::warn("{}: the tokenizer normalizes text to NFC first, which llama.cpp does not do: "
                 "text not already in NFC tokenizes otherwise there (condense reads the GGUF back "
                 "with NFC: {})", checkpoint_path, kGgufBpeNormalizerKey);
  if (tok.bpe()) write_bpe_vocabulary(w, tok.bpe()->vocab(), c.vocab_size);
  else write_sentencepiece_vocabulary(w, tok, c.vocab_size);

  at::NoGradGuard no_grad;
  uint64_t weight_bytes = 0;
  const auto params = model->named_parameters();
  for (const auto& p : params) {
    std::string name = p.key();
    at::Tensor t = p.value().detach().to(at::kFloat).contiguous();
    if (k.arch == "phi3") {  // fused as phi3 keeps them: written at q and at gate, with their parts
      if (std::optional<FusedRows> f = fused_rows(name, c)) {
        if (f->begin != 0) continue;  // k, v, up: inside the fused tensor already written
        const bool attn = f->fused.find("qkv_proj") != std::string::npos;
        std::vector<at::Tensor> parts;
        for (const char* part : attn ? std::vector<const char*>{"q", "k", "v"} : std::vector<const char*>{"gate", "up"}) {
          const std::string part_name = std::regex_replace(name, std::regex(attn ? R"(\.q_proj\.)" : R"(\.gate_proj\.)"),
                                                           std::string(".") + part + "_proj.");
          parts.push_back(params[part_name].detach().to(at::kFloat));
        }
        t = at::cat(parts).contiguous();
        name = f->fused;
      }
    }
    if (k.permutes_qk() && is_q(name)) t = permute_qk_for_gguf(t, c.num_attention_heads);
    if (k.permutes_qk() && is_k(name)) t = permute_qk_for_gguf(t, c.kv_heads());
    GgmlType gt = t.dim() == 1 ? GgmlType::kF32 : choice.matrices;
    if (gt == GgmlType::kQ8_0 && t.size(-1) % kQ8_0Block != 0) gt = GgmlType::kF16;
    w.add_tensor(gguf_tensor_name(name), t, gt);
    weight_bytes += t.nbytes();
  }
  if (c.rope_scaling.type == "longrope") {
    for (auto [tensor, factors] : {std::pair{"rope_factors_short.weight", &c.rope_scaling.short_factor},
                                   {"rope_factors_long.weight", &c.rope_scaling.long_factor}}) {
      std::vector<float> f(factors->begin(), factors->end());
      w.add_tensor(tensor, at::from_blob(f.data(), {static_cast<int64_t>(f.size())}, at::kFloat).clone(),
                   GgmlType::kF32);
    }
  }
  if (c.rope_scaling.type == "llama3") {
    // llama.cpp reads only the divisors; the parameters go along so that condense reads them
    // back exactly (the original context under llama.cpp's key, the frequency factors under
    // condense's own, which llama.cpp ignores).
    w.add_u32(k("rope.scaling.original_context_length"),
              u32(c.rope_scaling.original_max_position_embeddings));
    w.add_f32(kGgufFactorKey, static_cast<float>(c.rope_scaling.factor));
    w.add_f32(kGgufLowFreqFactorKey, static_cast<float>(c.rope_scaling.low_freq_factor));
    w.add_f32(kGgufHighFreqFactorKey, static_cast<float>(c.rope_scaling.high_freq_factor));
    std::vector<float> factors = Rope(c).freq_factors();
    w.add_tensor("rope_freqs.weight",
                 at::from_blob(factors.data(), {static_cast<int64_t>(factors.size())}, at::kFloat).clone(),
                 GgmlType::kF32);
  }
  w.write(out_path);
  GgufExportStats st;
  st.bytes_written = std::filesystem::file_size(out_path);
  st.weight_bytes = weight_bytes;
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

namespace {

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
  if (r.has(k("rope.dimension_count"))) {
    const uint64_t rotary = r.get_uint(k("rope.dimension_count"));
    CONDENSE_CHECK(static_cast<int64_t>(rotary) == c.head_size(), "{}: {} is {} but the heads are {} "
                   "wide; partial rotary embeddings are not supported", path, k("rope.dimension_count"),
                   rotary, c.head_size());
  }
  bool has_freqs = false;
  for (const auto& t : r.tensors()) has_freqs |= t.name == "rope_freqs.weight";
  if (!has_freqs) return out;
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

// llama.cpp's phi3 architecture (convert_hf_to_gguf.py's Phi3MiniModel): whole-head RoPE
// (rope.dimension_count), a sliding window (attention.sliding_window, 0 for none) that caps the
// context as a Hugging Face Phi-3's does, and for Phi-3.5 / Phi-3-128k LongRoPE:
// rope_factors_short.weight / rope_factors_long.weight, rope.scaling.original_context_length and
// rope.scaling.attn_factor. llama.cpp uses the short factors while the context is within the
// original length, as condense does after capping it there (RopeScaling's comment).
void read_phi3_extras(const GgufReader& r, const ArchKeys& k, LlamaConfig& c, const std::string& path) {
  if (r.has(k("rope.dimension_count"))) {
    const uint64_t rotary = r.get_uint(k("rope.dimension_count"));
    CONDENSE_CHECK(static_cast<int64_t>(rotary) == c.head_size(), "{}: {} is {} but the heads are {} "
                   "wide; partial rotary embeddings (Phi-4-mini's) are not supported", path,
                   k("rope.dimension_count"), rotary, c.head_size());
  }
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
    const double factor = static_cast<double>(c.max_position_embeddings) /
                          static_cast<double>(rs.original_max_position_embeddings);
    rs.attention_factor = factor <= 1.0 ? 1.0
                          : std::sqrt(1 + std::log(factor) /
                                              std::log(static_cast<double>(rs.original_max_position_embeddings)));
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
                     arch == "phi3",
                 "{}: general.architecture is {}, expected 'llama' (or 'qwen2', 'qwen3', 'smollm3', "
                 "'phi3')", path, arch.dump());
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
  c.qk_norm = k.arch == "qwen3";
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
  bool has_output = false;
  for (const auto& t : r.tensors()) has_output |= t.name == "output.weight";
  c.tie_word_embeddings = !has_output;
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
    std::string gname = gguf_tensor_name(p.key());
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
