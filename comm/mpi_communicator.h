// The MPI backend: Open MPI collectives on CPU tensors over MPI_COMM_WORLD (or a duplicate of
// it, so condense's traffic never mixes with another library's). See communicator.h for the
// collective contract. Counts beyond INT_MAX are split into several calls.
//
// all_reduce_sum of large buffers (>= kRingMinBytes) uses our own ring (reduce-scatter then
// all-gather with MPI_Sendrecv to the neighbours, Patarasuk & Yuan 2009): every rank sends
// 2 (n-1)/n of the buffer, both directions of every link busy at once. Open MPI's tuned
// allreduce picked reduce-then-broadcast for 2 ranks over TCP, which sends the buffer one way
// and then back: 1.7x slower than gloo's ring at 100 Mbit/s (bench/RESULTS.md). Each chunk is
// summed in ring order and then copied to every rank, so all ranks get identical bits.
#pragma once
#include <mpi.h>

#include "comm/communicator.h"

namespace condense {

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator();  // initializes MPI if needed; duplicates MPI_COMM_WORLD
  ~MpiCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "mpi"; }
  void all_reduce_sum(at::Tensor& t) override;
  void all_gather(const at::Tensor& in, at::Tensor& out) override;
  std::vector<at::Tensor> all_gather_v(const at::Tensor& in) override;
  std::vector<at::Tensor> gather_v(const at::Tensor& in, int root) override;
  void broadcast(at::Tensor& t, int root) override;
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) override;
  void all_to_all(const at::Tensor& in, at::Tensor& out) override;
  void barrier() override;
  MPI_Comm comm() const { return comm_; }
  static constexpr int64_t kRingMinBytes = 256 * 1024;

 private:
  void ring_all_reduce(at::Tensor& t);
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

}  // namespace condense
