// Micro-benchmark: condense::topk_abs_indices against torch::topk for gradient compression.
//
//   build/bench/topk_bench [--reps N] [--sizes 1,4,16] [--threads 2,1]
//
// For each thread count, data shape (randn; randn^3, heavy-tailed), size (in Mi floats) and
// ratio k/n (0.1%, 1%, 10%), times in one run, interleaved rep by rep:
//   torch::topk(x.abs(), k)   what a torch user writes for top-k by magnitude (the abs included)
//   torch::topk(x, k)         top-k by signed value, no abs: not the same selection, shown for
//                             honesty about what torch's kernel itself costs
//   topk_abs_indices(x, k)    exact, k int32 indices sorted ascending
// and prints the median of N reps (default 9) after 2 warm-up reps as a markdown table, with
// `uptime` before and after (the machine is shared). Each configuration also checks that the
// magnitudes selected by topk_abs_indices are torch's top-k magnitudes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "comm/topk_select.h"

namespace {

std::string uptime() {
  std::string out;
  if (FILE* p = popen("uptime", "r")) {
    char buf[256];
    while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 9;
  std::vector<int64_t> sizes_mi = {1, 4, 16};
  std::vector<int64_t> thread_counts = {2, 1};
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) {  // --help, or an option without its value
      std::fprintf(stderr, "usage: %s [--reps N] [--sizes 1,4,16] [--threads 2,1]\n", argv[0]);
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
    if (std::strcmp(argv[i], "--reps") == 0) {
      reps = std::max(1, std::atoi(argv[i + 1]));
    } else if (std::strcmp(argv[i], "--sizes") == 0) {
      sizes_mi = parse_list(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--threads") == 0) {
      thread_counts = parse_list(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--sizes 1,4,16] [--threads 2,1]\n", argv[0]);
      return 2;
    }
  }
  const int warmup = 2;
  const double ratios[] = {0.001, 0.01, 0.1};
  const char* shapes[] = {"randn", "randn^3"};

  std::printf("load before: %s\n", uptime().c_str());
  std::printf("torch %s, median of %d reps after %d warm-up reps, times in ms\n\n",
              TORCH_VERSION, reps, warmup);
  std::printf("| threads | data | n | k/n | k | torch::topk(abs(x)) | torch::topk(x) (no abs) "
              "| topk_abs_indices | speedup vs topk(abs) | speedup vs topk (no abs) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);

  bool all_ok = true;
  torch::manual_seed(0);
  for (int64_t threads : thread_counts) {
    at::set_num_threads(static_cast<int>(threads));
    for (const char* shape : shapes) {
      for (int64_t mi : sizes_mi) {
        const int64_t n = mi << 20;
        at::Tensor x = torch::randn({n});
        if (std::strcmp(shape, "randn^3") == 0) x = x.pow(3);
        for (double ratio : ratios) {
          const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(ratio * n));
          // Correctness: the selected magnitudes are torch's top-k magnitudes.
          const at::Tensor idx = condense::topk_abs_indices(x, k);
          const at::Tensor ours =
              std::get<0>(at::sort(x.abs().index_select(0, idx.to(at::kLong)), 0, true));
          const bool ok = idx.numel() == k && at::equal(ours, std::get<0>(torch::topk(x.abs(), k)));
          all_ok = all_ok && ok;

          std::vector<std::function<void()>> methods = {
              [&] { auto r = torch::topk(x.abs(), k); (void)r; },
              [&] { auto r = torch::topk(x, k); (void)r; },
              [&] { auto r = condense::topk_abs_indices(x, k); (void)r; },
          };
          std::vector<std::vector<double>> times(methods.size());
          for (int rep = 0; rep < warmup + reps; ++rep) {
            for (size_t m = 0; m < methods.size(); ++m) {
              const double t0 = now_ms();
              methods[m]();
              const double t1 = now_ms();
              if (rep >= warmup) times[m].push_back(t1 - t0);
            }
          }
          const double t_abs = median(times[0]), t_raw = median(times[1]),
                       t_ours = median(times[2]);
          std::printf("| %lld | %s | %lldM | %g%% | %lld | %.2f | %.2f | %.2f | %.1fx | %.1fx |%s\n",
                      static_cast<long long>(threads), shape, static_cast<long long>(mi),
                      ratio * 100, static_cast<long long>(k), t_abs, t_raw, t_ours,
                      t_abs / t_ours, t_raw / t_ours, ok ? "" : " MISMATCH");
          std::fflush(stdout);
        }
      }
    }
  }
  std::printf("\nload after: %s\n", uptime().c_str());
  if (!all_ok) std::printf("ERROR: a selection differed from torch::topk\n");
  return all_ok ? 0 : 1;
}
