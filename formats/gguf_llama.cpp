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
#include "formats/gguf_arch.h"
#include "formats/hf_import.h"
#include "formats/inference_model.h"
#include "model/rope.h"
#include "recipes/recipe_parser.h"
#include "text/bpe_tokenizer.h"
#include "trainer/checkpoint.h"
#include "io/atomic_file.h"

namespace condense {
namespace {

using namespace gguf_arch;


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

// Qwen2 (LlamaConfig::qkv_bias) and Qwen3 (qk_norm) go as llama.cpp's own qwen2 / qwen3
// architectures: the llama one with q/k/v biases or q/k norms and NEOX RoPE, which rotates the two
// halves of each head as Hugging Face does, so their q/k rows are not permuted. SmolLM3 (layers
// without RoPE) goes as llama.cpp's smollm3: llama's tensors and RoPE, no RoPE in every 4th layer.
// A model with LongRoPE or partial rotary embeddings goes as llama.cpp's phi3: Llama's math with
// NEOX RoPE over rope.dimension_count channels (llama's graph rotates whole heads), q/k/v and
// gate/up fused, LongRoPE's factors as tensors and its attention factor as a key.
// Gemma 2 / 3 go as llama.cpp's gemma2 / gemma3 (their norms hold 1 + w as condense's do; NEOX
// RoPE).
std::string gguf_architecture(const LlamaConfig& c) {
  if (c.is_gemma()) return c.gemma == 2 ? "gemma2" : "gemma3";
  if (c.rope_scaling.type == "longrope" || c.rotary_dim() != c.head_size()) return "phi3";
  return c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : !c.no_rope_layers.empty() ? "smollm3" : "llama";
}

}  // namespace

at::Tensor permute_qk_for_gguf(const at::Tensor& w, int64_t n_head) {
  int64_t hd = w.size(0) / n_head;
  return w.reshape({n_head, 2, hd / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

at::Tensor unpermute_qk_from_gguf(const at::Tensor& w, int64_t n_head) {
  int64_t hd = w.size(0) / n_head;
  return w.reshape({n_head, hd / 2, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::string gguf_tensor_name(const std::string& n, bool gemma) {
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
  static const std::pair<const char*, const char*> kGemma[] = {
      {"post_attention_layernorm", "post_attention_norm"}, {"pre_feedforward_layernorm", "ffn_norm"},
      {"post_feedforward_layernorm", "post_ffw_norm"}};
  std::smatch m;
  if (std::regex_match(n, m, layer) && gemma)
    for (const auto& [hf, gg] : kGemma)
      if (m[2] == hf) return "blk." + m[1].str() + "." + gg + "." + m[3].str();
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
  // llama.cpp's phi3 graph is a plain Llama's besides LongRoPE and partial RoPE, and reads
  // attn_qkv as [hidden, hidden + 2 kv widths] (a Minitron head pruning makes the q part narrower).
  CONDENSE_CHECK(k.arch != "phi3" || attention_extras(c).empty(), "{}: a model with LongRoPE or "
                 "partial RoPE and {} has no GGUF form llama.cpp reads", checkpoint_path, attention_extras(c));
  CONDENSE_CHECK(k.arch != "phi3" || c.num_attention_heads * c.head_size() == c.hidden_size, "{}: a "
                 "phi3 model (LongRoPE or partial RoPE) whose heads are not hidden_size / num_attention_heads wide "
                 "(head_dim {}, {} heads, hidden {}) has no GGUF form llama.cpp reads; export to "
                 "Hugging Face keeps it", checkpoint_path, c.head_size(), c.num_attention_heads,
                 c.hidden_size);
  // llama.cpp's qwen2, qwen3 and smollm3 graphs have no rope_freqs tensor.
  CONDENSE_CHECK(k.arch == "llama" || c.rope_scaling.type != "llama3", "{}: a {} model with Llama 3 "
                 "RoPE scaling has no GGUF form llama.cpp reads", checkpoint_path, k.arch);
  if (c.is_gemma()) {
    // llama.cpp's gemma graphs fix the attention scale (gguf_arch.h) and round the embedding
    // scale in float32 (condense rounds it to the weights' dtype: the same for float32 weights).
    CONDENSE_CHECK(c.query_pre_attn_scalar == gemma_gguf_query_scalar(c), "{}: this Gemma {} scales "
                   "attention by 1/sqrt({}) (query_pre_attn_scalar), llama.cpp's {} graph by "
                   "1/sqrt({}) for its {} layers; export to Hugging Face (export --format hf) keeps it",
                   checkpoint_path, c.gemma, c.query_pre_attn_scalar, k.arch, gemma_gguf_query_scalar(c),
                   c.num_hidden_layers);
  }
  // gemma2's graph soft-caps both always, at its keys' values; gemma3's neither.
  CONDENSE_CHECK(c.gemma != 2 || (c.attn_logit_softcapping > 0 && c.final_logit_softcapping > 0), "{}: this "
                 "Gemma 2 caps attention scores at {} and logits at {} (0: not), llama.cpp's gemma2 graph "
                 "always caps both; export to Hugging Face keeps it", checkpoint_path, c.attn_logit_softcapping,
                 c.final_logit_softcapping);
  // gemma2's graph reads its LM head from token_embd (an output tensor fails its tensor count).
  CONDENSE_CHECK(c.gemma != 2 || c.tie_word_embeddings, "{}: this Gemma 2 has its own LM head (untied "
                 "embeddings), which llama.cpp's gemma2 graph does not read (it uses token_embd); export to "
                 "Hugging Face keeps it", checkpoint_path);
  CONDENSE_CHECK(c.gemma != 3 || (c.attn_logit_softcapping == 0 && c.final_logit_softcapping == 0), "{}: "
                 "this Gemma 3 soft-caps (attn_logit_softcapping {}, final_logit_softcapping {}), which "
                 "llama.cpp's gemma3 graph does not; export to Hugging Face keeps it", checkpoint_path,
                 c.attn_logit_softcapping, c.final_logit_softcapping);
  // gemma2's graph windows the even layers (a model without a window is written with one as long
  // as its context, which never binds).
  bool even_windows = true;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) even_windows = even_windows && (c.window(l) > 0) == (l % 2 == 0);
  CONDENSE_CHECK(c.gemma != 2 || c.sliding_window == 0 || even_windows, "{}: this Gemma 2 windows other "
                 "layers than the even ones, which llama.cpp's gemma2 graph fixes; export to Hugging Face "
                 "keeps it", checkpoint_path);
  GgufWriter w;
  w.add_string("general.architecture", k.arch);
  w.add_string("general.name", std::filesystem::path(checkpoint_path).stem().string());
  w.add_u32("general.file_type", static_cast<uint32_t>(choice.file_type));
  w.add_u32("general.quantization_version", 2);
  w.add_u32("general.alignment", kGgufDefaultAlignment);
  w.add_u32(k("vocab_size"), u32(c.vocab_size));
  // llama.cpp attends to every earlier position in these architectures (its phi3 graph has its
  // window turned off), which equals a sliding window up to the window's length: the context
  // written is capped there.
  int64_t context = c.max_position_embeddings;
  if (c.sliding_window > 0 && c.sliding_window < context && !c.is_gemma()) {
    spdlog::warn("{}: the model attends within a sliding window of {} positions, which llama.cpp "
                 "does not apply to {}; the GGUF's context_length is the window, {} (the model's is {})",
                 checkpoint_path, c.sliding_window, k.arch, c.sliding_window, context);
    context = c.sliding_window;
  }
  w.add_u32(k("context_length"), u32(context));
  w.add_u32(k("embedding_length"), u32(c.hidden_size));
  w.add_u32(k("block_count"), u32(c.num_hidden_layers));
  w.add_u32(k("feed_forward_length"), u32(c.intermediate_size));
  w.add_u32(k("rope.dimension_count"), u32(c.rotary_dim()));
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
    const bool longrope = c.rope_scaling.type == "longrope";
    w.add_u32(k("rope.scaling.original_context_length"),
              u32(longrope ? c.rope_scaling.original_max_position_embeddings : context));
    w.add_f32(k("rope.scaling.attn_factor"), static_cast<float>(c.rope_scaling.attention_factor));
    w.add_u32(k("attention.sliding_window"), 0);  // none
  }
  if (c.gemma == 2) {
    // The window (no key: 4096 in llama.cpp; a model without one gets its context, which never
    // binds) and the caps.
    w.add_u32(k("attention.sliding_window"), u32(c.sliding_window > 0 ? c.sliding_window : context));
    w.add_f32(k("attn_logit_softcapping"), static_cast<float>(c.attn_logit_softcapping));
    w.add_f32(k("final_logit_softcapping"), static_cast<float>(c.final_logit_softcapping));
  }
  if (c.gemma == 3) {
    // The windowed layers as a per-layer pattern (llama.cpp reads an array before a period), their
    // RoPE base; without a window no key: every layer full attention on rope.freq_base.
    w.add_f32(k("rope.freq_base_swa"), static_cast<float>(c.rope_local_theta));
    if (c.sliding_window > 0) {
      w.add_u32(k("attention.sliding_window"), u32(c.sliding_window));
      std::vector<int32_t> pattern;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) pattern.push_back(c.window(l) > 0 ? 1 : 0);
      w.add_i32_array(k("attention.sliding_window_pattern"), pattern);
    }
  }

  if (tok.bpe() && !tok.bpe()->vocab().normalizer.empty())
    spdlog::warn("{}: the tokenizer normalizes text to NFC first, which llama.cpp does not do: "
                 "text not already in NFC tokenizes otherwise there (condense reads the GGUF back "
                 "with NFC: {})", checkpoint_path, kGgufBpeNormalizerKey);
  if (tok.bpe()) write_bpe_vocabulary(w, tok.bpe()->vocab(), c.vocab_size);
  else write_sentencepiece_vocabulary(w, tok, c.vocab_size);

  at::NoGradGuard no_grad;
  uint64_t weight_bytes = 0;
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value().detach());
  if (k.arch == "phi3") params = fuse_projections(params, c);  // fused as phi3 keeps them
  for (auto& [name, weight] : params) {
    at::Tensor t = weight.to(at::kFloat).contiguous();
    if (k.permutes_qk() && is_q(name)) t = permute_qk_for_gguf(t, c.num_attention_heads);
    if (k.permutes_qk() && is_k(name)) t = permute_qk_for_gguf(t, c.kv_heads());
    GgmlType gt = t.dim() == 1 ? GgmlType::kF32 : choice.matrices;
    if (gt == GgmlType::kQ8_0 && t.size(-1) % kQ8_0Block != 0) gt = GgmlType::kF16;
    w.add_tensor(gguf_tensor_name(name, c.is_gemma()), t, gt);
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

}  // namespace condense
