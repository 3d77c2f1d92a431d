// Checkpoints in HDF5. One file per checkpoint holds everything a resume needs:
//   <HF name>                  model tensors under Hugging Face names (model.layers.0...)
//   optimizer/<name>/{exp_avg,exp_avg_sq,step}
//   rng/torch_cpu              the global CPU generator state (dropout, sampling)
//   recipe                     the resolved recipe (YAML text)
//   config                     the model's Hugging Face config.json (text)
//   tokenizer                  the sentencepiece model (bytes)
//   root attributes            format, step, tokens_seen, loader_epoch, loader_position
// CheckpointManager writes them atomically (temporary file, fsync, rename, fsync directory),
// then points the `latest` file at the new one and removes checkpoints beyond `keep`.
#pragma once
#include <optional>
#include <string>

#include "data/loader.h"
#include "io/hdf5_file.h"
#include "model/llama.h"
#include "trainer/adamw.h"

namespace condense {

struct TrainingState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // global training tokens consumed
  LoaderCursor cursor;
};

class CheckpointManager {
 public:
  CheckpointManager(std::string dir, int64_t keep);
  // Writes step_<N>.h5 atomically, updates `latest`, prunes old ones; returns the path.
  std::string save(LlamaForCausalLM& model, const AdamW* optimizer, const TrainingState& state,
                   const std::string& recipe_yaml, const std::string& tokenizer_bytes);
  // Path of the newest complete checkpoint in the directory, if any.
  std::optional<std::string> latest() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t keep_;
};

// Read access to one checkpoint file; every error names the file and the entry.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);
  LlamaConfig config() const;
  std::string recipe_yaml() const;
  std::string tokenizer_bytes() const;
  TrainingState state() const;
  // Copies weights into `model`; every parameter must be present with its shape and no
  // unknown model tensor may be left over.
  void load_model(LlamaForCausalLM& model) const;
  void load_optimizer(AdamW& optimizer) const;
  void restore_rng() const;
  const H5File& file() const { return file_; }

 private:
  explicit Checkpoint(H5File f) : file_(std::move(f)) {}
  H5File file_;
};

// Builds a model with the checkpoint's config and weights (for eval, generate, info).
LlamaForCausalLM load_model(const std::string& checkpoint_path);

}  // namespace condense
