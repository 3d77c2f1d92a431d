// libFuzzer target for the GGUF reader (io/gguf_reader.cpp): any input must either parse, with
// every tensor's data inside the image and decodable, or raise condense::Error; crashes,
// sanitizer reports and other exception types are bugs. Built by tests/fuzz/run_fuzz.sh.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    condense::GgufReader r(data, size, "fuzz.gguf");
    for (const auto& [key, v] : r.metadata()) {
      if (v.type == condense::GgufValueType::kU32) (void)r.get_uint(key);
    }
    if (r.has("general.alignment")) (void)r.get_uint("general.alignment");
    for (const auto& t : r.tensors()) {
      if (t.offset + t.nbytes > size) std::abort();
      if (t.numel() <= (1 << 20)) {
        std::vector<float> v = r.dequantize(t);
        if (static_cast<int64_t>(v.size()) != t.numel()) std::abort();
      }
    }
  } catch (const condense::Error&) {
  }
  return 0;
}
