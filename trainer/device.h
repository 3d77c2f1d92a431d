// Where a run computes (train.device) and in which precision (train.precision).
//
// train.device: "cpu", "cuda" (this rank's GPU: local rank modulo the visible devices, the
// one-process-per-GPU layout that mpirun/srun and the NCCL communicator use) or "cuda:N".
// train.precision: "fp32", or "bf16" = mixed precision in the usual sense: the forward pass
// and the loss run under autocast (matrix products in bf16, reductions, softmax and the loss in
// fp32), while the weights, their gradients, the gradient buckets and the optimizer state stay
// fp32 (the "master weights"); backward follows the forward's dtypes. bf16 needs no loss
// scaling (its exponent range is fp32's). bf16 gradient traffic is a separate choice:
// comm.compression.codec bf16.
#pragma once
#include <string>

#include <c10/core/Device.h>
#include <ATen/core/Tensor.h>

namespace condense {

// The device train.device names, for this rank. Fails naming the key when CUDA is asked for
// but no device is visible, or when N is out of range.
c10::Device training_device(const std::string& spec, int local_rank);

// Fails naming train.device when it asks for CUDA and this process sees no CUDA device (no
// GPU, no driver, or CUDA_VISIBLE_DEVICES empty). Call before anything touches CUDA.
void require_device(const std::string& spec);

// "cpu" or "cuda": the device type in a train.device value (for comm.device).
std::string device_type_name(const std::string& spec);

// For logs: "cuda:0", or on the CPU which vector kernels ATen dispatches to ("cpu (AVX512
// kernels)"). The kernels and the thread count change floating-point rounding, so two machines
// train bitwise alike only with the same of both (README "Reproducibility").
std::string device_description(c10::Device device);

// The most intra-op threads any option accepts: beyond it LibTorch's pool takes minutes and
// gigabytes to start (100000 was accepted before and never began), and no machine needs more.
constexpr int64_t kMaxThreads = 1024;

// Sets ATen's intra-op threads from an option (`option` names it in errors): 0 means one per
// core; refuses negative counts and counts above kMaxThreads. Returns the count set.
int set_intra_op_threads(int64_t requested, const std::string& option);

// Empty, or why train.precision=bf16 will be slow on this device: on a CPU without AVX-512
// (BW, VL and DQ: what LibTorch's oneDNN bf16 GEMMs need) ATen multiplies bf16 matrices with its
// reference loops. Measured on an AVX2 AMD EPYC: a 25M-parameter model's step took 39 s in bf16.
std::string bf16_speed_warning(c10::Device device, const std::string& precision);

// Autocast for the duration of a forward + loss under train.precision (a no-op for fp32).
// Restores the previous autocast settings on exit and drops autocast's weight-cast cache
// when the outermost scope ends (as torch.autocast does), so each step casts the updated
// weights afresh.
class PrecisionScope {
 public:
  PrecisionScope(const std::string& precision, c10::Device device);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_ = c10::DeviceType::CPU;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

// The default CUDA generator's state of `device` (an empty tensor on CPU), and its restore:
// checkpointed beside the CPU state so that anything random on the GPU resumes exactly.
at::Tensor cuda_rng_state(c10::Device device);
void set_cuda_rng_state(c10::Device device, const at::Tensor& state);

}  // namespace condense
