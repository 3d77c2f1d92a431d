#include "comm/nccl_communicator.h"

#include "core/error.h"

#ifdef CONDENSE_WITH_NCCL
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <mpi.h>
#include <nccl.h>

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
  NcclCommunicator() : mpi_() {
    rank_ = mpi_.rank();
    size_ = mpi_.size();
    int devices = static_cast<int>(c10::cuda::device_count());
    CONDENSE_CHECK(devices > 0, "NCCL backend on rank {}: no CUDA device is visible", rank_);
    device_ = static_cast<c10::DeviceIndex>(mpi_.local_rank() % devices);
    c10::cuda::set_device(device_);
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", rank_);
    check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi_.comm()), "MPI_Bcast(ncclUniqueId)");
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank", rank_);
    stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device_);
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return mpi_.local_rank(); }
  std::string backend() const override { return "nccl"; }

  void all_reduce_sum(at::Tensor& t) override {
    run(t, [&](cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()),
                           ncclSum, comm_, s);
    }, "ncclAllReduce");
  }
  void all_gather(const at::Tensor& in, at::Tensor& out) override {
    CONDENSE_CHECK(out.numel() == in.numel() * size_, "NCCL all_gather: out has {} elements, expected {}",
                   out.numel(), in.numel() * size_);
    run(in, [&](cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()),
                           comm_, s);
    }, "ncclAllGather");
  }
  std::vector<at::Tensor> all_gather_v(const at::Tensor& in_raw) override {
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
    run(t, [&](cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), root,
                           comm_, s);
    }, "ncclBroadcast");
  }
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) override {
    CONDENSE_CHECK(in.numel() == out.numel() * size_, "NCCL reduce_scatter: in has {} elements, expected {}",
                   in.numel(), out.numel() * size_);
    run(in, [&](cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                               nccl_type(in.scalar_type()), ncclSum, comm_, s);
    }, "ncclReduceScatter");
  }
  void barrier() override {
    c10::cuda::getCurrentCUDAStream(device_).synchronize();
    mpi_.barrier();
  }

 private:
  // Orders `op` after the caller's current stream and the caller's stream after `op`.
  template <typename Op>
  void run(const at::Tensor& t, Op op, const char* name) {
    CONDENSE_CHECK(t.is_cuda() && t.is_contiguous(), "{}: tensors must be contiguous CUDA tensors", name);
    c10::cuda::CUDAGuard guard(device_);
    auto caller = c10::cuda::getCurrentCUDAStream(device_);
    at::cuda::CUDAEvent before, after;
    before.record(caller);
    before.block(stream_);
    check_nccl(op(stream_.stream()), name, rank_);
    after.record(stream_);
    after.block(caller);
  }

  MpiCommunicator mpi_;
  ncclComm_t comm_ = nullptr;
  c10::cuda::CUDAStream stream_ = c10::cuda::getDefaultCUDAStream();
  c10::DeviceIndex device_ = 0;
  int rank_ = 0, size_ = 1;
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
