#include "io/gguf_writer.h"

#include <ATen/ATen.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace condense {
namespace {

template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) b.push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
}
void put_f32(std::vector<uint8_t>& b, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  put<uint32_t>(b, bits);
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}
uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

void GgufWriter::key(const std::string& k, GgufValueType t) {
  put_str(kv_, k);
  put<uint32_t>(kv_, static_cast<uint32_t>(t));
  ++n_kv_;
}

void GgufWriter::add_u32(const std::string& k, uint32_t v) { key(k, GgufValueType::kU32); put<uint32_t>(kv_, v); }
void GgufWriter::add_i32(const std::string& k, int32_t v) { key(k, GgufValueType::kI32); put<uint32_t>(kv_, static_cast<uint32_t>(v)); }
void GgufWriter::add_f32(const std::string& k, float v) { key(k, GgufValueType::kF32); put_f32(kv_, v); }
void GgufWriter::add_bool(const std::string& k, bool v) { key(k, GgufValueType::kBool); put<uint8_t>(kv_, v ? 1 : 0); }
void GgufWriter::add_string(const std::string& k, const std::string& v) { key(k, GgufValueType::kString); put_str(kv_, v); }

void GgufWriter::add_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufValueType::kArray);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::kString));
  put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_str(kv_, s);
}
void GgufWriter::add_f32_array(const std::string& k, const std::vector<float>& v) {
  key(k, GgufValueType::kArray);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::kF32));
  put<uint64_t>(kv_, v.size());
  for (float f : v) put_f32(kv_, f);
}
void GgufWriter::add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, GgufValueType::kArray);
  put<uint32_t>(kv_, static_cast<uint32_t>(GgufValueType::kI32));
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put<uint32_t>(kv_, static_cast<uint32_t>(x));
}

void GgufWriter::add_tensor(const std::string& name, const at::Tensor& t, GgmlType type) {
  CONDENSE_CHECK(t.defined() && t.device().is_cpu() && at::isFloatingType(t.scalar_type()),
                 "GGUF tensor '{}' must be a floating CPU tensor", name);
  CONDENSE_CHECK(t.dim() >= 1 && t.dim() <= 4, "GGUF tensor '{}' has {} dimensions (1 to 4)", name,
                 t.dim());
  for (const auto& p : tensors_) CONDENSE_CHECK(p.name != name, "duplicate GGUF tensor '{}'", name);
  // The reader's other types (Q4_0 ... Q6_K) are read-only: condense has no quantizer for them.
  CONDENSE_CHECK(type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16 ||
                     type == GgmlType::kQ8_0,
                 "GGUF tensor '{}': condense writes F32, F16, BF16 or Q8_0, not ggml type {}", name,
                 static_cast<uint32_t>(type));
  if (type == GgmlType::kQ8_0)
    CONDENSE_CHECK(t.size(-1) % kQ8_0Block == 0, "GGUF tensor '{}': Q8_0 needs the row length "
                   "({}) to be a multiple of {}", name, t.size(-1), kQ8_0Block);
  tensors_.push_back({name, t, type, ggml_nbytes(static_cast<uint32_t>(type), t.numel())});
}

uint64_t GgufWriter::tensor_data_bytes() const {
  uint64_t n = 0;
  for (const auto& p : tensors_) n = align_up(n, alignment_) + p.nbytes;
  return align_up(n, alignment_);
}

void GgufWriter::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, kGgufMagic);
  put<uint32_t>(head, kGgufVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head.insert(head.end(), kv_.begin(), kv_.end());
  uint64_t offset = 0;
  for (const auto& p : tensors_) {
    put_str(head, p.name);
    put<uint32_t>(head, static_cast<uint32_t>(p.tensor.dim()));
    for (int64_t d = p.tensor.dim() - 1; d >= 0; --d) put<uint64_t>(head, p.tensor.size(d));
    put<uint32_t>(head, static_cast<uint32_t>(p.type));
    offset = align_up(offset, alignment_);
    put<uint64_t>(head, offset);
    offset += p.nbytes;
  }
  head.resize(align_up(head.size(), alignment_), 0);
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CONDENSE_CHECK(out.good(), "cannot write {}", tmp);
    out.write(reinterpret_cast<const char*>(head.data()), static_cast<std::streamsize>(head.size()));
    uint64_t pos = 0;
    std::vector<uint8_t> buf;
    for (const auto& p : tensors_) {
      uint64_t pad = align_up(pos, alignment_) - pos;
      static const char zeros[64] = {};
      out.write(zeros, static_cast<std::streamsize>(pad));
      pos += pad;
      at::Tensor f = p.tensor.to(at::kFloat).contiguous();
      const float* x = f.data_ptr<float>();
      const int64_t n = f.numel();
      buf.resize(p.nbytes);
      switch (p.type) {
        case GgmlType::kF32: std::memcpy(buf.data(), x, 4 * n); break;
        case GgmlType::kF16:
          for (int64_t i = 0; i < n; ++i) { uint16_t h = f32_to_f16(x[i]); std::memcpy(&buf[2 * i], &h, 2); }
          break;
        case GgmlType::kBF16:
          for (int64_t i = 0; i < n; ++i) { uint16_t h = f32_to_bf16(x[i]); std::memcpy(&buf[2 * i], &h, 2); }
          break;
        case GgmlType::kQ8_0: quantize_q8_0(x, n, buf.data()); break;
        default: fail("GGUF tensor '{}': no encoder for its type", p.name);  // refused in add_tensor
      }
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
      pos += p.nbytes;
    }
    uint64_t pad = align_up(pos, alignment_) - pos;
    static const char zeros[64] = {};
    out.write(zeros, static_cast<std::streamsize>(pad));
    out.close();
    CONDENSE_CHECK(out.good(), "error writing {}", tmp);
  });
}

}  // namespace condense
