// Communicator: the collectives data-parallel training needs, independent of models.
//
// Contract for every method marked "collective": every rank of the world calls it, in the same
// order, with tensors of the same dtype and (unless stated) the same shape; it returns when
// this rank's part is complete. Tensors must be contiguous and on the backend's device (CPU for
// MPI and self, CUDA for NCCL). NCCL work is ordered on the communicator's own CUDA stream,
// which waits for the caller's current stream first and which the caller's stream waits on
// afterwards, so callers need no extra synchronization.
//
// Backends are chosen by name in make_communicator: "auto" (self in a single process; under
// mpirun/srun NCCL when the device is CUDA, else MPI), "mpi", "nccl", "self".
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Stream.h>

#include "comm/comm_config.h"
#include "comm/watchdog.h"

namespace condense {

class Communicator {
 public:
  virtual ~Communicator() = default;
  // Collective. From here on, a collective of this communicator that runs longer than
  // timeout_s ends the process with an error naming the stalled ranks (comm/watchdog.h;
  // reports under report_dir/watchdog/); NCCL also ends it at once on an asynchronous error
  // (a peer died, a connection broke). No-op for the self backend or timeout_s <= 0.
  void arm_watchdog(double timeout_s, const std::string& report_dir);
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // rank among the processes on this node
  virtual std::string backend() const = 0;
  // The stream the collectives run on (NCCL: the communicator's own CUDA stream), or none (CPU
  // backends). Work a caller queues on it runs in order with the collectives without events;
  // GradientSync runs its exchanges there.
  virtual std::optional<c10::Stream> stream() const { return std::nullopt; }

  // Collective. In place: t becomes the elementwise sum over ranks (identical on every rank).
  virtual void all_reduce_sum(at::Tensor& t) = 0;
  // Collective. out[r * n : (r+1) * n] = in of rank r; in has n elements on every rank and
  // out has size() * n (flat views are used; shapes beyond numel are not checked).
  virtual void all_gather(const at::Tensor& in, at::Tensor& out) = 0;
  // Collective. Variable length: returns every rank's `in` (1-D), in rank order.
  virtual std::vector<at::Tensor> all_gather_v(const at::Tensor& in) = 0;
  // Collective. Variable length, to one rank: returns every rank's `in` (1-D) in rank order on
  // `root` and nothing elsewhere. The default goes through all_gather_v (every rank receives
  // everything); MPI overrides it with MPI_Gatherv so only the root receives.
  virtual std::vector<at::Tensor> gather_v(const at::Tensor& in, int root) {
    std::vector<at::Tensor> all = all_gather_v(in);
    if (rank() != root) all.clear();
    return all;
  }
  // Collective. In place: t takes root's values.
  virtual void broadcast(at::Tensor& t, int root) = 0;
  // Collective. in has size() * n elements; out (n elements) becomes the sum over ranks of
  // in[rank * n : (rank+1) * n].
  virtual void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) = 0;
  // Collective. in has size() * n elements; out (size() * n) gets block r = block rank() of rank
  // r's in (the transpose of the ranks' blocks).
  virtual void all_to_all(const at::Tensor& in, at::Tensor& out) = 0;
  // Collective.
  virtual void barrier() = 0;

 protected:
  // Null until arm_watchdog. Backends whose collectives block the calling thread (MPI) hold a
  // CollectiveWatchdog::Scope(watchdog(), ...) per collective; those that queue them on a
  // stream (NCCL) register each with CollectiveWatchdog::queued.
  CollectiveWatchdog* watchdog() const { return watchdog_.get(); }
  // Called once arm_watchdog has made the watchdog (a backend installs its health check).
  virtual void watchdog_armed(CollectiveWatchdog&) {}
  // Stops and drops the watchdog: a backend whose health check reads its handles calls it
  // before it destroys them (the base class's members outlive the derived destructor).
  void disarm_watchdog() { watchdog_.reset(); }

 private:
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

// Creates the world communicator. "mpi" and "nccl" initialize MPI if needed.
std::unique_ptr<Communicator> make_communicator(const CommConfig& config);

// Collective helpers built on the interface.
// Mean over ranks of a few doubles (metrics); returns the reduced values.
std::vector<double> all_reduce_mean(Communicator& comm, const std::vector<double>& values);
// Throws on every rank, naming the ranks that disagree, unless `text` is identical everywhere.
void check_same_on_all_ranks(Communicator& comm, const std::string& text, const std::string& what);

}  // namespace condense
