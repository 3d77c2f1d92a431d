// libFuzzer target for the safetensors header parser (io/safetensors_header.cpp): any input must
// either parse into entries that lie inside the image, packed, or raise condense::Error; crashes,
// sanitizer reports and other exception types are bugs. Built by tests/fuzz/run_fuzz.sh.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    condense::SafetensorsHeader h = condense::parse_safetensors_header(data, size, "fuzz.safetensors");
    uint64_t pos = 0, sum = 0;
    for (const auto& e : h.entries) {
      if (e.begin != pos || e.end < e.begin || h.data_start + e.end > size) std::abort();
      // Touch the first and last byte of every tensor: must be in bounds.
      if (e.end > e.begin) sum += data[h.data_start + e.begin] + data[h.data_start + e.end - 1];
      pos = e.end;
    }
    if (h.data_start + pos != size) std::abort();
    (void)sum;
  } catch (const condense::Error&) {
  }
  return 0;
}
