#include "formats/context_export.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/hash.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "formats/inference_model.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "condense-context-compressor/1";
constexpr const char* kTensors = "context_compressor.safetensors";
constexpr const char* kConfig = "context_compressor.json";

}  // namespace

std::string decoder_fingerprint(LlamaForCausalLM& decoder) {
  at::Tensor w = decoder->model->embed_tokens->weight.detach().to(at::kCPU, at::kFloat).contiguous();
  return sha256_hex(std::string(static_cast<const char*>(w.data_ptr()), w.numel() * sizeof(float)));
}

namespace {

// The decoder's RoPE and attention pattern (theta, scaling, SmolLM3's NoPE layers, a partial
// rotary width, sliding windows, as config.json writes them): the embedding alone does not tell
// apart the same weights imported with another rope_scaling.
nlohmann::json decoder_rope(const LlamaConfig& c) {
  const nlohmann::json hf = to_hf_json(c);
  nlohmann::json rope = {{"rope_theta", hf["rope_theta"]},
                         {"rope_scaling", hf.contains("rope_scaling") ? hf["rope_scaling"] : nlohmann::json()}};
  // SmolLM3's layers without RoPE, a partial rotary width, sliding windows and Gemma 3's local RoPE
  // base (only where the
  // model has them: older exports of models without them stay loadable; one of a partial-RoPE
  // decoder made before the width joined the fingerprint, 2026-12-07, is refused: re-export it).
  for (const char* key : {"no_rope_layers", "partial_rotary_factor", "sliding_window", "layer_types",
                          "rope_local_base_freq"})
    if (hf.contains(key) && !hf[key].is_null()) rope[key] = hf[key];
  return rope;
}

}  // namespace

int64_t export_context_compressor(const std::string& checkpoint_path, const std::string& out_dir) {
  Checkpoint ckpt = Checkpoint::open(checkpoint_path);
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), checkpoint_path + ":recipe");
  CONDENSE_CHECK(cfg.kind == "context_compressor", "{} is a run of kind {}, not a context compressor",
                 checkpoint_path, cfg.kind);
  StoredTensors stored = compressor_tensors(ckpt.file());
  CONDENSE_CHECK(!stored.tensors.empty(), "{}: no context compressor tensors", checkpoint_path);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [name, t] : stored.tensors) tensors.emplace_back(name, t.to(at::kFloat).contiguous());
  LlamaForCausalLM decoder = load_inference_model(ckpt);
  const LlamaConfig& c = decoder->config();
  nlohmann::json j = {{"format", kFormat},
                      {"method", cfg.context.method},
                      {"recipe", ckpt.recipe_yaml()},
                      {"decoder", {{"embedding_sha256", decoder_fingerprint(decoder)},
                                   {"hidden_size", c.hidden_size},
                                   {"vocab_size", c.vocab_size},
                                   {"num_hidden_layers", c.num_hidden_layers},
                                   {"rope", decoder_rope(c)},
                                   {"checkpoint", checkpoint_path}}}};
  write_safetensors((fs::path(out_dir) / kTensors).string(), tensors,
                    {{"format", "pt"}, {"condense", kFormat}, {"method", cfg.context.method}});
  write_text_atomically((fs::path(out_dir) / kConfig).string(), j.dump(2) + "\n");
  return static_cast<int64_t>(tensors.size());
}

LoadedCompressor load_exported_compressor(const std::string& dir, LlamaForCausalLM& decoder,
                                            const std::string& decoder_source) {
  const std::string config_path = (fs::path(dir) / kConfig).string();
  CONDENSE_CHECK(fs::is_regular_file(config_path), "{}: no {} (write one with `condense export RUN OUT "
                 "--format hf` of a context_compressor run)", dir, kConfig);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", config_path, e.what());
  }
  CONDENSE_CHECK(j.is_object() && j.value("format", "") == kFormat && j.contains("recipe") &&
                     j.contains("decoder") && j["decoder"].contains("embedding_sha256"),
                 "{}: expected format {} with recipe and decoder.embedding_sha256", config_path, kFormat);
  const std::string want = j["decoder"]["embedding_sha256"].get<std::string>();
  const std::string have = decoder_fingerprint(decoder);
  CONDENSE_CHECK(have == want, "{}: this compressor belongs to the decoder {} ({}, hidden {}), not to {} "
                 "(embedding {}, hidden {}); use it with the decoder it was trained against", dir,
                 want.substr(0, 16), j["decoder"].value("checkpoint", "?"),
                 j["decoder"].value("hidden_size", int64_t{0}), decoder_source, have.substr(0, 16),
                 decoder->config().hidden_size);
  // Exports from before the decoder's RoPE was recorded have no "rope": the embedding check only.
  if (j["decoder"].contains("rope"))
    CONDENSE_CHECK(j["decoder"]["rope"] == decoder_rope(decoder->config()), "{}: this compressor was "
                   "trained against RoPE {}, {} computes {}; use it with the decoder it was trained "
                   "against", dir, j["decoder"]["rope"].dump(), decoder_source,
                   decoder_rope(decoder->config()).dump());
  LoadedCompressor out;
  out.cfg = parse_recipe(j["recipe"].get<std::string>(), config_path + ":recipe");
  SafetensorsFile st = SafetensorsFile::open((fs::path(dir) / kTensors).string());
  StoredTensors stored{st.path(), {}};
  for (const SafetensorsEntry& e : st.entries()) stored.tensors[e.name] = st.tensor(e.name);
  out.compressor = load_context_compressor(decoder, out.cfg.context, stored);
  return out;
}

}  // namespace condense
