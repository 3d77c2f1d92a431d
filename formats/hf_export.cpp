#include "formats/hf_export.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/safetensors_shards.h"
#include "formats/fused_projections.h"
#include "formats/gemma_norms.h"
#include "text/tokenizer.h"
#include "formats/inference_model.h"
#include "text/bpe_tokenizer.h"
#include "trainer/checkpoint.h"

namespace condense {
namespace fs = std::filesystem;

at::ScalarType parse_export_dtype(const std::string& name) {
  if (name == "f32") return at::kFloat;
  if (name == "f16") return at::kHalf;
  if (name == "bf16") return at::kBFloat16;
  fail("unknown dtype '{}' (valid: f32, f16, bf16)", name);
}

namespace {

// A Phi3ForCausalLM's config.json (to_hf_json writes one for partial rotary embeddings):
// Phi3Config accepts a rope_scaling of exactly type, short_factor and long_factor and derives the
// attention factor from max_position_embeddings / original_max_position_embeddings, so the
// context the attention factor was derived from is recovered (condense capped its own at the
// original length) and written; an attention factor no context gives is refused.
void phi3_rope_scaling(nlohmann::json& config, const LlamaConfig& c, const std::string& checkpoint_path) {
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != "longrope") return;
  CONDENSE_CHECK(c.num_attention_heads * c.head_size() == c.hidden_size, "{}: Phi3Config counts "
                 "LongRoPE's factors from hidden_size / num_attention_heads, which is not head_dim {} "
                 "here; this model has no Phi3ForCausalLM form", checkpoint_path, c.head_size());
  const int64_t original = rs.original_max_position_embeddings;
  int64_t context = original;
  if (rs.attention_factor != 1.0) {
    // attention_factor = sqrt(1 + ln(context / original) / ln(original)), solved for context and
    // checked: the context nearest the solution whose factor is this one, in double precision
    // (from a config.json) or in float32 (a GGUF's rope.scaling.attn_factor key).
    const double guess = std::exp((rs.attention_factor * rs.attention_factor - 1) *
                                  std::log(static_cast<double>(original))) * static_cast<double>(original);
    auto matches = [&](int64_t n) {
      const double f = longrope_attention_factor(static_cast<double>(n) / static_cast<double>(original), original);
      return f == rs.attention_factor || static_cast<float>(f) == static_cast<float>(rs.attention_factor);
    };
    context = 0;
    const int64_t nearest = std::llround(guess);
    for (int64_t step = 0; step <= 2 && context == 0; ++step)
      for (int64_t n : {nearest - step, nearest + step})
        if (context == 0 && n > original && matches(n)) context = n;
    CONDENSE_CHECK(context > 0, "{}: LongRoPE's attention factor {} is not the one Phi3Config derives "
                   "for any context over the original {}; this model has no Phi3ForCausalLM form",
                   checkpoint_path, rs.attention_factor, original);
  }
  config["rope_scaling"] = {{"type", "longrope"}, {"short_factor", rs.short_factor},
                            {"long_factor", rs.long_factor}};
  config["max_position_embeddings"] = context;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> hf_state_dict(LlamaForCausalLM& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value().detach());
  return out;
}

ExportStats export_hf(const std::string& checkpoint_path, const std::string& out_dir,
                      const std::string& dtype_name, uint64_t max_shard_bytes) {
  auto t0 = std::chrono::steady_clock::now();
  at::ScalarType dtype = parse_export_dtype(dtype_name);
  fs::path target = fs::absolute(out_dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();  // "out/" names "out"
  CONDENSE_CHECK(!fs::exists(target) || (fs::is_directory(target) && fs::is_empty(target)),
                 "{}: exists and is not an empty directory; refusing to overwrite it", out_dir);
  CONDENSE_CHECK(fs::is_directory(target.parent_path()), "{}: directory {} does not exist",
                 out_dir, target.parent_path().string());
  Checkpoint ckpt = Checkpoint::open(checkpoint_path);
  LlamaForCausalLM model = load_inference_model(ckpt);
  // A compressed KV cache: the plain Llama's weights, and the compression's own tensors beside
  // them (kv_compression.safetensors + kv_compression.json naming the method and layout).
  KVCompressionParts kv = detach_kv_compression(model);
  const LlamaConfig& c = model->config();
  std::string tok_bytes = ckpt.tokenizer_bytes();

  fs::path tmp = target.parent_path() / ("." + target.filename().string() + ".export." +
                                         std::to_string(::getpid()));
  ExportStats st;
  try {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    nlohmann::json config = to_hf_json(c);
    // Phi3ForCausalLM (partial rotary embeddings) keeps q/k/v and gate/up fused.
    const bool phi3 = config["model_type"] == "phi3";
    if (phi3) phi3_rope_scaling(config, c, checkpoint_path);
    std::vector<std::pair<std::string, at::Tensor>> tensors = hf_state_dict(model);
    if (phi3) tensors = fuse_projections(tensors, c);
    for (auto& [name, t] : tensors) {
      if (is_gemma_norm(name, c)) t = gemma_norm_to_hf(t);
      t = t.to(dtype).contiguous();
      st.bytes_written += t.nbytes();
    }
    st.files = write_safetensors_shards(tmp.string(), tensors, max_shard_bytes);
    if (!kv.method.empty()) {
      std::vector<std::pair<std::string, at::Tensor>> parts(kv.tensors.begin(), kv.tensors.end());
      write_safetensors((tmp / "kv_compression.safetensors").string(), parts);
      write_text_atomically((tmp / "kv_compression.json").string(), kv.config.dump(2) + "\n");
      st.files.insert(st.files.end(), {"kv_compression.safetensors", "kv_compression.json"});
    }

    config["torch_dtype"] = dtype == at::kFloat ? "float32" : dtype == at::kHalf ? "float16" : "bfloat16";
    write_text_atomically((tmp / "config.json").string(), config.dump(2) + "\n");
    nlohmann::json gen = {{"_from_model_config", true}, {"bos_token_id", c.bos_token_id},
                          {"eos_token_id", config["eos_token_id"]}};  // an int, or the list
    write_text_atomically((tmp / "generation_config.json").string(), gen.dump(2) + "\n");
    st.files.insert(st.files.end(), {"config.json", "generation_config.json"});
    std::optional<Tokenizer> tok_opt;
    if (!tok_bytes.empty()) tok_opt = Tokenizer::from_serialized(tok_bytes, checkpoint_path + ":tokenizer");
    if (tok_opt && tok_opt->bpe()) {
      // Byte-level BPE: tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast).
      const Tokenizer& tok = *tok_opt;
      write_text_atomically((tmp / "tokenizer.json").string(), tok.bpe()->to_tokenizer_json());
      write_text_atomically((tmp / "tokenizer_config.json").string(),
                            tok.bpe()->to_tokenizer_config_json(c.max_position_embeddings));
      st.files.insert(st.files.end(), {"tokenizer.json", "tokenizer_config.json"});
    } else if (tok_opt) {
      const Tokenizer& tok = *tok_opt;
      tok.save((tmp / "tokenizer.model").string());
      nlohmann::json special = {{"bos_token", tok.piece(tok.bos_id())},
                                {"eos_token", tok.piece(tok.eos_id())},
                                {"unk_token", tok.piece(tok.unk_id())}};
      nlohmann::json tcfg = special;
      tcfg["tokenizer_class"] = "LlamaTokenizer";
      tcfg["add_bos_token"] = true;
      tcfg["add_eos_token"] = false;
      tcfg["legacy"] = true;  // plain sentencepiece behaviour, as condense tokenizes
      // A model without sentencepiece's space prefix (Gemma's): transformers' fast tokenizer,
      // converted from this one, would prepend a space to every text unless told not to.
      if (!tok.adds_space_prefix()) tcfg["add_prefix_space"] = false;
      tcfg["clean_up_tokenization_spaces"] = false;
      tcfg["model_max_length"] = c.max_position_embeddings;
      tcfg["sp_model_kwargs"] = nlohmann::json::object();
      // Unknown, control and user-defined pieces as transformers' added tokens (as Llama's own
      // tokenizer_config.json lists <unk>, <s>, </s>): its slow tokenizer splits text at them
      // first, so an appended <|end|> is one id there as in condense and llama.cpp.
      nlohmann::json added = nlohmann::json::object();
      for (int id = 0; id < tok.vocab_size(); ++id) {
        const int32_t type = tok.token_type(id);
        if (type != 2 && type != 3 && type != 4) continue;
        added[std::to_string(id)] = {{"content", tok.piece(id)}, {"lstrip", false}, {"normalized", false},
                                     {"rstrip", false}, {"single_word", false}, {"special", type != 4}};
      }
      tcfg["added_tokens_decoder"] = added;
      write_text_atomically((tmp / "tokenizer_config.json").string(), tcfg.dump(2) + "\n");
      write_text_atomically((tmp / "special_tokens_map.json").string(), special.dump(2) + "\n");
      st.files.insert(st.files.end(), {"tokenizer.model", "tokenizer_config.json",
                                       "special_tokens_map.json"});
    }
    if (fs::exists(target)) fs::remove(target);  // empty, checked above
    fs::rename(tmp, target);
    fsync_path(target.parent_path().string());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace condense
