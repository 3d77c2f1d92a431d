// CONDENSE_HD marks small inline functions that CUDA kernels (.cu files, compiled by nvcc) and
// the C++ code share, so both compute the same thing from one definition. Outside nvcc it is
// empty.
#pragma once

#ifdef __CUDACC__
#define CONDENSE_HD __host__ __device__
#else
#define CONDENSE_HD
#endif
