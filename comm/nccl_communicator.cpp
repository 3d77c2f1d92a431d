#include "comm/nccl_communicator.h"

#include "core/error.h"

#ifdef CONDENSE_WITH_NCCL
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <fmt/format.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#endif

namespace condense {

#ifdef CONDENSE_WITH_NCCL
namespace {

void check_nccl(ncclResult_t rc, const char* call, int rank) {
  CONDENSE_CHECK(rc == ncclSuccess, "{} failed on rank {}: {}", call, rank, ncclGetErrorString(rc));
}

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: fail("NCCL communicator: unsupported dtype {}", c10::toString(t));
  }
}

class NcclCommunicator : public Communicator {
 public:
  // Under mpirun/srun: bootstrapped over MPI. Otherwise a world of one process, without MPI:
  // launched_by_mpi() is false there, and initializing MPI would need the launcher's runtime
  // (which a machine may lack), while one rank needs no one to share its unique id with.
  NcclCommunicator() {
    if (launched_by_mpi()) {
      mpi_ = std::make_unique<MpiCommunicator>();
      rank_ = mpi_->rank();
      size_ = mpi_->size();
      local_rank_ = mpi_->local_rank();
    }
    int devices = static_cast<int>(c10::cuda::device_count());
    CONDENSE_CHECK(devices > 0, "NCCL backend on rank {}: no CUDA device is visible", rank_);
    device_ = static_cast<c10::DeviceIndex>(local_rank_ % devices);
    c10::cuda::set_device(device_);
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", rank_);
    if (mpi_) check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi_->comm()), "MPI_Bcast(ncclUniqueId)");
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank", rank_);
    stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device_);
  }
  ~NcclCommunicator() override {
    disarm_watchdog();  // its thread polls comm_
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "nccl"; }
  std::optional<c10::Stream> stream() const override { return stream_.unwrap(); }

  // CPU tensors (the trainer's loss and stop-flag reductions, RNG states and recipe digests
  // gathered for checkpoints) are staged through the device: NCCL moves device memory only.
  void all_reduce_sum(at::Tensor& t) override {
    if (!t.is_cuda()) return staged(t, [&](at::Tensor& d) { all_reduce_sum(d); });
    run(t, [&](cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()),
                           ncclSum, comm_, s);
    }, "ncclAllReduce");
  }
  void all_gather(const at::Tensor& in, at::Tensor& out) override {
    if (!in.is_cuda() || !out.is_cuda())
      return staged(in, out, [&](const at::Tensor& i, at::Tensor& o) { all_gather(i, o); });
    CONDENSE_CHECK(out.numel() == in.numel() * size_, "NCCL all_gather: out has {} elements, expected {}",
                   out.numel(), in.numel() * size_);
    CONDENSE_CHECK(in.scalar_type() == out.scalar_type(), "NCCL all_gather: in is {} but out is {}",
                   c10::toString(in.scalar_type()), c10::toString(out.scalar_type()));
    run(in, [&](cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()),
                           comm_, s);
    }, "ncclAllGather");
  }
  std::vector<at::Tensor> all_gather_v(const at::Tensor& in_raw) override {
    if (!in_raw.is_cuda()) {
      std::vector<at::Tensor> parts = all_gather_v(in_raw.to(cuda()));
      for (at::Tensor& p : parts) p = p.cpu();
      return parts;
    }
    at::Tensor in = in_raw.contiguous();
    at::Tensor counts = at::empty({size_}, in.options().dtype(at::kLong));
    all_gather(at::full({1}, in.numel(), in.options().dtype(at::kLong)), counts);
    at::Tensor host = counts.cpu();
    int64_t max = host.max().item<int64_t>();
    at::Tensor padded = at::zeros({max}, in.options());
    padded.narrow(0, 0, in.numel()).copy_(in);
    at::Tensor all = at::empty({max * size_}, in.options());
    all_gather(padded, all);
    std::vector<at::Tensor> parts;
    for (int r = 0; r < size_; ++r) parts.push_back(all.narrow(0, r * max, host[r].item<int64_t>()));
    return parts;
  }
  void broadcast(at::Tensor& t, int root) override {
    if (!t.is_cuda()) return staged(t, [&](at::Tensor& d) { broadcast(d, root); });
    run(t, [&](cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), root,
                           comm_, s);
    }, "ncclBroadcast");
  }
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) override {
    if (!in.is_cuda() || !out.is_cuda())
      return staged(in, out, [&](const at::Tensor& i, at::Tensor& o) { reduce_scatter_sum(i, o); });
    CONDENSE_CHECK(in.numel() == out.numel() * size_, "NCCL reduce_scatter: in has {} elements, expected {}",
                   in.numel(), out.numel() * size_);
    CONDENSE_CHECK(in.scalar_type() == out.scalar_type(), "NCCL reduce_scatter: in is {} but out is {}",
                   c10::toString(in.scalar_type()), c10::toString(out.scalar_type()));
    run(in, [&](cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                               nccl_type(in.scalar_type()), ncclSum, comm_, s);
    }, "ncclReduceScatter");
  }
  void all_to_all(const at::Tensor& in, at::Tensor& out) override {
    if (!in.is_cuda() || !out.is_cuda())
      return staged(in, out, [&](const at::Tensor& i, at::Tensor& o) { all_to_all(i, o); });
    CONDENSE_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0 &&
                       in.scalar_type() == out.scalar_type(),
                   "NCCL all_to_all: in has {} elements and out {}, expected equal multiples of {}",
                   in.numel(), out.numel(), size_);
    CONDENSE_CHECK(in.is_contiguous() && out.is_contiguous(), "NCCL all_to_all: in and out must be contiguous");
    const int64_t n = in.numel() / size_;
    const size_t bytes = static_cast<size_t>(n) * in.element_size();
    auto* src = static_cast<const char*>(in.data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
    run(in, [&](cudaStream_t s) {
      // Grouped point-to-point calls: NCCL has no all-to-all collective of its own.
      ncclResult_t r = ncclGroupStart();
      for (int peer = 0; peer < size_ && r == ncclSuccess; ++peer) {
        r = ncclSend(src + peer * bytes, n, nccl_type(in.scalar_type()), peer, comm_, s);
        if (r == ncclSuccess) r = ncclRecv(dst + peer * bytes, n, nccl_type(in.scalar_type()), peer, comm_, s);
      }
      ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    }, "ncclSend/ncclRecv (all_to_all)");
  }
  void barrier() override {
    c10::cuda::getCurrentCUDAStream(device_).synchronize();
    CollectiveWatchdog::Scope watch(watchdog(), "barrier", 0);  // MPI's part blocks this thread
    if (mpi_) mpi_->barrier();
  }

 private:
  c10::Device cuda() const { return c10::Device(c10::kCUDA, device_); }
  // Runs `op` on a device copy of the CPU tensor `t` and copies the result back (the copy to
  // the host waits for the collective: it is ordered after it on the caller's stream).
  // The same for an (in, out) pair of which at least one is on the CPU.
  template <typename Op>
  void staged(const at::Tensor& in, at::Tensor& out, Op op) {
    at::Tensor d = out.to(cuda());
    op(in.to(cuda()), d);
    out.copy_(d);
  }
  template <typename Op>
  void staged(at::Tensor& t, Op op) {
    at::Tensor d = t.contiguous().to(cuda());
    op(d);
    t.copy_(d);
  }

  // Orders `op` after the caller's current stream and the caller's stream after `op` (nothing
  // to order when the caller already runs on stream_, see stream()).
  template <typename Op>
  void run(const at::Tensor& t, Op op, const char* name) {
    CONDENSE_CHECK(t.is_cuda() && t.is_contiguous(), "{}: tensors must be contiguous CUDA tensors", name);
    c10::cuda::CUDAGuard guard(device_);
    auto caller = c10::cuda::getCurrentCUDAStream(device_);
    if (caller == stream_) {
      check_nccl(op(stream_.stream()), name, rank_);
      watch(name, t);
      return;
    }
    at::cuda::CUDAEvent before, after;
    before.record(caller);
    before.block(stream_);
    check_nccl(op(stream_.stream()), name, rank_);
    watch(name, t);
    after.record(stream_);
    after.block(caller);
  }

  // With the watchdog armed: the collective just queued on stream_ is timed until an event
  // recorded after it completes (comm/watchdog.h).
  void watch(const char* name, const at::Tensor& t) {
    CollectiveWatchdog* w = watchdog();
    if (!w) return;
    auto done = std::make_shared<at::cuda::CUDAEvent>(cudaEventDisableTiming);
    done->record(stream_);
    // The watchdog's thread starts on device 0; querying there would make this process a
    // context on GPU 0 (about 0.5 GiB each, for every rank of a node), so it moves to ours.
    w->queued(name, static_cast<int64_t>(t.nbytes()), [done, device = device_] {
      c10::cuda::set_device(device);
      return done->query();
    });
  }

  // NCCL learns of a peer's failure (its process died, a connection broke) asynchronously;
  // the watchdog polls for it and ends this process at once instead of at the timeout.
  void watchdog_armed(CollectiveWatchdog& w) override {
    w.set_health_check([comm = comm_, rank = rank_, device = device_]() -> std::string {
      c10::cuda::set_device(device);  // as in watch(): no context on another rank's GPU
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
      if (r != ncclSuccess) return fmt::format("ncclCommGetAsyncError failed: {}", ncclGetErrorString(r));
      if (state == ncclSuccess || state == ncclInProgress) return "";
      return fmt::format("NCCL reports an asynchronous error on rank {}: {} ({})", rank,
                         ncclGetErrorString(state), ncclGetLastError(comm));
    });
  }

  std::unique_ptr<MpiCommunicator> mpi_;  // null in a one-process world without mpirun
  ncclComm_t comm_ = nullptr;
  c10::cuda::CUDAStream stream_ = c10::cuda::getDefaultCUDAStream();
  c10::DeviceIndex device_ = 0;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator() { return std::make_unique<NcclCommunicator>(); }
bool built_with_nccl() { return true; }

#else

std::unique_ptr<Communicator> make_nccl_communicator() {
  fail("this condense was built without NCCL (CONDENSE_WITH_NCCL=OFF); use comm backend mpi");
}
bool built_with_nccl() { return false; }

#endif

}  // namespace condense
