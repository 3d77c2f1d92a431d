// Memory-policy benchmark: for the quickstart-sized model (hidden 256, 4 layers, GQA 4/2,
// vocab 4096, tied) at sequence lengths 512 and 2048, the peak activation memory (counting CPU
// allocator: peak live bytes during forward + backward minus the live bytes before it) and the
// forward + backward time (fastest of `steps`) of every memory policy, side by side; then the loss alone at
// vocabulary 32k, full versus chunked. Prints a Markdown table and writes CSV to argv[1]
// (default memory_bench.csv). Usage: memory_bench [out.csv] [steps] [threads]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "memory/chunked_cross_entropy.h"
#include "memory/counting_allocator.h"
#include "memory/memory_policy.h"

using namespace condense;

namespace {

struct Row {
  std::string name;
  MemoryConfig cfg;
};

double mib(int64_t b) { return b / 1048576.0; }

struct Result {
  double held_mb = 0;  // live activation bytes between forward and backward
  double peak_mb = 0;  // peak extra bytes during forward + backward, parameter grads excluded
  double step_s = 0;   // fastest forward + backward (robust to other load on the machine)
};

// One forward + backward under `policy`; fills the memory fields and returns the seconds.
double step(LlamaForCausalLM& model, const MemoryPolicy& policy_in, const at::Tensor& x,
            const at::Tensor& y, Result& r) {
  auto& policy = const_cast<MemoryPolicy&>(policy_in);
  policy.attach(model);
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  int64_t before = cpu_memory_counters().live_bytes;
  reset_cpu_peak();
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor loss = policy.loss(model, x, y);
  int64_t after_forward = cpu_memory_counters().live_bytes;
  loss.backward();
  loss = at::Tensor();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t grads = 0;  // parameter gradients are allocated during backward: not activations
  for (auto& p : model->parameters()) grads += p.grad().numel() * 4;
  r.held_mb = std::max(r.held_mb, mib(after_forward - before));
  r.peak_mb = std::max(r.peak_mb, mib(cpu_memory_counters().peak_bytes - before - grads));
  return dt;
}

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path = argc > 1 ? argv[1] : "memory_bench.csv";
  int steps = argc > 2 ? std::atoi(argv[2]) : 3;
  if (argc > 3) at::set_num_threads(std::atoi(argv[3]));
  install_counting_cpu_allocator();
  std::ofstream csv(csv_path);
  csv << "seq_len,policy,held_activation_mb,peak_activation_mb,step_s\n";

  LlamaConfig c;  // recipes/quickstart.yaml's model
  c.vocab_size = 4096;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = true;
  torch::manual_seed(0);
  LlamaForCausalLM model(c);
  model->train();

  auto cfg = [](auto fn) {
    MemoryConfig m;
    fn(m);
    return m;
  };
  for (int64_t t : {512, 2048}) {
    int64_t b = 4096 / t;  // 4096 tokens per step at both lengths
    at::Tensor x = at::randint(c.vocab_size, {b, t}, at::kLong);
    at::Tensor y = at::randint(c.vocab_size, {b, t}, at::kLong);
    std::vector<Row> rows = {
        {"baseline", {}},
        {"full", cfg([](MemoryConfig& m) { m.recompute = "full"; })},
        {"every_k=2", cfg([](MemoryConfig& m) { m.recompute = "every_k"; })},
        {"selective", cfg([](MemoryConfig& m) { m.recompute = "selective"; })},
        {"attention", cfg([](MemoryConfig& m) { m.recompute = "attention"; })},
        {"budget=half", cfg([](MemoryConfig& m) { m.recompute = "budget"; m.budget_mb = 1; })},
        {"offload=disk", cfg([](MemoryConfig& m) { m.offload = "disk"; })},
        {"bf16", cfg([](MemoryConfig& m) { m.activations = "bf16"; })},
        {"int8", cfg([](MemoryConfig& m) { m.activations = "int8"; })},
        {"chunked_loss", cfg([](MemoryConfig& m) { m.loss = "chunked"; })},
        {"full+chunked", cfg([](MemoryConfig& m) { m.recompute = "full"; m.loss = "chunked"; })},
        {"wta_crs=0.3", cfg([](MemoryConfig& m) { m.wta_crs = true; })},
    };
    std::printf("\nseq_len %lld, batch %lld (%d threads)\n\n| policy | held MiB | held vs "
                "baseline | peak MiB | peak vs baseline | step s | overhead |\n"
                "|---|---|---|---|---|---|---|\n",
                (long long)t, (long long)b, at::get_num_threads());
    // Policies take turns step by step (rounds), so load from elsewhere on the machine hits
    // them alike; each reports its fastest step. Round 0 warms up (and measures for budget).
    std::vector<std::unique_ptr<MemoryPolicy>> policies;
    std::vector<Result> results(rows.size());
    policies.push_back(std::make_unique<MemoryPolicy>(rows[0].cfg, model));
    Result warm;
    step(model, *policies[0], x, y, warm);  // the baseline's held bytes size the budget row
    for (size_t i = 1; i < rows.size(); ++i) {
      if (rows[i].name == "budget=half") rows[i].cfg.budget_mb = warm.held_mb / 2;
      policies.push_back(std::make_unique<MemoryPolicy>(rows[i].cfg, model));
    }
    for (int round = 0; round <= steps; ++round) {
      for (size_t i = 0; i < rows.size(); ++i) {
        Result scratch;
        double dt = step(model, *policies[i], x, y, round == 0 ? scratch : results[i]);
        if (round > 0) results[i].step_s = round == 1 ? dt : std::min(results[i].step_s, dt);
      }
    }
    const Result& base = results[0];
    for (size_t i = 0; i < rows.size(); ++i) {
      const Result& m = results[i];
      std::printf("| %s | %.1f | %.2fx | %.1f | %.2fx | %.3f | %+.0f%% |\n", rows[i].name.c_str(),
                  m.held_mb, base.held_mb / m.held_mb, m.peak_mb, base.peak_mb / m.peak_mb,
                  m.step_s, 100 * (m.step_s / base.step_s - 1));
      csv << t << "," << rows[i].name << "," << m.held_mb << "," << m.peak_mb << "," << m.step_s << "\n";
    }
    std::fflush(stdout);
    model->set_block_hook(nullptr);
    model->set_mlp_linear(nullptr);
  }

  // The loss alone at vocabulary 32k: [4096 tokens x 256] hidden states.
  std::printf("\nloss at vocabulary 32000, 4096 tokens, hidden 256\n\n| loss | peak MiB | s |\n|---|---|---|\n");
  at::Tensor h = torch::randn({4096, 256}, torch::requires_grad());
  at::Tensor w = torch::randn({32000, 256}, torch::requires_grad()) * 0.02;
  w = w.detach().requires_grad_();
  at::Tensor tg = at::randint(32000, {4096}, at::kLong);
  for (const char* kind : {"full", "chunked"}) {
    double best = 1e9;
    int64_t peak = 0;
    for (int s = 0; s < 2; ++s) {
      h.mutable_grad() = at::Tensor();
      w.mutable_grad() = at::Tensor();
      int64_t before = cpu_memory_counters().live_bytes;
      reset_cpu_peak();
      auto t0 = std::chrono::steady_clock::now();
      at::Tensor loss = std::string(kind) == "full"
                            ? at::cross_entropy_loss(at::matmul(h, w.t()), tg)
                            : chunked_cross_entropy(h, w, tg, {1024, 8192, 0, -100});
      loss.backward();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      int64_t grads = (h.numel() + w.numel()) * 4;
      peak = cpu_memory_counters().peak_bytes - before - grads;
    }
    std::printf("| %s | %.1f | %.3f |\n", kind, mib(peak), best);
    csv << "loss32k," << kind << ",," << mib(peak) << "," << best << "\n";
  }
  return 0;
}
