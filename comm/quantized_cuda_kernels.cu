// CUDA kernels of the quantizing codecs; contract in comm/quantized_cuda_kernels.h, arithmetic
// in comm/quantized_element.h. One thread block per codec block (512 elements by default): the
// block's elements are read from memory once for its scale and again, from cache, for its codes,
// so the vector crosses HBM once.
#include <cuda_runtime.h>

#include "comm/quantized_cuda_kernels.h"
#include "comm/quantized_element.h"

namespace condense::quantized {
namespace {

__global__ void __launch_bounds__(kCudaThreads)
    encode_kernel(const float* v, int64_t numel, int64_t block, int64_t levels, int bits, uint64_t seed,
                  uint8_t* payload, int64_t blocks) {
  const int64_t b = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x);
  const int64_t lo = b * block, hi = min(numel, lo + block);
  __shared__ double partial[kCudaThreads];
  partial[t] = partial_sum(v, lo, hi, t, levels);
  __syncthreads();
  for (int w = kCudaThreads / 2; w > 0; w /= 2) {  // block_sum's pairwise order (quantized_element.h)
    if (t < w) partial[t] += partial[t + w];
    __syncthreads();
  }
  const float scale = block_scale(partial[0], levels, hi - lo);
  if (t == 0) reinterpret_cast<float*>(payload)[b] = scale;  // payloads start 4-byte aligned
  uint8_t* codes = payload + 4 * blocks;
  const float step = level_step(scale, levels);
  const uint32_t key = uniform_key(seed);
  for (int64_t i0 = lo + kGroup * t; i0 < hi; i0 += kGroup * kCudaThreads)
    encode_group(v, i0, min(hi, i0 + kGroup), scale, step, levels, bits, key, codes);
}

__global__ void __launch_bounds__(kCudaThreads)
    decode_add_kernel(const uint8_t* payload, int64_t numel, int64_t block, int64_t levels, int bits,
                      float* out, int64_t blocks) {
  const int64_t b = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x);
  const int64_t lo = b * block, hi = min(numel, lo + block);
  // Byte by byte: inside a gathered buffer a payload need not start 4-byte aligned.
  uint32_t raw = 0;
  for (int j = 0; j < 4; ++j) raw |= static_cast<uint32_t>(payload[4 * b + j]) << (8 * j);
  const float scale = __uint_as_float(raw);
  __shared__ float table[256];  // bits <= 8
  for (int c = t; c < (1 << bits); c += kCudaThreads) table[c] = decoded_value(static_cast<uint32_t>(c), scale, levels);
  __syncthreads();
  const uint8_t* codes = payload + 4 * blocks;
  for (int64_t i0 = lo + kGroup * t; i0 < hi; i0 += kGroup * kCudaThreads)
    decode_add_group(codes, i0, min(hi, i0 + kGroup), table, bits, out);
}

}  // namespace

int cuda_encode(const float* v, int64_t numel, int64_t block, int64_t levels, int bits, uint64_t seed,
                uint8_t* payload, void* stream) {
  const int64_t blocks = (numel + block - 1) / block;
  if (blocks == 0) return cudaSuccess;
  encode_kernel<<<static_cast<unsigned>(blocks), kCudaThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      v, numel, block, levels, bits, seed, payload, blocks);
  return cudaGetLastError();
}

int cuda_decode_add(const uint8_t* payload, int64_t numel, int64_t block, int64_t levels, int bits,
                    float* out, void* stream) {
  const int64_t blocks = (numel + block - 1) / block;
  if (blocks == 0) return cudaSuccess;
  decode_add_kernel<<<static_cast<unsigned>(blocks), kCudaThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      payload, numel, block, levels, bits, out, blocks);
  return cudaGetLastError();
}

}  // namespace condense::quantized
