#include "compressors/context_sequence.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

// The decoder's logits on the last k positions of the concatenated parts: [B, k, vocab].
at::Tensor tail_logits(LlamaForCausalLM& decoder, const std::vector<at::Tensor>& parts, int64_t k) {
  std::vector<at::Tensor> present;
  for (const at::Tensor& p : parts)
    if (p.defined() && p.size(1) > 0) present.push_back(p);
  at::Tensor embeds = at::cat(present, 1);
  CONDENSE_CHECK(k >= 1 && k <= embeds.size(1), "scoring the last {} of {} positions", k, embeds.size(1));
  at::Tensor h = decoder->hidden({at::Tensor(), embeds});
  return decoder->logits(h.narrow(1, h.size(1) - k, k));
}

at::Tensor marker(const at::Tensor& v, int64_t batch) {
  return v.view({1, 1, -1}).expand({batch, 1, v.size(0)});
}

}  // namespace

void ContextLayout::check(int64_t window, const std::string& where) const {
  CONDENSE_CHECK(chunk >= 1 && prefix >= 0 && prefix + chunk < window,
                 "{}: context.prefix_len {} + context.chunk_len {} must leave at least one "
                 "continuation token in windows of {} tokens (data.seq_len)", where, prefix, chunk,
                 window);
}

at::Tensor tail_nll(LlamaForCausalLM& decoder, const std::vector<at::Tensor>& parts,
                    const at::Tensor& targets) {
  at::Tensor logits = tail_logits(decoder, parts, targets.size(1));
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                                targets.reshape({-1}));
}

std::pair<double, int64_t> tail_correct(LlamaForCausalLM& decoder, const std::vector<at::Tensor>& parts,
                                        const at::Tensor& targets) {
  at::Tensor logits = tail_logits(decoder, parts, targets.size(1));
  double correct = (logits.argmax(-1) == targets).sum().item<double>();
  return {correct, targets.numel()};
}

SequenceParts continuation_sequence(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                    const at::Tensor& targets, const ContextLayout& layout,
                                    const at::Tensor& z, const at::Tensor& cont) {
  const int64_t t = inputs.size(1), p = layout.prefix, n = layout.chunk;
  SequenceParts s;
  s.parts = {decoder->embed(inputs.narrow(1, 0, p)), z, marker(cont, inputs.size(0)),
             decoder->embed(inputs.narrow(1, p + n, t - p - n))};
  s.targets = targets.narrow(1, p + n - 1, t - p - n + 1);
  return s;
}

SequenceParts reconstruction_sequence(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                      const ContextLayout& layout, const at::Tensor& z,
                                      const at::Tensor& rec) {
  const int64_t p = layout.prefix, n = layout.chunk;
  SequenceParts s;
  s.parts = {z, marker(rec, inputs.size(0)), decoder->embed(inputs.narrow(1, p, n - 1))};
  s.targets = inputs.narrow(1, p, n);
  return s;
}

SequenceParts continuation_with(LlamaForCausalLM& decoder, const at::Tensor& inputs,
                                const at::Tensor& targets, const ContextLayout& layout,
                                const at::Tensor& context) {
  const int64_t t = inputs.size(1), p = layout.prefix, n = layout.chunk;
  SequenceParts s;
  s.parts = {decoder->embed(inputs.narrow(1, 0, p)), context,
             decoder->embed(inputs.narrow(1, p + n, t - p - n))};
  s.targets = targets.narrow(1, p + n, t - p - n);
  return s;
}

}  // namespace condense
