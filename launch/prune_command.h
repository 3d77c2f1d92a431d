// `condense prune`: one-shot pruning of a checkpoint into a new checkpoint.
//   magnitude | wanda  masks (unstructured at --sparsity, or --pattern N:M) on the projection
//                      matrices; the masks are stored in the output ("mask/<weight>") so a
//                      recovery recipe (init=OUT.h5) keeps them through training and export
//   minitron           structured width/depth pruning to a smaller plain Llama (--target)
//   kv-heads           KV-head merging to --kv-heads KV heads (--init svd | mean), a plain GQA
//                      Llama with a smaller KV cache (compressors/kv_merge.h); heal it with a
//                      finetune recipe that distills from the original
//   kv-project         PCA bases of every KV head's keys and values (compressors/kv_project.h),
//                      stored beside the unchanged weights; --kv-rank picks the cached rank
//   cskv               low-rank factors of k_proj / v_proj (compressors/cskv.h; --key-rank,
//                      --value-rank, --init whiten | asvd | svd) stored beside the unchanged weights;
//                      the cache stores the latents; train them with recipes/cskv.yaml
// Calibration windows (wanda, minitron, kv-heads with svd, kv-project, cskv with whiten or asvd) are the last windows of the validation split of the
// checkpoint's token store (or --data), so `condense eval`, which reads the first ones, does
// not score the text the pruning looked at.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace condense {

struct PruneArgs {
  CLI::App* cmd = nullptr;
  std::string checkpoint, method, pattern, out, data;
  double sparsity = 0.5;
  std::vector<std::string> weights;   // regexes over weight names (masked methods)
  std::vector<std::string> targets;   // minitron: key=value
  int64_t kv_heads = 0;              // kv-heads: the new num_key_value_heads
  std::string init = "svd";          // kv-heads: svd | mean; cskv: whiten | asvd | svd (default whiten)
  int64_t key_rank = 0, value_rank = 0;  // cskv
  int64_t calib_windows = 32;
  int64_t calib_batch = 8;
  int64_t calib_seq_len = 0;         // 0: the checkpoint recipe's seq_len
  bool no_sequential = false;
  int64_t threads = 0;
};

void add_prune_command(CLI::App& app, PruneArgs& args);
// Runs it if parsed and returns the exit status; -1 when it was not parsed.
int run_prune_command(PruneArgs& args);

}  // namespace condense
