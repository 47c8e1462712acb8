#pragma once
// WINNOW_HD marks the per-element math that the CPU loops and the CUDA kernels share.
#if defined(__CUDACC__)
#define WINNOW_HD __host__ __device__ __forceinline__
#else
#define WINNOW_HD inline
#endif
