#include "launch/io_commands.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>

#include "core/error.h"
#include "formats/context_export.h"
#include "formats/gguf_llama.h"
#include "formats/hf_export.h"
#include "formats/hf_import.h"
#include "recipes/recipe_parser.h"
#include "trainer/checkpoint.h"

namespace condense {

void add_io_commands(CLI::App& app, IoCommandArgs& a) {
  a.import_cmd = app.add_subcommand("import", "Hugging Face Llama directory or GGUF file -> condense checkpoint");
  a.import_cmd->add_option("source", a.source, "HF directory with config.json, *.safetensors "
                           "[, model.safetensors.index.json, tokenizer.model], or a .gguf file "
                           "(llama architecture, any type condense dequantizes)")->required();
  a.import_cmd->add_option("out", a.out, "checkpoint file to write (.h5)")->required();
  a.import_cmd->add_option("--tokenizer", a.tokenizer, "tokenizer to use instead of the source's own: "
                           "a sentencepiece .model, tokenizer.json, GGUF, or checkpoint / token store (.h5)");

  a.export_cmd = app.add_subcommand("export", "checkpoint -> Hugging Face directory or GGUF file");
  a.export_cmd->add_option("checkpoint", a.source, "checkpoint file or run directory")->required();
  a.export_cmd->add_option("out", a.out, "output directory (hf) or .gguf file (gguf)")->required();
  a.export_cmd->add_option("--format", a.format, "hf | gguf")->default_val("hf")
      ->check(CLI::IsMember({"hf", "gguf"}));
  a.export_cmd->add_option("--dtype", a.dtype, "hf: f32 | f16 | bf16; gguf: f32 | f16 | bf16 | "
                           "q8_0 (default f32)");
  a.export_cmd->add_option("--max-shard-mb", a.max_shard_mb, "hf: shard size cap in MB")
      ->default_val(2000);
  a.export_cmd->add_flag("--without-kv-projection", a.without_kv_projection, "a checkpoint with "
                         "a compressed KV cache: write its plain Llama (KV projections: the model "
                         "they project, what they compute at full rank; CSKV: the low-rank "
                         "factors multiplied into k_proj / v_proj) with an uncompressed cache; hf "
                         "also writes kv_compression.safetensors and kv_compression.json");

  a.score_cmd = app.add_subcommand("score", "per-position next-token log-probabilities of a text");
  a.score_cmd->add_option("source", a.source, "checkpoint, run directory, HF directory or .gguf")
      ->required();
  a.score_cmd->add_option("--text", a.score.text_file, "UTF-8 text file")->required();
  a.score_cmd->add_option("--json", a.score.json_out, "write the JSON here: a new file or an earlier score output (default: stdout)");
  a.score_cmd->add_option("--top-k", a.score.top_k, "alternatives listed per position")
      ->default_val(5);
  a.score_cmd->add_flag("--full", a.score.full, "every position's full log-probability vector");
  a.score_cmd->add_option("--kv-cache", a.score.kv_cache, "run the text through a KV cache: fp "
                          "(the model's dtype) or int8 (KIVI layout); default: one forward, no cache")
      ->check(CLI::IsMember({"fp", "int8"}));
  a.score_cmd->add_flag("--token-by-token", a.score.token_by_token, "with --kv-cache: one token "
                        "per step, as decoding runs");
  a.score_cmd->add_option("--tokenizer", a.score.tokenizer, "the tokenizer to score with: a sentencepiece .model, "
                          "tokenizer.json, GGUF, or checkpoint / token store (.h5)");
  a.score_cmd->add_option("--context", a.score.context_file, "a text file compressed by the "
                          "checkpoint's context compressor and read before the text");
  a.score_cmd->add_option("--context-vectors", a.score.context_vectors, "compressed context "
                          "written by `condense compress` (for this decoder: checked)");
  a.score_cmd->add_option("--kv-rank", a.score.kv_rank, "rank of the checkpoint's KV-cache "
                          "projections (prune --method kv-project; 0: full)")->default_val(0);
  a.score_cmd->add_option("--kv-budget", a.score.kv_budget, "share of the full-rank KV cache the "
                          "checkpoint's KV projections may cache (0: off): ranks from "
                          "calibration sensitivity")->default_val(0);
  a.score_cmd->add_option("--kv-granularity", a.score.kv_granularity, "--kv-budget: ranks per "
                          "layer (layer) or per KV head (head)")->default_val("layer");
  a.score_cmd->add_option("--kv-window", a.score.kv_window, "CSKV checkpoints: the last W "
                          "positions before each query read exact keys and values (0: off)")
      ->default_val(0);
  a.score_cmd->add_option("--data", a.score.data, "--kv-budget: token store for the calibration "
                          "(default: the checkpoint recipe's)");
}

int run_io_command(IoCommandArgs& a) {
  if (a.import_cmd && a.import_cmd->parsed()) {
    const bool gguf = std::filesystem::path(a.source).extension() == ".gguf";
    ImportStats st = gguf ? import_gguf(a.source, a.out, a.tokenizer) : import_hf(a.source, a.out, a.tokenizer);
    spdlog::info("imported {} -> {}: {:.1f} MB of weights in {:.2f}s ({:.1f} MB/s){}", a.source,
                 a.out, st.weight_bytes / 1e6, st.seconds, st.weight_bytes / 1e6 / st.seconds,
                 st.has_tokenizer ? "" : " (no tokenizer)");
    return 0;
  }
  if (a.export_cmd && a.export_cmd->parsed()) {
    std::string path = resolve_checkpoint_path(a.source);
    std::string dtype = a.dtype.empty() ? "f32" : a.dtype;
    // KV projections need condense's own attention: neither llama.cpp nor transformers would
    // apply them, so an export would silently be the uncompressed model.
    const Checkpoint ckpt = Checkpoint::open(path);
    const H5File& file = ckpt.file();
    CONDENSE_CHECK(a.without_kv_projection || (!file.has("kv_proj") && !file.has("cskv")),
                   "{} carries a compressed KV cache ({}), which only condense's attention "
                   "applies; {} would run the model without it. Pass --without-kv-projection to "
                   "export the plain Llama with an uncompressed cache ({}), or use condense "
                   "eval/score/generate", path, file.has("cskv") ? "CSKV factors, cskv/*"
                   : "KV projections, kv_proj/*", a.format == "gguf" ? "llama.cpp" : "transformers",
                   file.has("cskv") ? "k_proj / v_proj computing the low-rank keys and values"
                                    : "exactly the projected model at full rank");
    if (a.format == "hf") {
      CONDENSE_CHECK(a.max_shard_mb > 0, "--max-shard-mb must be positive");
      ExportStats st = export_hf(path, a.out, dtype, static_cast<uint64_t>(a.max_shard_mb * 1e6));
      spdlog::info("exported {} -> {} ({}, {} files): {:.1f} MB of weights in {:.2f}s ({:.1f} MB/s)",
                   path, a.out, dtype, st.files.size(), st.bytes_written / 1e6, st.seconds,
                   st.bytes_written / 1e6 / st.seconds);
      if (parse_recipe(ckpt.recipe_yaml(), path + ":recipe").kind == "context_compressor") {
        int64_t n = export_context_compressor(path, a.out);
        spdlog::info("context compressor: {} tensors -> {}/context_compressor.safetensors and .json "
                     "(load with `condense compress DECODER --compressor {}`)", n, a.out, a.out);
      }
    } else {
      GgufExportStats st = export_gguf(path, a.out, dtype);
      spdlog::info("exported {} -> {} (GGUF {}): {:.1f} MB of f32 weights -> {:.1f} MB file in "
                   "{:.2f}s ({:.1f} MB/s)", path, a.out, dtype, st.weight_bytes / 1e6,
                   st.bytes_written / 1e6, st.seconds, st.weight_bytes / 1e6 / st.seconds);
    }
    return 0;
  }
  if (a.score_cmd && a.score_cmd->parsed()) return run_score(a.source, a.score);
  return -1;
}

}  // namespace condense
