// Gradient codecs: each turns one rank's flat fp32 bucket into a payload, moves the payloads
// between ranks with the collective that suits them, and decodes the mean.
//
// Contract (every codec):
//  - the payload size depends only on the bucket's element count (and the codec's settings),
//    never on the values, so ranks exchange fixed-size messages without agreeing on sizes;
//  - exchange() is collective: every rank calls it for the same bucket in the same order;
//  - `mean` = (1/n) sum_r C(v_r) is identical bit for bit on every rank (summable payloads go
//    through all-reduce; the others through all-gather and a sum in fixed rank order);
//  - `local` (when asked for) = C(v) of this rank, the vector error control subtracts.
// Codecs (DESIGN.md "Compressed communication"):
//   none      dense fp32 all-reduce (identity)
//   fp16/bf16 v/n rounded to 16 bits, all-reduced in 16 bits
//   topk      the k largest |v| (exact; comm/topk_select.h), all-gather of (index, value)
//   randk     k indices drawn from a seed shared by all ranks (per step and bucket); values
//             all-reduced. Scaled by numel/k (unbiased) without error control, unscaled
//             (contractive, as error feedback needs) with it
//   qsgd      stochastic rounding to s levels of |v| / ||block||, unbiased (Alistarh et al.,
//             NeurIPS 2017), bit-packed; all-gather
//   sign      sign bits with one scale (mean |v|) per block (Karimireddy et al., ICML 2019);
//             all-gather. qsgd and sign also run as 1-bit Adam's compressed all-reduce
//             (collective: compressed_all_reduce; comm/codec_compressed_allreduce.cpp)
//   powersgd  rank-r power iteration with a warm-started Q (Vogels et al., NeurIPS 2019):
//             matrices as P = M Q, all-reduce, orthonormalize, Q = M^T P, all-reduce;
//             1-D parameters (and matrices too small to gain) all-reduced dense
//   int8      per tensor, 256 bins over +-3 std with a codebook of the bins' means (INTELLECT-1's
//             pseudo-gradient quantizer), one byte per element; all-gather (comm/codec_int8.cpp)
//   sparseloco Top-K per chunk (64 x 64 tiles of matrices, runs of 1-D tensors) with the kept
//             values quantized to 2-8 bits (SparseLoCo); all-gather (comm/codec_sparseloco.cpp)
//
// Devices: v, local, mean and every payload live on the bucket's device (BucketLayout::device),
// and so does codec state; the communicator must accept tensors there (NCCL for CUDA). CPU
// tensors take the CPU path (comm/topk_select.h's selection, qsgd/sign bit-packing loops);
// other devices take a path of ATen tensor ops (topk_abs_indices_tensor_ops in topk_select.h,
// comm/codec_kernels.h for qsgd/sign, a sync-free orthonormalization for powersgd; dense and
// randk are tensor ops on both), which also runs on CPU tensors when
// ExchangeContext::force_tensor_ops is set. On CUDA, Top-K selection and qsgd/sign go through
// condense's own kernels instead when they are built (comm/cuda_kernels_switch.h), with the
// same results. Both paths give the same bits for the same inputs
// and seeds (powersgd: the same up to float rounding of its matrix products; qsgd: see
// codec_kernels.h for the one, improbable, exception), so a CUDA run compresses exactly like a
// CPU run.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "comm/comm_config.h"
#include "comm/communicator.h"

namespace condense {

// Where the parameters of one bucket sit in its flat vector (PowerSGD needs their shapes), and
// on which device the bucket lives (codec and error-control state is kept there).
struct BucketLayout {
  std::vector<int64_t> offsets;              // element offset of each parameter
  std::vector<std::vector<int64_t>> shapes;  // each parameter's shape
  int64_t numel = 0;
  at::Device device = at::kCPU;
};

// Per-step accounting of one rank's exchanges (summed over buckets).
struct ExchangeStats {
  int64_t payload_bytes = 0;  // bytes this rank contributes to collectives
  int64_t wire_bytes = 0;     // bytes this rank sends with the collectives used (see below)
  int64_t dense_wire_bytes = 0;  // what a dense fp32 ring all-reduce of the same buckets sends
  double compress_s = 0, exchange_s = 0, decompress_s = 0;

  // Bytes sent per rank by the standard bandwidth-optimal algorithms: ring all-reduce of P
  // bytes sends 2 (n-1)/n P; all-gather of P bytes per rank sends (n-1) P.
  void add_all_reduce(int64_t bytes, int world);
  void add_all_gather(int64_t bytes, int world);
  // All-to-all of `bytes` per destination: n - 1 of them leave this rank.
  void add_all_to_all(int64_t bytes, int world);
  // The dense fp32 ring all-reduce of `bytes` that the exchange replaced.
  void add_dense_reference(int64_t bytes, int world);
  // dense_wire_bytes / wire_bytes (1 when nothing was sent).
  double ratio() const { return wire_bytes > 0 ? double(dense_wire_bytes) / wire_bytes : 1.0; }
};

// What a codec needs besides the vector: the communicator and a seed that every rank derives
// identically for this step and bucket (randk indices, powersgd initialization), plus this
// rank's own stream (qsgd rounding).
struct ExchangeContext {
  Communicator& comm;
  uint64_t shared_seed;  // same on every rank for this (step, bucket)
  uint64_t rank_seed;    // differs per rank
  ExchangeStats& stats;
  // Take the tensor-op path even for CPU tensors (see "Devices" above); for tests, which
  // check it against the CPU path bit for bit on machines without a GPU, and benchmarks.
  bool force_tensor_ops = false;
};

// Whether a codec works on v with tensor ops (any device) rather than its CPU loops.
inline bool use_tensor_ops(const at::Tensor& v, const ExchangeContext& ctx) {
  return ctx.force_tensor_ops || !v.is_cpu();
}

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // Bytes this rank contributes per exchange of its bucket.
  virtual int64_t payload_bytes() const = 0;
  // True when payloads are summed by all-reduce, false when they are all-gathered.
  virtual bool summable() const = 0;
  // Adds what one exchange moves to `s` (the start-up plan); by default one all-reduce or
  // all-gather of payload_bytes().
  virtual void plan(ExchangeStats& s, int world) const;
  // Collective. v: this rank's vector (fp32, contiguous, the bucket's numel, on the bucket's
  // device; not modified). Writes mean (same shape and device as v); writes *local when local
  // is not null. On CUDA the work is queued on the caller's current stream (and collectives are
  // ordered after it, see communicator.h); it may return before the results are computed.
  virtual void exchange(const at::Tensor& v, at::Tensor* local, at::Tensor& mean,
                        ExchangeContext& ctx) = 0;
  // State to checkpoint, in a fixed order (PowerSGD's warm-start Q); restored in place.
  virtual std::vector<at::Tensor> state() { return {}; }
};

// The codec `config.codec` for one bucket. `error_control` says whether a contractive
// (rather than unbiased) randk is wanted. Throws naming valid codecs for an unknown name.
std::unique_ptr<Codec> make_codec(const CompressionConfig& config, const BucketLayout& layout,
                                  int world, bool error_control);

// Valid codec names, for recipe validation and errors.
const std::vector<std::string>& codec_names();

// A comm.compression key set away from its default that the chosen codec or error control does
// not read (`levels` under topk, `decay` under econtrol, `rank` without powersgd, ...): a message
// naming the key, the choices that read it and the one made; "" when every set key is read.
// Ignored, such a key reads as a setting that took effect. Checked when a run starts
// (recipes/run_setup.cpp), not when a recipe is parsed, so that checkpoints whose recipes were
// written before the check stay readable.
std::string unread_compression_key(const CompressionConfig& c);

// Elements kept by topk/randk for a bucket of `numel` (k if set, else ratio * numel; >= 1).
int64_t kept_elements(const CompressionConfig& config, int64_t numel);

// t /= n (in place) and t / n, correctly rounded on every device. CUDA computes a division by a
// CPU scalar as a product with the scalar's reciprocal, which differs in the last bit unless n
// is a power of two; a 0-dim divisor on t's device keeps the true division there, and on the
// CPU it is the very division t.div_(n) does. Used for every mean over ranks, so that CUDA and
// CPU runs agree for any world size.
at::Tensor& div_exact_(at::Tensor& t, int64_t n);
at::Tensor div_exact(const at::Tensor& t, int64_t n);

}  // namespace condense
