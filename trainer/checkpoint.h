// Checkpoints in HDF5. One file per checkpoint holds everything a resume needs:
//   <HF name>                  model tensors under Hugging Face names (model.layers.0...)
//   optimizer/<name>/<slot>    adamw: exp_avg, exp_avg_sq, step; sgd: momentum_buffer
//   rng/torch_cpu[_rank<r>]    CPU generator state of rank 0 [of every rank] (dropout)
//   recipe                     the resolved recipe (YAML text)
//   config                     the model's Hugging Face config.json (text)
//   tokenizer                  Tokenizer::serialized() (sentencepiece or byte-level BPE; bytes)
//   root attributes            format, step, tokens_seen, loader_epoch, loader_position
// CheckpointManager writes them atomically (temporary file, fsync, rename, fsync directory),
// then points the `latest` file at the new one and removes checkpoints beyond `keep`.
#pragma once
#include <map>
#include <set>
#include <optional>
#include <string>

#include "data/loader.h"
#include "io/hdf5_file.h"
#include "model/llama.h"
#include "trainer/optimizer.h"

namespace condense {

struct TrainingState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // global training tokens consumed
  LoaderCursor cursor;
  int64_t world_size = 0;   // ranks of the run that wrote it (0: not recorded, older files)
  // Which documents the weights were trained with, as TokenStore::split_signature() (empty: not
  // recorded: older files, imports, training on other text). prune and the kv kinds carry their
  // source's, so that a run from any of them can tell whether its held-out text was trained on.
  std::string data_split;
};

// Writes one checkpoint file at `path` atomically (temporary file, fsync, rename, fsync the
// directory); `extra` tensors go under their names as given (e.g. "mask/<weight>").
void write_checkpoint(const std::string& path, LlamaForCausalLM& model, const Optimizer* optimizer,
                      const TrainingState& state, const std::string& recipe_yaml,
                      const std::string& tokenizer_bytes,
                      const std::map<std::string, at::Tensor>& extra = {});

class CheckpointManager {
 public:
  CheckpointManager(std::string dir, int64_t keep);
  // Writes step_<N>.h5 atomically, updates `latest` (if that fails, the new file is removed
  // again), keeps the newest `keep` up to step N and returns the path; files of later steps
  // (an abandoned future of a resumed run) are kept and warned about once. `extra` tensors are
  // written under their names as given (e.g. per-rank RNG states). First removes temporary
  // files that a killed writer left in the directory (one writer per directory: the run lock).
  std::string save(LlamaForCausalLM& model, const Optimizer* optimizer, const TrainingState& state,
                   const std::string& recipe_yaml, const std::string& tokenizer_bytes,
                   const std::map<std::string, at::Tensor>& extra = {});
  // Path of the newest complete checkpoint in the directory, if any.
  std::optional<std::string> latest() const;
  const std::string& dir() const { return dir_; }

 private:
  void remove_stale_temporaries() const;
  std::string dir_;
  int64_t keep_;
  std::set<std::string> warned_newer_;
};

// Read access to one checkpoint file; every error names the file and the entry.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);
  LlamaConfig config() const;
  std::string recipe_yaml() const;
  std::string tokenizer_bytes() const;
  TrainingState state() const;
  // Copies weights into `model`; every parameter must be present with its shape and dtype and
  // finite values, and no unknown model tensor may be left over. load_optimizer checks the
  // optimizer's entries the same way. Errors name the file and the dataset.
  void load_model(LlamaForCausalLM& model) const;
  void load_optimizer(Optimizer& optimizer) const;
  // Restores this process's CPU generator: rank r's saved state when the checkpoint has one
  // (rng/torch_cpu_rank<r>), else rng/torch_cpu.
  void restore_rng(int rank = 0) const;
  const H5File& file() const { return file_; }

 private:
  explicit Checkpoint(H5File f) : file_(std::move(f)) {}
  // t (read as `name`) must have like's shape and dtype and, if floating, only finite values.
  void check_like(const at::Tensor& t, const at::Tensor& like, const std::string& name,
                  const char* who) const;
  H5File file_;
};

// A checkpoint argument as users give it: a file, or a run / checkpoint directory, meaning its
// latest checkpoint (DIR/latest or DIR/checkpoints/latest). Throws naming DIR if it has none.
std::string resolve_checkpoint_path(const std::string& arg);

// Builds a model with the checkpoint's config and weights (for eval, generate, info).
LlamaForCausalLM load_model(const std::string& checkpoint_path);

}  // namespace condense
