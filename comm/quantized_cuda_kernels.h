// CUDA kernels for the quantizing codecs (qsgd, sign): encode and decode-add, each one pass over
// the vector, producing the same bytes and floats as the CPU loops (the arithmetic is
// comm/quantized_element.h's). They replace the tensor-op path on CUDA, dozens of elementwise
// passes for qsgd's encode (0.0087 of the copy rate on an H200, bench/RESULTS.md 2026-12-04).
//
// Built only where nvcc is (CMake's CONDENSE_WITH_CUDA_KERNELS, which defines the macro of the
// same name); this header is plain C++ so that the codec (.cpp) can call them without nvcc.
//
// Contract: v / out / payload are device pointers of the current CUDA device; payload holds
// QuantizedFormat's layout (4 * blocks bytes of scales, then the codes); blocks =
// ceil(numel / block) < 2^31 and groups_fit(block, bits). The kernels run on `stream` (a
// cudaStream_t) and the call returns a cudaError_t value (0 = launched).
#pragma once
#include <cstdint>

namespace condense::quantized {

int cuda_encode(const float* v, int64_t numel, int64_t block, int64_t levels, int bits, uint64_t seed,
                uint8_t* payload, void* stream);
int cuda_decode_add(const uint8_t* payload, int64_t numel, int64_t block, int64_t levels, int bits,
                    float* out, void* stream);
}  // namespace condense::quantized
