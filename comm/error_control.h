// Error control around a compressed exchange (DESIGN.md "Compressed communication"), in
// gradient space: g is this rank's gradient bucket, X(u) the codec's exchange returning this
// rank's compressed C(u) (d) and the mean over ranks of the C(u_r) (m); the optimizer receives
// the returned vector.
//   none     : m = X(g)                                           ; return m
//   ef       : v = g + beta e ; (d, m) = X(v) ; e = v - d         ; return m
//              (error feedback: Seide et al. 2014; Karimireddy et al., ICML 2019; beta = 1.
//              SparseLoCo decays the buffer, beta 0.95, so that it also acts as momentum)
//   ef21     : (d, m) = X(g - h_i) ; h_i += d ; h += m            ; return h
//              (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021)
//   econtrol : (d, m) = X(eta e + g - h_i) ; e += g - h_i - d ; h_i += d ; h += m ; return h
//              (Gao, Islamov, Stich, ICLR 2024)
// Invariants (any codec; tested on 2 and 4 ranks): EF (beta 1): sum of sent d + e = sum of g, per
// rank.
// EControl: sum over steps of returned h + mean over ranks of the final e = sum over steps of
// the mean gradient (e_T = sum g - sum h_i per rank, and h = mean h_i).
// All state starts at zero; h is identical on every rank because m is.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "comm/codec.h"

namespace condense {

class ErrorControl {
 public:
  // kind: none | ef | ef21 | econtrol. State tensors are allocated for `numel` elements on
  // `device`, the device of the buckets it will see. decay: ef's beta.
  ErrorControl(std::string kind, double eta, int64_t numel, at::Device device = at::kCPU,
               double decay = 1.0);

  // Collective (through the codec). g: fp32 bucket on the state's device, overwritten with the
  // vector the optimizer should use. Tensor ops only, so the same code runs on every device (on
  // CUDA queued on the current stream).
  void step(at::Tensor& g, Codec& codec, ExchangeContext& ctx);

  // e, h_i, h as applicable, in a fixed order (checkpointed per rank, restored in place).
  std::vector<at::Tensor> state() const;
  const std::string& kind() const { return kind_; }

  // Valid kinds, for recipe validation and errors.
  static const std::vector<std::string>& kinds();

 private:
  std::string kind_;
  double eta_, decay_;
  at::Tensor e_, h_local_, h_;  // undefined when the kind does not use them
  at::Tensor scratch_, d_;      // reused buffers
};

}  // namespace condense
