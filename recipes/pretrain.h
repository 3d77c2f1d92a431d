// The `pretrain` recipe kind: next-token training of a Llama model from scratch (or from
// `init` weights) on a tokenized corpus, preparing the token store on first use.
#pragma once
#include "recipes/recipe.h"
#include "data/token_store.h"
#include "trainer/checkpoint.h"

namespace condense {

int run_pretrain(const RunConfig& cfg, const RunOptions& options);

// Shared by recipe kinds: the token store the config names; one under data.cache_dir is prepared
// if it does not exist yet, a data.dataset that does not exist is refused.
// recorded_split: the split of the checkpoint a run resumes (TrainingState::data_split), so
// that a store cached under an earlier name is found.
std::string resolve_dataset(const DataConfig& data, const std::string& recorded_split = "");
// Refuses a store whose split (TokenStore::split_signature) is not `recorded`, the one the
// checkpoint `source` was trained on; an empty `recorded`, or a store without the attributes,
// passes.
void check_same_split(const std::string& recorded, const TokenStore& store, const std::string& source);

// The token store a command reads for a checkpoint (eval, prune's and the KV budget's
// calibration, context-eval): `data` when given, else the one the checkpoint's recipe names,
// built on first use, except where building it could not give the checkpoint's tokenizer (an
// imported model: a BPE, or another vocabulary than the recipe would train): then it refuses
// before minutes of tokenizing, asking for --data. Checks the store's tokenizer against the
// checkpoint's. `source` names the checkpoint in messages.
TokenStore open_checkpoint_store(const Checkpoint& ckpt, const std::string& source,
                                 const std::string& data);
// The checkpoint's recipe with the data section it was trained with: recipes written before
// data.seed existed drew the split from train.seed, which then stands in for data.seed.
RunConfig checkpoint_recipe(const Checkpoint& ckpt, const std::string& source);
// Warns when `init` was trained on another split than `store`'s (another corpus, document
// count, val_fraction or split seed): some of this run's held-out documents may then be in its
// training split, and validation reads low. The init's split is the one its checkpoint records
// (TrainingState::data_split: training writes it, prune and the kv kinds carry it); for older
// checkpoints, the store its recipe names when that store is here and the init was trained
// (step > 0; an import is not). A split that cannot be compared is said so, never an error.
void warn_if_other_split(const Checkpoint& init, const std::string& source, const TokenStore& store);
// A resume continues on the split the run was trained on: refuses, before any tokenizing, when
// `data` names another split seed, val_fraction, corpus or document count than the checkpoint's
// recipe (whose split seed was train.seed before data.seed existed), naming both.
void check_resume_split(const Checkpoint& ckpt, const std::string& source, const DataConfig& data);
// The run's output directory (runs/<name> unless out_dir is set).
std::string resolve_out_dir(const RunConfig& cfg);

}  // namespace condense
