// The KV-cache compressions as one step, shared by `condense prune --method kv-heads |
// kv-project | cskv` (launch/prune_command.cpp) and the kv_heads / kv_project recipe kinds
// (recipes/kv_compress.cpp), so both write the same checkpoint from the same windows:
//   kv-heads    merge_kv_heads (compressors/kv_merge.h): a new, plain GQA model
//   kv-project  PCA bases per KV head (compressors/kv_project.h), stored beside the weights
//   cskv        low-rank K/V factors (compressors/cskv.h), stored beside the weights
// Option checks (check_kv_merge, check_low_rank_kv) are the caller's, before any work.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "compressors/cskv.h"
#include "compressors/kv_merge.h"
#include "model/llama.h"

namespace condense {

struct KVCompressOptions {
  std::string method;        // kv-heads | kv-project | cskv
  KVMergeOptions merge;      // kv-heads
  LowRankKVOptions low_rank; // cskv
};

struct KVCompressed {
  LlamaForCausalLM model{nullptr};            // what to write (kv-heads: the merged model)
  std::map<std::string, at::Tensor> extra;    // tensors stored beside it (kv_proj/*, cskv/*)
  std::string summary;                        // one line for the log
  double calibration_s = 0;                   // the calibration pass's time (0: none ran)
};

// windows: called once, only by the methods and inits that calibrate (kv-heads svd,
// kv-project, cskv whiten / asvd).
KVCompressed compress_kv_cache(LlamaForCausalLM& model, const KVCompressOptions& options,
                               const std::function<std::vector<at::Tensor>()>& windows);

}  // namespace condense
