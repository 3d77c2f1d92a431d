#include "formats/hf_import.h"

#include "data/tokenizer_file.h"

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <set>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/finite.h"
#include "core/shape.h"
#include "formats/fused_projections.h"
#include "formats/gemma_norms.h"
#include "io/atomic_file.h"
#include "io/safetensors_shards.h"
#include "text/sentencepiece_proto.h"
#include "text/tokenizer.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"

namespace condense {
namespace fs = std::filesystem;

namespace {

// A tokenizer.model and the tokens tokenizer.json adds after its pieces (Phi-3's <|user|>,
// <|assistant|>, <|end|> at 32000+; chat fine-tunes of Llama 2): appended to the sentencepiece
// model in id order, special ones as control pieces (parsed where a prompt writes them), others as
// user-defined pieces (matched in text). Added tokens must continue the model's ids without gaps
// and be new pieces; otherwise (or when tokenizer.json cannot be read) the tokenizer is
// tokenizer.model alone, as before added tokens were read, with a warning saying why. Added
// tokens at the model's own ids (<unk>, <s>, </s>) are its pieces; one naming another piece there
// is warned about (llama.cpp's converter would rename that id).
Tokenizer with_added_tokens(const Tokenizer& sp, const std::string& json_path) {
  try {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(json_path));
    } catch (const nlohmann::json::exception& e) {
      fail("not valid JSON: {}", e.what());
    }
    if (!j.is_object() || !j.contains("added_tokens") || !j["added_tokens"].is_array()) return sp;
    std::map<int64_t, AddedPiece> added;
    for (const nlohmann::json& a : j["added_tokens"]) {
      CONDENSE_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                         a["content"].is_string(),
                     "added_tokens holds {}, expected objects with an integer id and a content string", a.dump());
      const int64_t id = a["id"].get<int64_t>();
      const std::string content = a["content"].get<std::string>();
      if (id < sp.vocab_size()) {
        if (id >= 0 && sp.piece(static_cast<int>(id)) != content)
          spdlog::warn("{}: added token '{}' has id {}, which tokenizer.model names '{}'; condense keeps "
                       "tokenizer.model's piece", json_path, content, id, sp.piece(static_cast<int>(id)));
        continue;
      }
      const bool special = a.contains("special") && a["special"].is_boolean() && a["special"].get<bool>();
      CONDENSE_CHECK(added.emplace(id, AddedPiece{content, special ? 3 : 4}).second,
                     "added token id {} is listed twice", id);
    }
    if (added.empty()) return sp;
    std::vector<AddedPiece> pieces;
    for (const auto& [id, piece] : added) {
      const int64_t want = sp.vocab_size() + static_cast<int64_t>(pieces.size());
      CONDENSE_CHECK(id == want, "added token '{}' has id {} where {} comes next (added tokens must "
                     "follow the sentencepiece model's ids without gaps)", piece.piece, id, want);
      pieces.push_back(piece);
    }
    Tokenizer out = Tokenizer::from_serialized(append_sentencepiece_pieces(sp.serialized(), pieces, json_path),
                                               json_path);
    spdlog::info("{}: {} added tokens after the {} pieces of the sentencepiece model", json_path,
                 pieces.size(), sp.vocab_size());
    return out;
  } catch (const Error& e) {
    spdlog::warn("{}: its added tokens are not used ({}); the tokenizer is tokenizer.model alone",
                 json_path, e.what());
    return sp;
  }
}

}  // namespace

HfModel load_hf_dir(const std::string& dir, const std::string& tokenizer_override) {
  CONDENSE_CHECK(fs::is_directory(dir), "{}: not a directory (expected a Hugging Face model "
                 "directory with config.json and *.safetensors)", dir);
  std::string config_path = (fs::path(dir) / "config.json").string();
  CONDENSE_CHECK(fs::exists(config_path), "{}: missing config.json", dir);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", config_path, e.what());
  }
  if (j.is_object() && j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"])
      CONDENSE_CHECK(a == "LlamaForCausalLM" || a == "MistralForCausalLM" || a == "Qwen2ForCausalLM" ||
                         a == "Qwen3ForCausalLM" || a == "SmolLM3ForCausalLM" || a == "Phi3ForCausalLM" ||
                         a == "Gemma2ForCausalLM" || a == "Gemma3ForCausalLM",
                     "{}: architecture {} is not LlamaForCausalLM (or MistralForCausalLM, "
                     "Qwen2ForCausalLM, Qwen3ForCausalLM, SmolLM3ForCausalLM, Phi3ForCausalLM, "
                     "Gemma2ForCausalLM, Gemma3ForCausalLM)",
                     config_path, a.dump());
  LlamaConfig config = from_hf_json(j, config_path);
  SafetensorsShards shards = SafetensorsShards::open(dir);

  HfModel out;
  out.model = LlamaForCausalLM(config);
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& p : out.model->named_parameters()) {
    std::string name = p.key();
    std::optional<FusedRows> fused;
    if (!shards.has(name)) fused = fused_rows(name, config);
    if (fused && shards.has(fused->fused)) name = fused->fused;
    else fused.reset();
    CONDENSE_CHECK(shards.has(name), "{}: missing tensor '{}' (required by config.json)", dir, name);
    const SafetensorsEntry& e = shards.entry(name);
    CONDENSE_CHECK(e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16",
                   "{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", shards.file_of(name),
                   name, e.dtype);
    at::Tensor t = shards.tensor(name);
    if (fused) {  // Phi-3's qkv_proj / gate_up_proj (formats/fused_projections.h)
      CONDENSE_CHECK(t.dim() == 2 && t.size(0) == fused->fused_rows && t.size(1) == p.value().size(1),
                     "{}: tensor '{}' has shape {} but config.json implies [{}, {}]", shards.file_of(name),
                     name, shape_str(t.sizes()), fused->fused_rows, p.value().size(1));
      t = t.narrow(0, fused->begin, fused->rows);
    }
    CONDENSE_CHECK(t.sizes() == p.value().sizes(), "{}: tensor '{}' has shape {} but config.json "
                   "implies {}", shards.file_of(name), name, shape_str(t.sizes()),
                   shape_str(p.value().sizes()));
    check_finite(t, shards.file_of(name), name);
    if (is_gemma_norm(name, config)) t = gemma_norm_from_hf(t);
    p.value().copy_(t);
    if (used.insert(name).second) out.weight_bytes += e.end - e.begin;
  }
  for (const std::string& name : shards.names()) {
    if (used.count(name)) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) {
      // Some writers save the tied head too; accept it only if it really is the embedding.
      at::Tensor head = shards.tensor(name);
      CONDENSE_CHECK(head.sizes() == out.model->model->embed_tokens->weight.sizes() &&
                         head.to(at::kFloat).equal(out.model->model->embed_tokens->weight),
                     "{}: tie_word_embeddings is true but 'lm_head.weight' differs from "
                     "'model.embed_tokens.weight'", shards.file_of(name));
      continue;
    }
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // old HF buffers
    fail("{}: unexpected tensor '{}' for this config.json", shards.file_of(name), name);
  }

  // --tokenizer, else a sentencepiece tokenizer.model (and tokenizer.json's added tokens after its
  // pieces), else a byte-level BPE tokenizer.json
  // (condense's own HF export writes the latter).
  std::optional<Tokenizer> tok;
  std::string tok_path = tokenizer_override;
  const std::string model_path = (fs::path(dir) / "tokenizer.model").string(),
                    json_path = (fs::path(dir) / "tokenizer.json").string();
  if (!tok_path.empty()) {
    CONDENSE_CHECK(fs::exists(tok_path), "{}: tokenizer file not found", tok_path);
    tok = load_tokenizer_file(tok_path);
  } else if (fs::exists(model_path)) {
    tok_path = model_path;
    tok = Tokenizer::load(tok_path);
    if (fs::exists(json_path)) {
      const int before = tok->vocab_size();
      tok = with_added_tokens(*tok, json_path);
      // The tokenizer is then the checkpoint's own (a run reads it from there, as from a GGUF
      // import): tokenizer.model alone would lack the added tokens.
      if (tok->vocab_size() != before) tok_path.clear();
    }
  } else if (fs::exists(json_path)) {
    // Found, not asked for: one condense cannot read (sentencepiece-style byte fallback, a
    // normalizer) leaves the import without a tokenizer, as before tokenizer.json was read.
    try {
      tok = Tokenizer::load(json_path);
      tok_path = json_path;
    } catch (const Error& e) {
      spdlog::warn("{}: not used ({}); pass --tokenizer T.model", json_path, e.what());
    }
  }
  if (tok) {
    CONDENSE_CHECK(tok->vocab_size() <= config.vocab_size, "{}: the tokenizer has {} pieces but "
                   "config.json's vocab_size is {}", tok_path, tok->vocab_size(), config.vocab_size);
    out.tokenizer_bytes = tok->serialized();
    if (!tok_path.empty()) out.tokenizer_path = fs::absolute(tok_path).string();
  }
  return out;
}

ImportStats import_hf(const std::string& dir, const std::string& out_path,
                      const std::string& tokenizer_override) {
  auto t0 = std::chrono::steady_clock::now();
  check_new_output(out_path);
  HfModel hf = load_hf_dir(dir, tokenizer_override);
  if (hf.tokenizer_bytes.empty())
    spdlog::warn("{} has no tokenizer.model or tokenizer.json: the checkpoint has no tokenizer, so "
                 "eval, generate, score and GGUF export will refuse it; pass --tokenizer T.model to "
                 "add one", dir);
  RunConfig cfg;
  cfg.name = fs::path(out_path).stem().string();
  cfg.model = hf.model->config();
  cfg.data.tokenizer = hf.tokenizer_path;
  std::string recipe = to_yaml(cfg);
  parse_recipe(recipe, out_path + ":recipe");  // the recipe must read back

  fs::path target = fs::absolute(out_path);
  CONDENSE_CHECK(fs::is_directory(target.parent_path()), "{}: directory {} does not exist",
                 out_path, target.parent_path().string());
  write_checkpoint(target.string(), hf.model, nullptr, TrainingState{}, recipe, hf.tokenizer_bytes);
  ImportStats st;
  st.weight_bytes = hf.weight_bytes;
  st.has_tokenizer = !hf.tokenizer_bytes.empty();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace condense
