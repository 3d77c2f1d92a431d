// Test helper for tests/python/test_hf_parity.py: builds a small LlamaForCausalLM with random
// weights (norm weights too, around 1, so that a wrong norm or a misplaced weight shows in the
// logits), saves it with CheckpointManager and writes OUT_DIR/logits.h5 holding random
// `input_ids` [B, T] (int64) and condense's `logits` [B, T, V] (float32, eval mode, no grad),
// for Hugging Face transformers to reproduce from the checkpoint. Prints the checkpoint path.
// Usage: model_fixture OUT_DIR --layers L --heads H --kv-heads K --hidden D --intermediate I
//          --vocab V [--head-dim HD] [--tied] [--init-range R] [--seed S] [--batch B --seq T]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "io/hdf5_file.h"
#include "model/llama.h"
#include "trainer/checkpoint.h"

namespace {

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s OUT_DIR --layers L --heads H --kv-heads K --hidden D --intermediate I "
               "--vocab V [--head-dim HD] [--tied] [--init-range R] [--seed S] "
               "[--batch B --seq T]\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return usage(argv[0]);
  std::string out_dir = argv[1];
  condense::LlamaConfig c;
  c.initializer_range = 0.2;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  int64_t seed = 0, batch = 2, seq = 16;
  try {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--tied") {
        c.tie_word_embeddings = true;
        continue;
      }
      if (i + 1 >= argc) return usage(argv[0]);
      std::string v = argv[++i];
      if (a == "--layers") c.num_hidden_layers = std::stoll(v);
      else if (a == "--heads") c.num_attention_heads = std::stoll(v);
      else if (a == "--kv-heads") c.num_key_value_heads = std::stoll(v);
      else if (a == "--hidden") c.hidden_size = std::stoll(v);
      else if (a == "--intermediate") c.intermediate_size = std::stoll(v);
      else if (a == "--vocab") c.vocab_size = std::stoll(v);
      else if (a == "--head-dim") c.head_dim = std::stoll(v);
      else if (a == "--init-range") c.initializer_range = std::stod(v);
      else if (a == "--seed") seed = std::stoll(v);
      else if (a == "--batch") batch = std::stoll(v);
      else if (a == "--seq") seq = std::stoll(v);
      else {
        std::fprintf(stderr, "model_fixture: unknown option %s\n", a.c_str());
        return usage(argv[0]);
      }
    }
    c.max_position_embeddings = std::max<int64_t>(seq, 64);

    torch::manual_seed(static_cast<uint64_t>(seed));
    condense::LlamaForCausalLM model(c);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->named_parameters())
        if (p.value().dim() == 1) p.value().copy_(1.0 + 0.1 * at::randn_like(p.value()));
    }
    model->eval();

    condense::CheckpointManager manager(out_dir, 1);
    std::string path =
        manager.save(model, nullptr, condense::TrainingState{}, "kind: pretrain\n", "");

    at::Tensor ids = at::randint(model->config().vocab_size, {batch, seq}, at::kLong);
    at::Tensor logits;
    {
      torch::NoGradGuard no_grad;
      logits = model->forward(ids).to(at::kFloat).contiguous();
    }
    auto f = condense::H5File::create(out_dir + "/logits.h5");
    f.write_tensor("input_ids", ids);
    f.write_tensor("logits", logits);
    f.close();
    std::printf("%s\n", path.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "model_fixture: %s\n", e.what());
    return 1;
  }
  return 0;
}
