// Memory-policy benchmark: for the quickstart-sized model (hidden 256, 4 layers, GQA 4/2,
// vocab 4096, tied) at sequence lengths 512 and 2048, the peak activation memory (counting CPU
// allocator: peak live bytes during forward + backward minus the live bytes before it) and the
// forward + backward time (fastest of `steps`) of every memory policy, side by side; then the loss alone at
// vocabulary 32k, full versus chunked. Prints a Markdown table and writes CSV to argv[1]
// (default memory_bench.csv). Usage: memory_bench [out.csv] [steps] [threads]
//
// GPU mode, `memory_bench --cuda [out.csv] [steps] [batch] [seq_len]`: SmolLM2-135M's shape
// (hidden 576, 30 layers, 9/3 heads, FFN 1536, vocabulary 49152, tied; fp32 weights) on the
// first CUDA device, the policies that matter there (recompute, offload to pinned host memory,
// compressed activations, chunked loss), with the caching allocator's allocated bytes
// (held = after forward minus before; peak = highest during forward + backward minus before,
// parameter gradients excluded) and the forward + backward time after a synchronize. For each
// offload row it also reports how much of the copy time the overlap hides:
//   copy_s = offloaded bytes moved device->host and back at the measured pinned-copy rates
//   hidden = 1 - (step_offload - step_without) / copy_s
// where offloaded bytes = held without offload - held with it (what left the GPU), and
// "without" is the same row minus its offload: baseline for offload=host (every saved
// activation: copies far longer than a layer's compute at this shape, see bench/RESULTS.md
// 2026-12-04), full+chunked for full+chunked+offload=host (only the layer inputs that full
// recomputation keeps, DeepSpeed's checkpoint offload: a layer's recomputed forward and its
// backward to hide each copy behind).
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

#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/cuda.h>

#include "core/error.h"
#include "memory/chunked_cross_entropy.h"
#include "memory/counting_allocator.h"
#include "memory/memory_policy.h"

using namespace condense;

namespace {

struct Row {
  std::string name;
  MemoryConfig cfg;
  std::string without;  // offload rows: the row with the same policy minus the offload
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

// --- GPU mode ----------------------------------------------------------------------------

using c10::cuda::CUDACachingAllocator::getDeviceStats;
constexpr int kAllPools = 0;  // StatType::AGGREGATE

int64_t cuda_allocated() { return getDeviceStats(0).allocated_bytes[kAllPools].current; }
int64_t cuda_peak() { return getDeviceStats(0).allocated_bytes[kAllPools].peak; }

double cuda_step(LlamaForCausalLM& model, MemoryPolicy& policy, const at::Tensor& x,
                 const at::Tensor& y, Result& r) {
  policy.attach(model);
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  torch::cuda::synchronize();
  int64_t before = cuda_allocated();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor loss = policy.loss(model, x, y);
  torch::cuda::synchronize();
  int64_t after_forward = cuda_allocated();
  loss.backward();
  loss = at::Tensor();
  torch::cuda::synchronize();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t grads = 0;
  for (auto& p : model->parameters()) grads += p.grad().numel() * 4;
  r.held_mb = std::max(r.held_mb, mib(after_forward - before));
  r.peak_mb = std::max(r.peak_mb, mib(cuda_peak() - before - grads));
  return dt;
}

// Seconds to copy `bytes` device->host plus host->device through pinned memory (best of 3).
double pinned_round_trip_s(int64_t bytes) {
  at::Tensor dev = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  double best = 1e9;
  for (int i = 0; i < 3; ++i) {
    torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    host.copy_(dev, /*non_blocking=*/true);
    dev.copy_(host, /*non_blocking=*/true);
    torch::cuda::synchronize();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int cuda_main(int argc, char** argv) {
  CONDENSE_CHECK(torch::cuda::is_available(), "memory_bench --cuda: no CUDA device is visible");
  std::string csv_path = argc > 2 ? argv[2] : "memory_bench_cuda.csv";
  int steps = argc > 3 ? std::atoi(argv[3]) : 3;
  int64_t b = argc > 4 ? std::atoll(argv[4]) : 8;
  int64_t t = argc > 5 ? std::atoll(argv[5]) : 2048;
  LlamaConfig c;  // SmolLM2-135M's shape
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_hidden_layers = 30;
  c.num_attention_heads = 9;
  c.num_key_value_heads = 3;
  c.max_position_embeddings = std::max<int64_t>(2048, t);
  c.rope_theta = 100000;
  c.tie_word_embeddings = true;
  torch::manual_seed(0);
  LlamaForCausalLM model(c);
  model->to(at::kCUDA);
  model->train();
  auto opts = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  at::Tensor x = at::randint(c.vocab_size, {b, t}, opts), y = at::randint(c.vocab_size, {b, t}, opts);
  auto cfg = [](auto fn) {
    MemoryConfig m;
    m.meter = false;
    fn(m);
    return m;
  };
  std::vector<Row> rows = {
      {"baseline", cfg([](MemoryConfig&) {})},
      {"full", cfg([](MemoryConfig& m) { m.recompute = "full"; })},
      {"selective", cfg([](MemoryConfig& m) { m.recompute = "selective"; })},
      {"offload=host", cfg([](MemoryConfig& m) { m.offload = "host"; }), "baseline"},
      {"bf16", cfg([](MemoryConfig& m) { m.activations = "bf16"; })},
      {"int8", cfg([](MemoryConfig& m) { m.activations = "int8"; })},
      {"chunked_loss", cfg([](MemoryConfig& m) { m.loss = "chunked"; })},
      {"full+chunked", cfg([](MemoryConfig& m) { m.recompute = "full"; m.loss = "chunked"; })},
      {"full+chunked+offload=host", cfg([](MemoryConfig& m) {
         m.recompute = "full";
         m.loss = "chunked";
         m.offload = "host";
       }),
       "full+chunked"},
  };
  std::ofstream csv(csv_path);
  csv << "batch,seq_len,policy,held_activation_mb,peak_activation_mb,step_s\n";
  std::vector<std::unique_ptr<MemoryPolicy>> policies;
  for (const Row& r : rows) policies.push_back(std::make_unique<MemoryPolicy>(r.cfg, model));
  std::vector<Result> results(rows.size());
  for (int round = 0; round <= steps; ++round) {  // round 0 warms up
    for (size_t i = 0; i < rows.size(); ++i) {
      Result scratch;
      double dt = cuda_step(model, *policies[i], x, y, round == 0 ? scratch : results[i]);
      if (round > 0) results[i].step_s = round == 1 ? dt : std::min(results[i].step_s, dt);
      std::fprintf(stderr, "round %d %s: %.4f s, held %.1f MiB\n", round, rows[i].name.c_str(), dt,
                   round == 0 ? scratch.held_mb : results[i].held_mb);
    }
  }
  std::printf("\nCUDA, SmolLM2-135M shape, batch %lld x %lld tokens\n\n| policy | held MiB | held vs "
              "baseline | peak MiB | step s | overhead |\n|---|---|---|---|---|---|\n",
              (long long)b, (long long)t);
  const Result& base = results[0];
  for (size_t i = 0; i < rows.size(); ++i) {
    const Result& m = results[i];
    std::printf("| %s | %.1f | %.2fx | %.1f | %.4f | %+.1f%% |\n", rows[i].name.c_str(), m.held_mb,
                base.held_mb / m.held_mb, m.peak_mb, m.step_s, 100 * (m.step_s / base.step_s - 1));
    csv << b << "," << t << "," << rows[i].name << "," << m.held_mb << "," << m.peak_mb << ","
        << m.step_s << "\n";
    const std::string& name = rows[i].name;
    const std::string& without = rows[i].without;
    if (!without.empty()) {
      const auto w = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.name == without; });
      const Result& ref = results[static_cast<size_t>(w - rows.begin())];
      int64_t moved = static_cast<int64_t>((ref.held_mb - m.held_mb) * 1048576.0);
      double copy_s = moved > 0 ? pinned_round_trip_s(moved) : 0;
      double hidden = copy_s > 0 ? 1 - (m.step_s - ref.step_s) / copy_s : 0;
      std::printf("{\"policy\": \"%s\", \"without\": \"%s\", \"offload_moved_mb\": %.1f, \"offload_copy_s\": "
                  "%.4f, \"offload_extra_step_s\": %.4f, \"offload_hidden_fraction\": %.3f}\n",
                  name.c_str(), without.c_str(), mib(moved), copy_s, m.step_s - ref.step_s, hidden);
    }
  }
  model->set_block_hook(nullptr);
  model->set_mlp_linear(nullptr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--cuda") return cuda_main(argc, argv);
  if (argc > 1 && argv[1][0] == '-') {  // --help or a mistyped option, not an output path
    std::fprintf(stderr, "usage: %s [out.csv] [steps] [threads]\n       %s --cuda [out.csv] "
                 "[steps] [batch] [seq_len]\n", argv[0], argv[0]);
    return std::string(argv[1]) == "--help" ? 0 : 2;
  }
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
