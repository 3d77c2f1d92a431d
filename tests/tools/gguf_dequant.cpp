// Test helper for tests/python/test_gguf_dequant.py: runs condense's GGUF dequantization
// (io/gguf_quants.h) so that Python can compare it bit for bit with the gguf package.
// Usage:
//   gguf_dequant raw TYPE IN.bin NUMEL OUT.f32
//       decodes NUMEL values of ggml TYPE (a name such as Q4_K, or its number) from the raw
//       bytes of IN.bin and writes them as little-endian float32 to OUT.f32.
//   gguf_dequant file MODEL.gguf OUT.f32
//       reads MODEL.gguf with GgufReader, dequantizes every tensor in file order and writes the
//       values concatenated to OUT.f32; prints one JSON line per tensor to stdout:
//       {"name", "type", "shape" (PyTorch order), "offset" (in floats), "numel"}.
// Errors (condense::Error) go to stderr with exit status 1; bad usage exits 2.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf_quants.h"
#include "io/gguf_reader.h"

namespace {

using condense::GgmlType;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CONDENSE_CHECK(in.good(), "{}: cannot open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_floats(std::ofstream& out, const at::Tensor& t) {
  out.write(reinterpret_cast<const char*>(t.data_ptr<float>()),
            static_cast<std::streamsize>(t.numel() * sizeof(float)));
}

uint32_t parse_type(const std::string& s) {
  // Any ggml name, supported or not, so that the library's own error for the latter is tested.
  for (uint32_t id = 0; id < 64; ++id) {
    const char* name = condense::ggml_type_name(id);
    if (name && s == name) return id;
  }
  try {
    size_t used = 0;
    unsigned long v = std::stoul(s, &used);
    if (used == s.size()) return static_cast<uint32_t>(v);
  } catch (const std::exception&) {
  }
  condense::fail("unknown ggml type '{}' (a name such as Q4_K or a number)", s);
}

int run_raw(const std::string& type, const std::string& in, const std::string& numel,
            const std::string& out_path) {
  std::string bytes = read_all(in);
  at::Tensor t = condense::dequantize(static_cast<GgmlType>(parse_type(type)),
                                      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                      std::stoll(numel), in);
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  CONDENSE_CHECK(out.good(), "{}: cannot write", out_path);
  write_floats(out, t);
  out.close();
  CONDENSE_CHECK(out.good(), "{}: write failed", out_path);
  return 0;
}

int run_file(const std::string& path, const std::string& out_path) {
  const std::string image = read_all(path);
  condense::GgufReader r(reinterpret_cast<const uint8_t*>(image.data()), image.size(), path);
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  CONDENSE_CHECK(out.good(), "{}: cannot write", out_path);
  int64_t offset = 0;
  for (const auto& info : r.tensors()) {
    at::Tensor t = condense::dequantize(r, info);
    write_floats(out, t);
    const char* name = condense::ggml_type_name(info.type);
    nlohmann::json line = {{"name", info.name}, {"type", name ? name : "?"},
                           {"shape", info.torch_shape()}, {"offset", offset},
                           {"numel", info.numel()}};
    std::cout << line.dump() << "\n";
    offset += info.numel();
  }
  out.close();
  CONDENSE_CHECK(out.good(), "{}: write failed", out_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "raw" && argc == 6) return run_raw(argv[2], argv[3], argv[4], argv[5]);
    if (mode == "file" && argc == 4) return run_file(argv[2], argv[3]);
    std::fprintf(stderr, "usage: %s raw TYPE IN.bin NUMEL OUT.f32 | file MODEL.gguf OUT.f32\n",
                 argv[0]);
    return 2;
  } catch (const condense::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
