#include "model/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"

namespace condense {
namespace {

// Asymmetric 8-bit quantization of x along `dim`: codes 0..255 with x ~ code * scale + min.
struct Quantized {
  at::Tensor codes, scale, min;
};

Quantized quantize(const at::Tensor& x, int64_t dim) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor mn = xf.amin(dim, true), mx = xf.amax(dim, true);
  // A constant slice has no range: any positive scale reproduces it exactly from its minimum.
  at::Tensor scale = ((mx - mn) / 255.0).clamp_min(1e-12);
  at::Tensor codes = ((xf - mn) / scale).round_().clamp_(0, 255).to(at::kByte);
  return {codes, scale, mn};
}

at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& min,
                      at::ScalarType dtype) {
  return (codes.to(at::kFloat) * scale + min).to(dtype);
}

}  // namespace

KVCacheOptions parse_kv_cache(const std::string& text, const std::string& option) {
  KVCacheOptions o;
  if (text == "fp") o.type = KVCacheType::kFp;
  else if (text == "int8") o.type = KVCacheType::kInt8;
  else fail("{} '{}': valid are fp (the model's dtype) and int8 (KIVI layout: keys per channel "
            "in groups of {} positions, values per token)", option, text, o.group);
  return o;
}

KVCache::KVCache(const LlamaConfig& config, int64_t batch, int64_t capacity,
                 at::TensorOptions options, KVCacheOptions kind)
    : kind_(kind), options_(options), batch_(batch), capacity_(capacity),
      kv_heads_(config.kv_heads()), head_dim_(config.head_size()),
      element_bytes_(static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())))) {
  CONDENSE_CHECK(kind_.type != KVCacheType::kInt8 || kind_.group > 0,
                 "int8 KV cache: group must be positive, got {}", kind_.group);
  const size_t layers = static_cast<size_t>(config.num_hidden_layers);
  for (auto* v : {&keys_, &values_, &key_scale_, &key_min_, &key_tail_, &value_scale_, &value_min_,
                  &recent_k_, &recent_v_})
    v->resize(layers);
  ring_.assign(layers, 0);
  const int64_t g = kind_.group, rounded = (capacity_ + g - 1) / g * g;
  for (size_t l = 0; l < layers; ++l) {
    const int64_t w = config.window(static_cast<int64_t>(l));
    if (w == 0) continue;
    if (kind_.type == KVCacheType::kFp) {
      ring_[l] = std::min(w, capacity_);
    } else {
      // int8: whole key groups, enough complete ones to cover the window behind the current
      // group, plus the current one (quantized into the ring at commit): ceil(w / g) + 1 groups.
      const int64_t ring = ((w + g - 1) / g + 1) * g;
      if (ring < rounded) ring_[l] = ring;
    }
  }
}

void KVCache::allocate(int64_t layer, int64_t h, int64_t kw, int64_t vw) {
  const int64_t b = batch_;
  if (kind_.type == KVCacheType::kFp) {
    keys_[layer] = at::empty({b, h, slots(layer), kw}, options_);
    values_[layer] = at::empty({b, h, slots(layer), vw}, options_);
    return;
  }
  // Positions held: the capacity in whole groups, or a windowed layer's ring of groups.
  const int64_t ring = ring_[static_cast<size_t>(layer)];
  const int64_t groups = ring > 0 ? ring / kind_.group : (capacity_ + kind_.group - 1) / kind_.group;
  const int64_t positions = ring > 0 ? ring : capacity_;
  at::TensorOptions f = options_.dtype(at::kFloat), u8 = options_.dtype(at::kByte);
  keys_[layer] = at::empty({b, h, groups * kind_.group, kw}, u8);
  values_[layer] = at::empty({b, h, positions, vw}, u8);
  key_scale_[layer] = at::empty({b, h, groups, kw}, f);
  key_min_[layer] = at::empty({b, h, groups, kw}, f);
  key_tail_[layer] = at::empty({b, h, kind_.group, kw}, options_);
  value_scale_[layer] = at::empty({b, h, positions, 1}, f);
  value_min_[layer] = at::empty({b, h, positions, 1}, f);
}

int64_t KVCache::max_append(bool cross_groups) const {
  if (kind_.type == KVCacheType::kFp || cross_groups) return capacity_ - length_;
  return std::min(capacity_ - length_, kind_.group - length_ % kind_.group);
}

std::pair<at::Tensor, at::Tensor> KVCache::append(int64_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  int64_t t = k.size(2);
  append_mask_ = append_key_positions_ = at::Tensor();
  CONDENSE_CHECK(length_ + t <= capacity_, "KV cache full: {} cached + {} new > capacity {}",
                 length_, t, capacity_);
  if (!keys_[layer].defined()) {
    CONDENSE_CHECK(length_ == 0, "KV cache: layer {} appended to for the first time at position {}",
                   layer, length_);
    allocate(layer, k.size(1), k.size(3), v.size(3));
  }
  CONDENSE_CHECK(k.size(1) == keys_[layer].size(1) && k.size(3) == keys_[layer].size(3) &&
                     v.size(1) == keys_[layer].size(1) && v.size(3) == values_[layer].size(3),
                 "KV cache: layer {} got heads x widths {} x {} / {} x {} after {} x {} / {}", layer,
                 k.size(1), k.size(3), v.size(1), v.size(3), keys_[layer].size(1),
                 keys_[layer].size(3), values_[layer].size(3));
  const int64_t ring = ring_[static_cast<size_t>(layer)];
  if (kind_.type == KVCacheType::kFp && ring > 0) return append_ring(layer, k, v);
  if (kind_.type == KVCacheType::kFp) {
    keys_[layer].narrow(2, length_, t).copy_(k);
    values_[layer].narrow(2, length_, t).copy_(v);
    return {keys_[layer].narrow(2, 0, length_ + t), values_[layer].narrow(2, 0, length_ + t)};
  }
  return append_int8(layer, k, v);
}

// Positions length .. end - 1 arrive. Let done be the start of the group holding position length
// and last the start of the group holding end - 1. The groups this append completes before
// `last` are quantized here; last's positions stay in the full-precision tail, which commit()
// quantizes when that group completes (as it does after the fast decoder's writes).
//
// Returned, in order: the dequantized keys of complete groups from the first group a query still
// sees up to `last`, then the full-precision keys of positions done .. end - 1; values alike
// (dequantized; those of done .. last - 1 twice). Within one group (last == done) that is the
// run of positions first .. end - 1, which the caller masks from its first key (key_begin).
// Across groups a query in group G must see the quantized keys of the groups before G and the
// full-precision keys of G itself, as token-by-token decoding does; then the positions are not
// one run: append_mask() says which key each query sees and append_key_positions() where each
// key sits (for the caller's sliding window).
std::pair<at::Tensor, at::Tensor> KVCache::append_int8(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.size(2), g = kind_.group, end = length_ + t;
  const int64_t done = length_ / g * g, last = (end - 1) / g * g;
  const int64_t ring = ring_[static_cast<size_t>(layer)], ring_groups = ring / g;
  const int64_t b = k.size(0), h = k.size(1), kw = k.size(3);
  const at::ScalarType dtype = k.scalar_type();
  const auto longs = k.options().dtype(at::kLong);
  // A ring (windowed layer): position p's value in slot p % ring, complete key group G in group
  // slot G % (ring / g). Without a ring the slot is the position (the group).
  // Entries [from, to) of a buffer indexed by position (or group) along dim 2, in order: a view
  // without a ring, the ring's slots (index % slots) with one. Read before this append writes.
  auto take = [&](const at::Tensor& buf, int64_t from, int64_t to, int64_t slots) {
    if (ring == 0) return buf.narrow(2, from, to - from);
    return buf.index_select(2, at::arange(from, to, longs).remainder(slots));
  };
  // Entries [from, from + n) of src (along dim 2) into buf at those positions' slots: behind a
  // ring only the last `slots` of them (the earlier ones would be overwritten).
  auto put = [&](at::Tensor& buf, const at::Tensor& src, int64_t from, int64_t n, int64_t slots) {
    if (ring == 0) return void(buf.narrow(2, from, n).copy_(src));
    const int64_t kept = std::min(n, slots);
    buf.index_copy_(2, at::arange(from + n - kept, from + n, longs).remainder(slots), src.narrow(2, n - kept, kept));
  };
  const int64_t complete = done / g;
  const int64_t first_group = ring > 0 ? std::max<int64_t>(0, complete - (ring_groups - 1)) : 0;
  const int64_t first = first_group * g;

  // Keys: the held complete groups, then the groups this append completes, then done .. end - 1.
  std::vector<at::Tensor> keys;
  if (complete > first_group) {
    at::Tensor codes = take(keys_[layer].view({b, h, keys_[layer].size(2) / g, g, kw}), first_group, complete, ring_groups);
    at::Tensor scale = take(key_scale_[layer], first_group, complete, ring_groups);
    at::Tensor min = take(key_min_[layer], first_group, complete, ring_groups);
    keys.push_back(dequantize(codes, scale.unsqueeze(3), min.unsqueeze(3), dtype).view({b, h, (complete - first_group) * g, kw}));
  }
  at::Tensor fresh = done < length_ ? at::cat({key_tail_[layer].narrow(2, 0, length_ - done), k}, 2) : k;
  if (const int64_t groups = (last - done) / g; groups > 0) {
    Quantized q = quantize(fresh.narrow(2, 0, groups * g).reshape({b, h, groups, g, kw}), 3);
    put(keys_[layer], q.codes.view({b, h, groups * g, kw}), done, groups * g, ring);
    put(key_scale_[layer], q.scale.squeeze(3), complete, groups, ring_groups);
    put(key_min_[layer], q.min.squeeze(3), complete, groups, ring_groups);
    keys.push_back(dequantize(q.codes, q.scale, q.min, dtype).view({b, h, groups * g, kw}));
  }
  key_tail_[layer].narrow(2, 0, end - last).copy_(fresh.narrow(2, last - done, end - last));
  keys.push_back(fresh);

  // Values: quantized per position as they arrive.
  at::Tensor held = dequantize(take(values_[layer], first, length_, ring), take(value_scale_[layer], first, length_, ring),
                               take(value_min_[layer], first, length_, ring), dtype);
  Quantized qv = quantize(v, 3);
  put(values_[layer], qv.codes, length_, t, ring);
  put(value_scale_[layer], qv.scale, length_, t, ring);
  put(value_min_[layer], qv.min, length_, t, ring);
  at::Tensor values = at::cat({held, dequantize(qv.codes, qv.scale, qv.min, dtype)}, 2);  // first .. end - 1
  if (last == done) return {at::cat(keys, 2), values};

  values = at::cat({values.narrow(2, 0, last - first), values.narrow(2, done - first, end - done)}, 2);
  at::Tensor qpos = at::arange(length_, end, longs).unsqueeze(1);
  at::Tensor own = at::div(qpos, g, "floor") * g;  // the start of each query's group
  at::Tensor quantized = at::arange(first, last, longs).unsqueeze(0), exact = at::arange(done, end, longs).unsqueeze(0);
  append_mask_ = at::cat({quantized < own, exact >= own & exact <= qpos}, 1);
  append_key_positions_ = at::cat({quantized, exact}, 1).squeeze(0);
  return {at::cat(keys, 2), values};
}

std::pair<at::Tensor, at::Tensor> KVCache::append_ring(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  const int64_t ring = ring_[static_cast<size_t>(layer)], t = k.size(2), past = length_;
  at::Tensor& keys = keys_[layer];
  at::Tensor& values = values_[layer];
  if (t == 1) {  // decoding: the new position in its slot, then every held slot
    keys.narrow(2, past % ring, 1).copy_(k);
    values.narrow(2, past % ring, 1).copy_(v);
    const int64_t n = std::min(past + 1, ring);
    return {keys.narrow(2, 0, n), values.narrow(2, 0, n)};
  }
  // A chunk: the held positions its first query still sees (the last ring - 1, in position
  // order), then the chunk; the ring keeps the last `ring` positions of both.
  auto longs = at::TensorOptions().device(k.device()).dtype(at::kLong);
  const int64_t held = std::min(past, ring - 1), kept = std::min(t, ring);
  at::Tensor held_slots = at::arange(past - held, past, longs).remainder(ring);
  at::Tensor k_out = at::cat({keys.index_select(2, held_slots), k.to(keys.scalar_type())}, 2);
  at::Tensor v_out = at::cat({values.index_select(2, held_slots), v.to(values.scalar_type())}, 2);
  at::Tensor slots = at::arange(past + t - kept, past + t, longs).remainder(ring);
  keys.index_copy_(2, slots, k.narrow(2, t - kept, kept).to(keys.scalar_type()));
  values.index_copy_(2, slots, v.narrow(2, t - kept, kept).to(values.scalar_type()));
  return {k_out, v_out};
}

void KVCache::allocate_for_decoder(int64_t layer) {
  CONDENSE_CHECK(layer >= 0 && layer < static_cast<int64_t>(keys_.size()), "KV cache: layer {} of {}",
                 layer, keys_.size());
  if (keys_[layer].defined()) return;
  CONDENSE_CHECK(length_ == 0, "KV cache: layer {} used for the first time at position {}", layer, length_);
  allocate(layer, kv_heads_, head_dim_, head_dim_);
}

std::pair<at::Tensor, at::Tensor> KVCache::fp_buffers(int64_t layer) {
  CONDENSE_CHECK(kind_.type == KVCacheType::kFp, "KV cache: fp buffers of an int8 cache");
  allocate_for_decoder(layer);
  return {keys_[layer], values_[layer]};
}

KVCache::Int8Buffers KVCache::int8_buffers(int64_t layer) {
  CONDENSE_CHECK(kind_.type == KVCacheType::kInt8, "KV cache: int8 buffers of an fp cache");
  allocate_for_decoder(layer);
  return {keys_[layer], key_scale_[layer], key_min_[layer], key_tail_[layer], values_[layer],
          value_scale_[layer], value_min_[layer], key_scale_[layer].size(2), values_[layer].size(2)};
}

KVCache::Recent KVCache::append_recent(int64_t layer, const at::Tensor& k, const at::Tensor& v,
                                       int64_t keep) {
  CONDENSE_CHECK(keep >= 0, "KV cache: recent window keep {} < 0", keep);
  Recent r;
  const at::Tensor& held_k = recent_k_[layer];
  const int64_t held = held_k.defined() ? held_k.size(2) : 0;
  CONDENSE_CHECK(held == std::min(keep, length_), "KV cache: layer {} holds {} recent positions "
                 "at length {} with keep {}", layer, held, length_, keep);
  r.k = held > 0 ? at::cat({held_k, k}, 2) : k;
  r.v = held > 0 ? at::cat({recent_v_[layer], v}, 2) : v;
  r.begin = length_ - held;
  const int64_t n = r.k.size(2), kept = std::min(keep, n);
  recent_k_[layer] = r.k.narrow(2, n - kept, kept).clone();
  recent_v_[layer] = r.v.narrow(2, n - kept, kept).clone();
  return r;
}

double KVCache::window_bytes() const {
  double total = 0;
  for (size_t l = 0; l < recent_k_.size(); ++l) {
    for (const at::Tensor* t : {&recent_k_[l], &recent_v_[l]})
      if (t->defined()) total += static_cast<double>(t->nbytes()) / static_cast<double>(batch_);
    if (ring_[l] > 0)  // the whole ring (int8: codes, scales, minima and the residual group)
      for (const at::Tensor* t : {&keys_[l], &values_[l], &key_scale_[l], &key_min_[l], &key_tail_[l],
                                  &value_scale_[l], &value_min_[l]})
        if (t->defined()) total += static_cast<double>(t->nbytes()) / static_cast<double>(batch_);
  }
  return total;
}

void KVCache::commit(int64_t t) {
  length_ += t;
  if (kind_.type != KVCacheType::kInt8 || length_ % kind_.group != 0) return;
  // The residual group is complete: quantize its keys per channel (over its positions).
  const int64_t g = kind_.group, group_index = length_ / g - 1;
  for (size_t l = 0; l < keys_.size(); ++l) {
    if (!key_tail_[l].defined()) continue;
    // Its group slot: the group's index, or in a ring that index modulo the ring's groups.
    const int64_t slot = ring_[l] > 0 ? group_index % (ring_[l] / g) : group_index;
    Quantized q = quantize(key_tail_[l], 2);
    keys_[l].narrow(2, slot * g, g).copy_(q.codes);
    key_scale_[l].narrow(2, slot, 1).copy_(q.scale);
    key_min_[l].narrow(2, slot, 1).copy_(q.min);
  }
}

double KVCache::layer_bytes_per_position(size_t l) const {
  const double h = static_cast<double>(keys_[l].defined() ? keys_[l].size(1) : kv_heads_);
  const double kw = static_cast<double>(keys_[l].defined() ? keys_[l].size(3) : head_dim_);
  const double vw = static_cast<double>(values_[l].defined() ? values_[l].size(3) : head_dim_);
  if (kind_.type == KVCacheType::kFp) return h * (kw + vw) * static_cast<double>(element_bytes_);
  // keys: a byte per value + scale and minimum (2 floats) per channel per group; values: a
  // byte per value + scale and minimum per token and head.
  return h * (kw + 8 * kw / static_cast<double>(kind_.group) + vw + 8);
}

double KVCache::bytes_per_token() const {
  double total = 0;
  for (size_t l = 0; l < keys_.size(); ++l) total += layer_bytes_per_position(l);
  return total;
}

double KVCache::held_bytes() const {
  double total = 0;
  for (size_t l = 0; l < keys_.size(); ++l) {
    const int64_t held = ring_[l] > 0 ? std::min(length_, ring_[l]) : length_;
    total += layer_bytes_per_position(l) * static_cast<double>(held);
    for (const at::Tensor* t : {&recent_k_[l], &recent_v_[l]})
      if (t->defined()) total += static_cast<double>(t->nbytes()) / static_cast<double>(batch_);
  }
  return total;
}

}  // namespace condense
