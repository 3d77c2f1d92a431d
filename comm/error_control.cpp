#include "comm/error_control.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {

const std::vector<std::string>& ErrorControl::kinds() {
  static const std::vector<std::string> k = {"none", "ef", "ef21", "econtrol"};
  return k;
}

ErrorControl::ErrorControl(std::string kind, double eta, int64_t numel, at::Device device,
                           double decay)
    : kind_(std::move(kind)), eta_(eta), decay_(decay) {
  CONDENSE_CHECK(std::find(kinds().begin(), kinds().end(), kind_) != kinds().end(),
                 "unknown error control '{}'; valid: none, ef, ef21, econtrol", kind_);
  const auto options = at::TensorOptions(device).dtype(at::kFloat);
  auto zeros = [&] { return at::zeros({numel}, options); };
  if (kind_ == "ef" || kind_ == "econtrol") e_ = zeros();
  if (kind_ == "ef21" || kind_ == "econtrol") {
    h_local_ = zeros();
    h_ = zeros();
  }
  scratch_ = at::empty({numel}, options);
  if (kind_ != "none") d_ = at::empty({numel}, options);
}

std::vector<at::Tensor> ErrorControl::state() const {
  std::vector<at::Tensor> s;
  for (const at::Tensor& t : {e_, h_local_, h_})
    if (t.defined()) s.push_back(t);
  return s;
}

void ErrorControl::step(at::Tensor& g, Codec& codec, ExchangeContext& ctx) {
  CONDENSE_CHECK(g.device() == scratch_.device() && g.numel() == scratch_.numel(),
                 "ErrorControl: bucket of {} elements on {}, but the state has {} on {}", g.numel(),
                 g.device().str(), scratch_.numel(), scratch_.device().str());
  if (kind_ == "none") {
    codec.exchange(g, nullptr, scratch_, ctx);  // codecs read v while writing mean: no aliasing
    g.copy_(scratch_);
    return;
  }
  at::Tensor& u = scratch_;
  if (kind_ == "ef") {
    if (decay_ == 1.0) u.copy_(g).add_(e_);  // v = g + e (bit for bit as before decay existed)
    else u.copy_(g).add_(e_, decay_);         // v = g + beta e
    codec.exchange(u, &d_, g, ctx);      // g <- mean of C(v_r)
    at::sub_out(e_, u, d_);              // e = v - d
    return;
  }
  if (kind_ == "ef21") {
    at::sub_out(u, g, h_local_);         // g - h_i
    codec.exchange(u, &d_, g, ctx);      // g <- m
    h_local_.add_(d_);
    h_.add_(g);
    g.copy_(h_);
    return;
  }
  // econtrol
  at::sub_out(u, g, h_local_).add_(e_, eta_);  // u = eta e + g - h_i
  codec.exchange(u, &d_, g, ctx);               // g <- m
  e_.mul_(1.0 - eta_).add_(u).sub_(d_);         // e += g - h_i - d  (= (1 - eta) e + u - d)
  h_local_.add_(d_);
  h_.add_(g);
  g.copy_(h_);
}

}  // namespace condense
