// The lattices of ggml's IQ1-IQ3 quantization types (ggml-common.h: iq2xxs_grid, iq2xs_grid,
// iq2s_grid, iq3xxs_grid, iq3s_grid, iq1s_grid): a block stores indices into these tables, not
// values. They are format data with no rule behind them, so io/gguf_iq{1,2,3}_grids.cpp are generated
// from the gguf package by tools/gen_gguf_iq_grids.py. Grid point i is one little-endian integer
// whose byte j is value j of the point: 8 values per point (uint64), 4 for the IQ3 grids
// (uint32). IQ2's bytes are the magnitudes 0x08, 0x19, 0x2b; IQ3_XXS's 0x04..0x3e and IQ3_S's odd
// 1..15; IQ1's are int8 -1, 0, 1. Used by io/gguf_quants.h; free of LibTorch.
#pragma once
#include <cstdint>

namespace condense::ggml_ref {

extern const uint64_t kIq2xxsGrid[256];
extern const uint64_t kIq2xsGrid[512];
extern const uint64_t kIq2sGrid[1024];
extern const uint32_t kIq3xxsGrid[256];
extern const uint32_t kIq3sGrid[512];
extern const uint64_t kIq1sGrid[2048];

// Value j of a grid point (the byte ggml reads through a uint8_t / int8_t pointer).
inline uint8_t grid_byte(uint64_t point, int j) { return static_cast<uint8_t>(point >> (8 * j)); }

}  // namespace condense::ggml_ref
