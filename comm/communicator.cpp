#include "comm/communicator.h"

#include <ATen/ATen.h>

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/nccl_communicator.h"
#include "core/error.h"
#include "core/hash.h"

#include <spdlog/spdlog.h>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <vector>

namespace condense {
namespace {

// One process: every collective is the identity.
class SelfCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string backend() const override { return "self"; }
  void all_reduce_sum(at::Tensor&) override {}
  void all_gather(const at::Tensor& in, at::Tensor& out) override { out.view(-1).copy_(in.view(-1)); }
  std::vector<at::Tensor> all_gather_v(const at::Tensor& in) override { return {in.clone()}; }
  void broadcast(at::Tensor&, int root) override {
    CONDENSE_CHECK(root == 0, "broadcast from rank {} in a world of 1", root);
  }
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) override { out.view(-1).copy_(in.view(-1)); }
  void all_to_all(const at::Tensor& in, at::Tensor& out) override { out.view(-1).copy_(in.view(-1)); }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_communicator(const CommConfig& c) {
  std::string backend = c.backend;
  if (backend == "auto") {
    // One process needs no communicator; under mpirun/srun CUDA tensors go through NCCL.
    if (!launched_by_mpi()) backend = "self";
    else backend = c.device == "cuda" ? "nccl" : "mpi";
  }
  if (backend == "self") return std::make_unique<SelfCommunicator>();
  if (backend == "mpi") {
    CONDENSE_CHECK(c.device == "cpu", "the mpi backend works on CPU tensors; device is {}", c.device);
    return std::make_unique<MpiCommunicator>();
  }
  if (backend == "nccl") return make_nccl_communicator();
  fail("unknown communicator backend '{}'; valid: auto, mpi, nccl, self", c.backend);
}

void Communicator::arm_watchdog(double timeout_s, const std::string& report_dir) {
  // A single process of the self backend has nothing to wait for; one NCCL rank still has its
  // device's queue (a kernel that never ends shows as a collective that never finishes).
  if (backend() == "self" || timeout_s <= 0 || watchdog_) return;
  // One job id for the report file names: rank 0's clock, as every rank sees it.
  at::Tensor job = at::tensor({static_cast<int64_t>(
      std::chrono::system_clock::now().time_since_epoch().count())}, at::kLong);
  broadcast(job, 0);
  watchdog_ = std::make_unique<CollectiveWatchdog>(CollectiveWatchdog::Settings{
      timeout_s, report_dir, rank(), size(), static_cast<uint64_t>(job.item<int64_t>())});
  watchdog_armed(*watchdog_);
}

std::vector<double> all_reduce_mean(Communicator& comm, const std::vector<double>& values) {
  at::Tensor t = at::tensor(values, at::kDouble);
  comm.all_reduce_sum(t);
  t.div_(comm.size());
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

namespace {

// The first line where `mine` differs from `theirs`, as "section.key: value" (the key path
// from the two-space indentation of block YAML, as to_yaml writes it), with theirs beside it.
std::string first_difference(const std::string& mine, const std::string& theirs) {
  std::istringstream a(mine), b(theirs);
  std::vector<std::string> path;  // keys by indentation level
  std::string la, lb;
  while (true) {
    const bool more_a = static_cast<bool>(std::getline(a, la)), more_b = static_cast<bool>(std::getline(b, lb));
    if (!more_a && !more_b) return "";
    if (!more_a) la = "(end)";
    if (!more_b) lb = "(end)";
    const size_t indent = la.find_first_not_of(' ');
    const size_t level = indent == std::string::npos ? 0 : indent / 2;
    const size_t colon = la.find(':');
    const std::string key = colon == std::string::npos || indent == std::string::npos
                                ? "" : la.substr(indent, colon - indent);
    if (la != lb) {
      std::string where;
      for (size_t i = 0; i < std::min(level, path.size()); ++i) where += path[i] + ".";
      auto value = [](const std::string& l) {
        const size_t c = l.find(':');
        const size_t v = c == std::string::npos ? l.find_first_not_of(' ') : l.find_first_not_of(' ', c + 1);
        return v == std::string::npos ? std::string("(empty)") : l.substr(v);
      };
      return fmt::format("{}{}: {} here, {} on rank 0", where, key.empty() ? "(line)" : key,
                         value(la), value(lb));
    }
    path.resize(level);
    path.push_back(key);
  }
}

}  // namespace

void check_same_on_all_ranks(Communicator& comm, const std::string& text, const std::string& what) {
  if (comm.size() == 1) return;
  std::string digest = sha256_hex(text);
  at::Tensor mine = at::empty({64}, at::kByte);
  std::memcpy(mine.data_ptr(), digest.data(), 64);
  at::Tensor all = at::empty({64 * comm.size()}, at::kByte);
  comm.all_gather(mine, all);
  std::string differing;
  for (int r = 0; r < comm.size(); ++r) {
    std::string d(static_cast<const char*>(all.data_ptr()) + 64 * r, 64);
    if (d != std::string(static_cast<const char*>(all.data_ptr()), 64))
      differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  }
  if (differing.empty()) return;
  // Rank 0's text to every rank, so that each names its first difference (a key, not a hash).
  at::Tensor length = at::full({1}, static_cast<int64_t>(text.size()), at::kLong);
  comm.broadcast(length, 0);
  at::Tensor bytes = at::empty({length.item<int64_t>()}, at::kByte);
  if (comm.rank() == 0) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  comm.broadcast(bytes, 0);
  const std::string theirs(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
  const std::string diff = first_difference(text, theirs);
  // Say it on every rank, and let every rank say it before any of them aborts the job.
  spdlog::error("{} differs across ranks: rank(s) {} disagree with rank 0{}", what, differing,
                diff.empty() ? "" : "; on this rank, " + diff);
  comm.barrier();
  fail("{} differs across ranks: rank(s) {} disagree with rank 0{}; every rank must run the "
       "same recipe and overrides", what, differing, diff.empty() ? "" : " (this rank: " + diff + ")");
}

}  // namespace condense
