// The format subcommands of the `condense` executable: import (Hugging Face directory ->
// checkpoint), export (checkpoint -> Hugging Face directory or GGUF) and score (per-position
// log-probabilities of a text under a checkpoint, HF directory or GGUF). main.cpp adds them to
// its CLI11 app and, after parsing, lets run_io_command handle them.
#pragma once
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "formats/score.h"

namespace condense {

struct IoCommandArgs {
  CLI::App* import_cmd = nullptr;
  CLI::App* export_cmd = nullptr;
  CLI::App* score_cmd = nullptr;
  std::string source, out, format = "hf", dtype, tokenizer;
  double max_shard_mb = 2000;
  bool without_kv_projection = false;  // export: write the plain Llama of a projected checkpoint
  ScoreOptions score;
};

void add_io_commands(CLI::App& app, IoCommandArgs& args);

// Runs the parsed io subcommand and returns its exit status; -1 when none was parsed.
int run_io_command(IoCommandArgs& args);

}  // namespace condense
