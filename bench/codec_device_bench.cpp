// Micro-benchmark: the gradient codecs' compression work on one device, against the device's
// copy rate.
//
//   build/bench/codec_device_bench [--device cpu|cuda] [--numel N] [--repeats R] [--path auto|tensor]
//                                  [--threads 1,2]
//
// On a randn vector of N fp32 (default 64Mi on cuda, 4Mi on cpu), times the median of R reps
// (default 11) after 2 warm-up reps of:
//   copy       a device-to-device copy of the N floats (the memory copy rate)
//   topk       Top-K 1%: the k = N/100 indices (exact, ascending) and their values
//   topk_exact_path   (CUDA kernels only) the same with the kernels' exact path forced
//              (radix select over x in five passes) instead of the sampled one
// and then (CUDA kernels only) "topk_steps": the Top-K kernels' steps timed by CUDA events, per
// path (the fastest of 5 runs by their sum).
//   qsgd       QSGD encode, s = 7 (4-bit codes), blocks of 512
//   sign       sign encode, blocks of 512
//   fp16       the cast to fp16
//   sparseloco SparseLoCo's whole exchange in a world of one (self communicator): the vector as a
//              [N / 4096, 4096] matrix in 64 x 64 tiles, the top 41 (1%) of each, 2-bit codes,
//              decoded into `local` and `mean` (bytes: 4N read + 8N written)
//   qsgd_decode, sign_decode   adding a decoded payload into an fp32 vector (what every rank
//              does once per gathered payload)
// --threads T1,T2,... (CPU) runs everything at each intra-op thread count (at::set_num_threads:
// ATen's OpenMP pool, which condense's loops share) and then prints, per operation, the speedup
// of each count over the first: {"op": ..., "speedup": {"2": 1.9}}.
// Each rep is bracketed by torch::cuda::synchronize() on CUDA, so times cover the kernels, not
// just their launch. For each operation: bytes touched = input read (4N) + output written,
// their rate, and the ratio of that rate to the copy's (1 = as fast as a copy of the same
// bytes). --path tensor forces the tensor-op path on either device (on CUDA it sets
// CONDENSE_CUDA_KERNELS=0, so Top-K, qsgd and sign skip condense's CUDA kernels); auto takes
// the path the codecs take on that device (CPU: comm/topk_select.h and the bit-packing loops;
// CUDA: the kernels when the build has them). Each line's
// "path" says which ran: cpu, tensor or kernel.
// Prints one JSON object per line.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/codec.h"
#include "comm/codec_kernels.h"
#include "comm/communicator.h"
#include "comm/cuda_kernels_switch.h"
#include "comm/topk_radix.h"
#include "comm/topk_select.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "codec_device_bench: %s\nusage: codec_device_bench [--device cpu|cuda] "
               "[--numel N] [--repeats R] [--path auto|tensor] [--threads 1,2]\n", why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string device_name = "cpu", path = "auto";
  int64_t numel = 0;
  int repeats = 11;
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + a).c_str());
    const char* v = argv[++i];
    if (a == "--device") device_name = v;
    else if (a == "--numel") numel = std::atoll(v);
    else if (a == "--repeats") repeats = std::atoi(v);
    else if (a == "--path") path = v;
    else if (a == "--threads") {
      for (const char* p = v; *p;) {
        thread_counts.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    }
    else usage(("unknown option " + a).c_str());
  }
  if (device_name != "cpu" && device_name != "cuda") usage("--device must be cpu or cuda");
  if (path != "auto" && path != "tensor") usage("--path must be auto or tensor");
  const bool cuda = device_name == "cuda";
  if (cuda && !torch::cuda::is_available()) usage("no CUDA device is visible");
  if (numel <= 0) numel = cuda ? (int64_t{64} << 20) : (int64_t{4} << 20);
  if (repeats < 1) usage("--repeats must be >= 1");
  if (cuda && !thread_counts.empty()) usage("--threads is for --device cpu");
  for (int t : thread_counts)
    if (t < 1) usage("--threads: every count must be >= 1");
  if (thread_counts.empty()) thread_counts.push_back(at::get_num_threads());
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const bool tensor_ops = cuda || path == "tensor";
  if (cuda && path == "tensor") setenv("CONDENSE_CUDA_KERNELS", "0", 1);

  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  // Median seconds of `repeats` runs of f after two warm-ups, each bracketed by synchronization.
  auto median_time = [&](const std::function<void()>& f) {
    std::vector<double> s;
    for (int r = 0; r < repeats + 2; ++r) {
      sync();
      auto t0 = std::chrono::steady_clock::now();
      f();
      sync();
      auto t1 = std::chrono::steady_clock::now();
      if (r >= 2) s.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    return median(s);
  };

  at::Tensor x = at::randn({numel}, at::TensorOptions(device).dtype(at::kFloat));
  at::Tensor dst = at::empty_like(x);
  const int64_t k = std::max<int64_t>(1, numel / 100);
  condense::QuantizedFormat qsgd(numel, 7, 512), sign(numel, 0, 512);
  at::Tensor qsgd_payload = at::empty({qsgd.payload_bytes()}, x.options().dtype(at::kByte));
  at::Tensor sign_payload = at::empty({sign.payload_bytes()}, x.options().dtype(at::kByte));
  at::Tensor half;

  at::Tensor acc = at::zeros_like(x);  // the decodes add into it (their payloads: the encodes')
  condense::CommConfig self_config;
  self_config.backend = "self";
  std::unique_ptr<condense::Communicator> self = condense::make_communicator(self_config);
  condense::CompressionConfig sl_config;
  sl_config.codec = "sparseloco";
  sl_config.k = 41;
  const bool tiled = numel % 4096 == 0;
  const condense::BucketLayout sl_layout{
      {0}, {tiled ? std::vector<int64_t>{numel / 4096, 4096} : std::vector<int64_t>{numel}}, numel, device};
  std::unique_ptr<condense::Codec> sparseloco = condense::make_codec(sl_config, sl_layout, 1, true);
  at::Tensor sl_local = at::empty_like(x), sl_mean = at::empty_like(x);
  const char* codec_path = tensor_ops ? "tensor" : "cpu";
  // Top-K, qsgd and sign (blocks of 512: every code width fits the kernels' groups).
  const char* kernel_path = cuda && path == "auto" && condense::cuda_kernels_built() ? "kernel" : codec_path;
  struct Op {
    const char* name;
    std::function<void()> run;
    int64_t bytes;  // input read + output written
    const char* path;
  };
  std::vector<Op> ops = {
      {"copy", [&] { dst.copy_(x); }, 2 * 4 * numel, "tensor"},  // first: the rate the others are compared with
      {"topk",
       [&] {
         at::Tensor idx = tensor_ops ? condense::topk_abs_indices_tensor_ops(x, k)
                                     : condense::topk_abs_indices(x, k);
         at::Tensor values = x.index_select(0, idx);
       },
       4 * numel + 8 * k, kernel_path},
      {"qsgd", [&] { condense::quantized_encode(qsgd, x, 42, qsgd_payload, tensor_ops); },
       4 * numel + qsgd.payload_bytes(), kernel_path},
      {"sign", [&] { condense::quantized_encode(sign, x, 42, sign_payload, tensor_ops); },
       4 * numel + sign.payload_bytes(), kernel_path},
      {"qsgd_decode", [&] { condense::quantized_decode_add(qsgd, qsgd_payload, acc, tensor_ops); },
       8 * numel + qsgd.payload_bytes(), kernel_path},
      {"sign_decode", [&] { condense::quantized_decode_add(sign, sign_payload, acc, tensor_ops); },
       8 * numel + sign.payload_bytes(), kernel_path},
      {"fp16", [&] { half = x.to(at::kHalf); }, 4 * numel + 2 * numel, "tensor"},
      {"sparseloco",
       [&] {
         condense::ExchangeStats stats;
         condense::ExchangeContext ctx{*self, 1, 2, stats};
         sparseloco->exchange(x, &sl_local, sl_mean, ctx);
       },
       12 * numel, "tensor"},
  };
  if (std::strcmp(kernel_path, "kernel") == 0) {
    // The kernels' exact path alone (five passes over x; the sampled path's fallback), for the
    // share of the sampled path's gain: same output as "topk".
    ops.insert(ops.begin() + 2, Op{"topk_exact_path",
                                   [&] {
                                     at::Tensor idx = condense::detail::topk_abs_indices_cuda_kernels(
                                         x, k, std::numeric_limits<int64_t>::max());
                                     at::Tensor values = x.index_select(0, idx);
                                   },
                                   4 * numel + 8 * k, "kernel"});
  }
  // One untimed round of every operation first, in order (the encodes fill the payloads the
  // decodes read): page faults of fresh buffers and OpenMP's pool start would otherwise fall on
  // the first thread count's timings.
  for (const Op& op : ops) op.run();
  // seconds[op][i]: median at thread_counts[i].
  std::vector<std::vector<double>> seconds(ops.size());
  for (int threads : thread_counts) {
    if (!cuda) at::set_num_threads(threads);
    double copy_rate = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      const double secs = median_time(ops[i].run);
      const double rate = ops[i].bytes / secs;
      if (i == 0) copy_rate = rate;
      std::printf("{\"op\": \"%s\", \"device\": \"%s\", \"path\": \"%s\", \"threads\": %d, "
                  "\"numel\": %lld, \"repeats\": %d, \"median_s\": %.6g, \"bytes\": %lld, "
                  "\"bytes_per_s\": %.6g, \"ratio_to_copy\": %.4g}\n",
                  ops[i].name, device_name.c_str(), ops[i].path, cuda ? 0 : at::get_num_threads(),
                  static_cast<long long>(numel), repeats, secs, static_cast<long long>(ops[i].bytes),
                  rate, rate / copy_rate);
      std::fflush(stdout);
      seconds[i].push_back(secs);
    }
  }
  if (std::strcmp(kernel_path, "kernel") == 0) {
    // Where the Top-K kernels' time goes: each step between CUDA events, the fastest of 5 runs
    // per path (the sampled path as "topk" runs it, then the exact path forced).
    const std::pair<const char*, int64_t> paths[] = {{"kernel", condense::topk_radix::kSampledMinN},
                                                     {"kernel_exact", std::numeric_limits<int64_t>::max()}};
    for (const auto& [path_name, min_n] : paths) {
      std::string best;
      double best_total = 1e30;
      for (int r = 0; r < 5; ++r) {
        const std::string report = condense::detail::topk_cuda_kernels_profile(x, k, min_n);
        double total = 0;  // the sum of the members' values
        for (size_t p = report.find(": "); p != std::string::npos; p = report.find(": ", p + 2))
          total += std::atof(report.c_str() + p + 2);
        if (total < best_total) best_total = total, best = report;
      }
      std::printf("{\"op\": \"topk_steps\", \"path\": \"%s\", \"numel\": %lld, \"total_ms\": %.4f, \"ms\": {%s}}\n",
                  path_name, static_cast<long long>(numel), best_total, best.c_str());
    }
  }
  if (thread_counts.size() > 1) {
    for (size_t o = 0; o < ops.size(); ++o) {
      const std::vector<double>& secs = seconds[o];
      std::printf("{\"op\": \"%s\", \"speedup_over_%d_threads\": {", ops[o].name, thread_counts[0]);
      for (size_t i = 1; i < secs.size(); ++i)
        std::printf("%s\"%d\": %.3f", i > 1 ? ", " : "", thread_counts[i], secs[0] / secs[i]);
      std::printf("}}\n");
    }
  }
  return 0;
}
