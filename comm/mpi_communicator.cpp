#include "comm/mpi_communicator.h"

#include <ATen/ATen.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <climits>

#include "comm/mpi_runtime.h"
#include "core/error.h"

namespace condense {
namespace {

MPI_Datatype mpi_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kChar: return MPI_INT8_T;
    case at::kHalf:
    case at::kBFloat16: return MPI_UINT16_T;  // summed by the user ops below
    default: fail("MPI communicator: unsupported dtype {}", c10::toString(t));
  }
}

// MPI has no 16-bit float types; sums of fp16/bf16 buffers go through user-defined operations
// on MPI_UINT16_T that add in fp32 and round once per addition (as NCCL does). Addition is
// commutative bit for bit, so every rank receives the same result.
template <typename T>
void sum16(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = T(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

MPI_Op sum_op(at::ScalarType t) {
  static MPI_Op half = MPI_OP_NULL, bf16 = MPI_OP_NULL;  // created once, after MPI_Init
  if (t == at::kHalf) {
    if (half == MPI_OP_NULL) check_mpi(MPI_Op_create(&sum16<c10::Half>, 1, &half), "MPI_Op_create");
    return half;
  }
  if (t == at::kBFloat16) {
    if (bf16 == MPI_OP_NULL)
      check_mpi(MPI_Op_create(&sum16<c10::BFloat16>, 1, &bf16), "MPI_Op_create");
    return bf16;
  }
  return MPI_SUM;
}

void check_cpu_contiguous(const at::Tensor& t, const char* op) {
  CONDENSE_CHECK(t.device().is_cpu() && t.is_contiguous(),
                 "MPI {}: tensors must be contiguous CPU tensors", op);
}

// Calls fn(offset, count) over chunks whose count fits an int.
template <typename Fn>
void chunked(int64_t n, Fn fn) {
  constexpr int64_t kMax = INT_MAX / 2;
  for (int64_t off = 0; off < n; off += kMax) fn(off, static_cast<int>(std::min(kMax, n - off)));
  if (n == 0) fn(0, 0);
}

}  // namespace

MpiCommunicator::MpiCommunicator() {
  ensure_mpi_initialized();
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Comm local;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
            "MPI_Comm_split_type");
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_free(&local);
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && mpi_initialized()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::ring_all_reduce(at::Tensor& t) {
  at::Tensor flat = t.view({-1});
  const int64_t n = flat.numel(), p = size_;
  auto begin = [&](int64_t c) { return n * c / p; };  // chunk c is [begin(c), begin(c + 1))
  auto chunk = [&](int64_t c) { c = ((c % p) + p) % p; return flat.narrow(0, begin(c), begin(c + 1) - begin(c)); };
  const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
  MPI_Datatype type = mpi_type(t.scalar_type());
  auto exchange = [&](const at::Tensor& send, at::Tensor recv) {
    CONDENSE_CHECK(send.numel() <= INT_MAX && recv.numel() <= INT_MAX, "MPI ring: chunk too large");
    check_mpi(MPI_Sendrecv(send.data_ptr(), static_cast<int>(send.numel()), type, right, 7,
                           recv.data_ptr(), static_cast<int>(recv.numel()), type, left, 7, comm_,
                           MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
  };
  if (p == 2) {
    // Two ranks: one swap of the whole buffer sends the same bytes as the ring's two steps with
    // one round trip fewer; a + b and b + a are the same float, so both ranks get equal bits.
    at::Tensor other = at::empty_like(flat);
    exchange(flat, other);
    flat.add_(other);
    return;
  }
  at::Tensor incoming = at::empty({(n + p - 1) / p + 1}, t.options());
  // Reduce-scatter: after step s, chunk (rank - s - 1) holds the sum of s + 2 ranks' values.
  for (int64_t s = 0; s < p - 1; ++s) {
    at::Tensor target = chunk(rank_ - s - 1);
    at::Tensor buf = incoming.narrow(0, 0, target.numel());
    exchange(chunk(rank_ - s), buf);
    target.add_(buf);
  }
  // All-gather: rank r owns the finished chunk r + 1 and passes finished chunks along.
  for (int64_t s = 0; s < p - 1; ++s) {
    at::Tensor target = chunk(rank_ - s);
    exchange(chunk(rank_ + 1 - s), target);
  }
}

void MpiCommunicator::all_reduce_sum(at::Tensor& t) {
  CollectiveWatchdog::Scope watch(watchdog(), "all_reduce_sum", static_cast<int64_t>(t.nbytes()));
  check_cpu_contiguous(t, "all_reduce");
  if (size_ > 1 && t.numel() * t.element_size() >= kRingMinBytes && t.numel() >= size_) {
    ring_all_reduce(t);
    return;
  }
  MPI_Datatype type = mpi_type(t.scalar_type());
  MPI_Op op = sum_op(t.scalar_type());
  char* base = static_cast<char*>(t.data_ptr());
  int64_t elem = t.element_size();
  chunked(t.numel(), [&](int64_t off, int count) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, base + off * elem, count, type, op, comm_),
              "MPI_Allreduce");
  });
}

void MpiCommunicator::all_gather(const at::Tensor& in, at::Tensor& out) {
  CollectiveWatchdog::Scope watch(watchdog(), "all_gather", static_cast<int64_t>(in.nbytes()));
  check_cpu_contiguous(in, "all_gather");
  check_cpu_contiguous(out, "all_gather");
  CONDENSE_CHECK(out.numel() == in.numel() * size_ && out.scalar_type() == in.scalar_type(),
                 "MPI all_gather: out has {} elements, expected {} x {}", out.numel(), size_,
                 in.numel());
  CONDENSE_CHECK(in.numel() <= INT_MAX, "MPI all_gather: {} elements exceed one call", in.numel());
  MPI_Datatype type = mpi_type(in.scalar_type());
  check_mpi(MPI_Allgather(in.data_ptr(), static_cast<int>(in.numel()), type, out.data_ptr(),
                          static_cast<int>(in.numel()), type, comm_),
            "MPI_Allgather");
}

std::vector<at::Tensor> MpiCommunicator::all_gather_v(const at::Tensor& in_raw) {
  CollectiveWatchdog::Scope watch(watchdog(), "all_gather_v", static_cast<int64_t>(in_raw.nbytes()));
  at::Tensor in = in_raw.contiguous();
  check_cpu_contiguous(in, "all_gather_v");
  at::Tensor counts = at::empty({size_}, at::kLong);
  at::Tensor mine = at::full({1}, in.numel(), at::kLong);
  all_gather(mine, counts);
  std::vector<int> recv(size_), displs(size_);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) {
    int64_t c = counts[r].item<int64_t>();
    CONDENSE_CHECK(total + c <= INT_MAX, "MPI all_gather_v: total exceeds one call");
    recv[r] = static_cast<int>(c);
    displs[r] = static_cast<int>(total);
    total += c;
  }
  at::Tensor out = at::empty({total}, in.options());
  MPI_Datatype type = mpi_type(in.scalar_type());
  check_mpi(MPI_Allgatherv(in.data_ptr(), static_cast<int>(in.numel()), type, out.data_ptr(),
                           recv.data(), displs.data(), type, comm_),
            "MPI_Allgatherv");
  std::vector<at::Tensor> parts;
  for (int r = 0; r < size_; ++r) parts.push_back(out.narrow(0, displs[r], recv[r]));
  return parts;
}

std::vector<at::Tensor> MpiCommunicator::gather_v(const at::Tensor& in_raw, int root) {
  CollectiveWatchdog::Scope watch(watchdog(), "gather_v", static_cast<int64_t>(in_raw.nbytes()));
  at::Tensor in = in_raw.contiguous();
  check_cpu_contiguous(in, "gather_v");
  CONDENSE_CHECK(in.numel() <= INT_MAX, "MPI gather_v: {} elements exceed one call", in.numel());
  int64_t mine = in.numel();
  std::vector<int64_t> counts(rank_ == root ? size_ : 0);
  check_mpi(MPI_Gather(&mine, 1, MPI_INT64_T, counts.data(), 1, MPI_INT64_T, root, comm_), "MPI_Gather");
  std::vector<int> recv(counts.size()), displs(counts.size());
  int64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    CONDENSE_CHECK(total + counts[r] <= INT_MAX, "MPI gather_v: total exceeds one call");
    recv[r] = static_cast<int>(counts[r]);
    displs[r] = static_cast<int>(total);
    total += counts[r];
  }
  at::Tensor out = at::empty({total}, in.options());
  MPI_Datatype type = mpi_type(in.scalar_type());
  check_mpi(MPI_Gatherv(in.data_ptr(), static_cast<int>(in.numel()), type, out.data_ptr(),
                        recv.data(), displs.data(), type, root, comm_),
            "MPI_Gatherv");
  std::vector<at::Tensor> parts;
  for (size_t r = 0; r < counts.size(); ++r) parts.push_back(out.narrow(0, displs[r], recv[r]));
  return parts;
}

void MpiCommunicator::broadcast(at::Tensor& t, int root) {
  CollectiveWatchdog::Scope watch(watchdog(), "broadcast", static_cast<int64_t>(t.nbytes()));
  check_cpu_contiguous(t, "broadcast");
  MPI_Datatype type = mpi_type(t.scalar_type());
  char* base = static_cast<char*>(t.data_ptr());
  int64_t elem = t.element_size();
  chunked(t.numel(), [&](int64_t off, int count) {
    check_mpi(MPI_Bcast(base + off * elem, count, type, root, comm_), "MPI_Bcast");
  });
}

void MpiCommunicator::reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) {
  CollectiveWatchdog::Scope watch(watchdog(), "reduce_scatter_sum", static_cast<int64_t>(in.nbytes()));
  check_cpu_contiguous(in, "reduce_scatter");
  check_cpu_contiguous(out, "reduce_scatter");
  CONDENSE_CHECK(in.numel() == out.numel() * size_ && in.scalar_type() == out.scalar_type(),
                 "MPI reduce_scatter: in has {} elements, expected {} x {}", in.numel(), size_,
                 out.numel());
  CONDENSE_CHECK(out.numel() <= INT_MAX, "MPI reduce_scatter: block too large for one call");
  check_mpi(MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(out.numel()),
                                     mpi_type(in.scalar_type()), sum_op(in.scalar_type()), comm_),
            "MPI_Reduce_scatter_block");
}

void MpiCommunicator::all_to_all(const at::Tensor& in, at::Tensor& out) {
  CollectiveWatchdog::Scope watch(watchdog(), "all_to_all", static_cast<int64_t>(in.nbytes()));
  check_cpu_contiguous(in, "all_to_all");
  check_cpu_contiguous(out, "all_to_all");
  CONDENSE_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0 &&
                     in.scalar_type() == out.scalar_type(),
                 "MPI all_to_all: in has {} elements and out {}, expected equal multiples of {}",
                 in.numel(), out.numel(), size_);
  const int64_t n = in.numel() / size_;
  CONDENSE_CHECK(n <= INT_MAX, "MPI all_to_all: {} elements per rank exceed one call", n);
  MPI_Datatype type = mpi_type(in.scalar_type());
  check_mpi(MPI_Alltoall(in.data_ptr(), static_cast<int>(n), type, out.data_ptr(),
                         static_cast<int>(n), type, comm_),
            "MPI_Alltoall");
}

void MpiCommunicator::barrier() {
  CollectiveWatchdog::Scope watch(watchdog(), "barrier", 0);
  check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
}

}  // namespace condense
