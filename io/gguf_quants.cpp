#include "io/gguf_quants.h"

#include <ATen/ATen.h>

#include "io/gguf_reader.h"

namespace condense {

at::Tensor dequantize(GgmlType type, const uint8_t* data, size_t bytes, int64_t numel,
                      const std::string& what) {
  ggml_check_bytes(static_cast<uint32_t>(type), bytes, numel, what);  // before allocating
  at::Tensor out = at::empty({numel}, at::kFloat);
  dequantize_into(static_cast<uint32_t>(type), data, bytes, numel, out.data_ptr<float>(), what);
  return out;
}

at::Tensor dequantize(const GgufReader& reader, const GgufTensorInfo& tensor) {
  // The reader's own entry (validated type, row length and bounds), never a caller's copy that
  // could point outside the image.
  const GgufTensorInfo& info = reader.tensor(tensor.name);
  const std::string what = reader.source() + ": tensor '" + info.name + "'";
  at::Tensor out = at::empty(info.torch_shape(), at::kFloat);
  dequantize_into(info.type, reader.data_of(info), info.nbytes, info.numel(), out.data_ptr<float>(),
                  what);
  return out;
}

}  // namespace condense
