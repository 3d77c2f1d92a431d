#include "io/gguf_reader.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "io/gguf_quants.h"

namespace condense {
namespace {

// Bounds-checked little-endian cursor over the file image.
class Cursor {
 public:
  Cursor(const uint8_t* d, size_t n, const std::string& src) : d_(d), n_(n), src_(src) {}
  void need(uint64_t k, const char* what) const {
    CONDENSE_CHECK(k <= n_ - pos_, "{}: truncated GGUF file: {} needs {} bytes at offset {} but "
                   "the file has {}", src_, what, k, pos_, n_);
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
      v |= static_cast<T>(static_cast<uint64_t>(d_[pos_ + i]) << (8 * i));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    uint64_t len = read<uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(d_ + pos_), len);
    pos_ += len;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& src_;
};

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool: return 1;
    case GgufValueType::kU16: case GgufValueType::kI16: return 2;
    case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32: return 4;
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64: return 8;
    default: return 0;
  }
}

nlohmann::json read_scalar(Cursor& c, GgufValueType t, const std::string& key, const std::string& src) {
  switch (t) {
    case GgufValueType::kU8: return c.read<uint8_t>(key.c_str());
    case GgufValueType::kI8: return static_cast<int8_t>(c.read<uint8_t>(key.c_str()));
    case GgufValueType::kU16: return c.read<uint16_t>(key.c_str());
    case GgufValueType::kI16: return static_cast<int16_t>(c.read<uint16_t>(key.c_str()));
    case GgufValueType::kU32: return c.read<uint32_t>(key.c_str());
    case GgufValueType::kI32: return static_cast<int32_t>(c.read<uint32_t>(key.c_str()));
    case GgufValueType::kU64: return c.read<uint64_t>(key.c_str());
    case GgufValueType::kI64: return static_cast<int64_t>(c.read<uint64_t>(key.c_str()));
    case GgufValueType::kBool: {
      uint8_t b = c.read<uint8_t>(key.c_str());
      CONDENSE_CHECK(b <= 1, "{}: metadata '{}': bool byte {} is neither 0 nor 1", src, key, b);
      return b == 1;
    }
    case GgufValueType::kF32: {
      uint32_t bits = c.read<uint32_t>(key.c_str());
      float f;
      std::memcpy(&f, &bits, 4);
      return std::isfinite(f) ? nlohmann::json(f) : nlohmann::json(nullptr);
    }
    case GgufValueType::kF64: {
      uint64_t bits = c.read<uint64_t>(key.c_str());
      double f;
      std::memcpy(&f, &bits, 8);
      return std::isfinite(f) ? nlohmann::json(f) : nlohmann::json(nullptr);
    }
    case GgufValueType::kString: return c.str(key.c_str());
    default: fail("{}: metadata '{}': unknown value type {}", src, key, static_cast<uint32_t>(t));
  }
}

}  // namespace

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::torch_shape() const { return {ne.rbegin(), ne.rend()}; }

GgufReader::GgufReader(const uint8_t* data, size_t size, std::string source)
    : data_(data), size_(size), source_(std::move(source)) {
  const std::string& src = source_;
  Cursor c(data, size, src);
  CONDENSE_CHECK(c.read<uint32_t>("magic") == kGgufMagic, "{}: not a GGUF file (bad magic)", src);
  version_ = c.read<uint32_t>("version");
  CONDENSE_CHECK(version_ == 2 || version_ == 3, "{}: GGUF version {} is not supported (2 or 3)",
                 src, version_);
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each entry takes at least 8 bytes of the file: bounds the loops before any allocation.
  CONDENSE_CHECK(n_tensors <= size / 8 && n_kv <= size / 8,
                 "{}: tensor count {} / metadata count {} cannot fit in {} bytes", src, n_tensors,
                 n_kv, size);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str("metadata key");
    CONDENSE_CHECK(!kv_.count(key), "{}: duplicate metadata key '{}'", src, key);
    GgufValue v;
    v.type = static_cast<GgufValueType>(c.read<uint32_t>(key.c_str()));
    if (v.type == GgufValueType::kArray) {
      v.array_type = static_cast<GgufValueType>(c.read<uint32_t>(key.c_str()));
      uint64_t n = c.read<uint64_t>(key.c_str());
      size_t es = v.array_type == GgufValueType::kString ? 8 : scalar_size(v.array_type);
      CONDENSE_CHECK(es > 0, "{}: metadata '{}': unsupported array element type {}", src, key,
                     static_cast<uint32_t>(v.array_type));
      CONDENSE_CHECK(n <= (size - c.pos()) / es, "{}: metadata '{}': array of {} elements runs "
                     "past the end of the file", src, key, n);
      v.value = nlohmann::json::array();
      for (uint64_t k = 0; k < n; ++k) v.value.push_back(read_scalar(c, v.array_type, key, src));
    } else {
      v.value = read_scalar(c, v.type, key, src);
    }
    kv_.emplace(key, std::move(v));
  }
  if (kv_.count("general.alignment")) {
    uint64_t a = get_uint("general.alignment");
    CONDENSE_CHECK(a > 0 && a <= (1u << 20) && (a & (a - 1)) == 0,
                   "{}: general.alignment {} is not a power of two", src, a);
    alignment_ = static_cast<uint32_t>(a);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str("tensor name");
    CONDENSE_CHECK(!index_.count(t.name), "{}: duplicate tensor '{}'", src, t.name);
    uint32_t n_dims = c.read<uint32_t>(t.name.c_str());
    CONDENSE_CHECK(n_dims >= 1 && n_dims <= 4, "{}: tensor '{}': {} dimensions (1 to 4 allowed)",
                   src, t.name, n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = c.read<uint64_t>(t.name.c_str());
      CONDENSE_CHECK(ne >= 1 && ne <= (1ull << 40) && numel <= (1ull << 42) / ne,
                     "{}: tensor '{}': dimension {} = {} is out of range", src, t.name, d, ne);
      numel *= ne;
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    t.type = c.read<uint32_t>(t.name.c_str());
    // Refuses unknown and unsupported types here, naming them, so that every tensor a reader
    // lists can be dequantized.
    const GgmlTypeInfo& ti = ggml_type_or_fail(t.type, src + ": tensor '" + t.name + "'");
    CONDENSE_CHECK(t.ne[0] % ti.block == 0, "{}: tensor '{}': ne[0] = {} is not a multiple of "
                   "the {} block size {}", src, t.name, t.ne[0], ti.name, ti.block);
    t.offset = c.read<uint64_t>(t.name.c_str());
    CONDENSE_CHECK(t.offset % alignment_ == 0, "{}: tensor '{}': offset {} is not a multiple of "
                   "the alignment {}", src, t.name, t.offset, alignment_);
    t.nbytes = ggml_nbytes(t.type, numel);
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  data_start_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  CONDENSE_CHECK(data_start_ <= size || tensors_.empty(), "{}: truncated GGUF file: the data "
                 "section would start at {} but the file has {} bytes", src, data_start_, size);
  uint64_t data_size = data_start_ <= size ? size - data_start_ : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : tensors_) {
    CONDENSE_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset,
                   "{}: tensor '{}': data [{}, {}) runs past the end of the data section ({} "
                   "bytes; truncated file?)", src, t.name, t.offset, t.offset + t.nbytes, data_size);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    CONDENSE_CHECK(by_offset[i - 1]->offset + by_offset[i - 1]->nbytes <= by_offset[i]->offset,
                   "{}: tensors '{}' and '{}' overlap", src, by_offset[i - 1]->name,
                   by_offset[i]->name);
}

const GgufValue& GgufReader::get(const std::string& key) const {
  auto it = kv_.find(key);
  CONDENSE_CHECK(it != kv_.end(), "{}: missing metadata '{}'", source_, key);
  return it->second;
}

uint64_t GgufReader::get_uint(const std::string& key) const {
  const GgufValue& v = get(key);
  CONDENSE_CHECK(v.type != GgufValueType::kArray && v.value.is_number_integer() &&
                     (v.value.is_number_unsigned() || v.value.get<int64_t>() >= 0),
                 "{}: metadata '{}' is not a non-negative integer ({})", source_, key,
                 v.value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return v.value.get<uint64_t>();
}

const GgufTensorInfo& GgufReader::tensor(const std::string& name) const {
  auto it = index_.find(name);
  CONDENSE_CHECK(it != index_.end(), "{}: no tensor '{}'", source_, name);
  return tensors_[it->second];
}

std::vector<float> GgufReader::dequantize(const GgufTensorInfo& t) const {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  dequantize_into(t.type, data_of(t), t.nbytes, t.numel(), out.data(),
                  source_ + ": tensor '" + t.name + "'");
  return out;
}

}  // namespace condense
