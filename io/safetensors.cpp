#include "io/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

namespace condense {

namespace {

at::ScalarType to_scalar_type(const std::string& d) {
  if (d == "F32") return at::kFloat;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "F64") return at::kDouble;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  if (d == "I16") return at::kShort;
  if (d == "I8") return at::kChar;
  if (d == "U8") return at::kByte;
  if (d == "BOOL") return at::kBool;
  if (d == "U16") return at::kUInt16;
  if (d == "U32") return at::kUInt32;
  if (d == "U64") return at::kUInt64;
  fail("safetensors dtype '{}' has no LibTorch equivalent", d);
}

}  // namespace

std::string safetensors_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: fail("dtype {} cannot be stored in safetensors here", c10::toString(t));
  }
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path);
  f.header_ = parse_safetensors_header(f.map_->data(), f.map_->size(), path);
  for (size_t i = 0; i < f.header_.entries.size(); ++i) f.index_[f.header_.entries[i].name] = i;
  return f;
}

bool SafetensorsFile::has(const std::string& name) const { return index_.count(name) > 0; }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  CONDENSE_CHECK(it != index_.end(), "{}: no tensor '{}'", path_, name);
  return header_.entries[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(to_scalar_type(e.dtype)));
  if (e.end > e.begin) std::memcpy(t.data_ptr(), map_->data() + header_.data_start + e.begin, e.end - e.begin);
  return t;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    CONDENSE_CHECK(names.insert(name).second, "{}: duplicate tensor name '{}'", path, name);
    CONDENSE_CHECK(!t.defined() || t.device().is_cpu(), "{}: tensor '{}' is not on the CPU", path, name);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    size_t ea = tensors[a].second.element_size(), eb = tensors[b].second.element_size();
    return ea != eb ? ea > eb : tensors[a].first < tensors[b].first;
  });
  std::vector<SafetensorsEntry> entries;
  uint64_t pos = 0;
  for (size_t i : order) {
    const at::Tensor& t = tensors[i].second;
    SafetensorsEntry e;
    e.name = tensors[i].first;
    e.dtype = safetensors_dtype_name(t.scalar_type());
    e.shape.assign(t.sizes().begin(), t.sizes().end());
    e.begin = pos;
    e.end = pos + static_cast<uint64_t>(t.numel()) * t.element_size();
    pos = e.end;
    entries.push_back(std::move(e));
  }
  std::string header = make_safetensors_header(entries, metadata);
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CONDENSE_CHECK(out.good(), "cannot write {}", tmp);
    uint8_t len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (size_t i : order) {
      at::Tensor t = tensors[i].second.contiguous();
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    }
    out.close();
    CONDENSE_CHECK(out.good(), "error writing {}", tmp);
  });
}

}  // namespace condense
