#pragma once
// WINNOW_HD marks the per-element math that the CPU loops and the CUDA kernels share.
// On the host it is always inlined: the CPU kernels under csrc/cpu/isa/ are compiled once per
// instruction set, and an out-of-line copy of a shared function would be one symbol with several
// bodies (AVX-512 code among them), of which the linker keeps any one for every caller.
#if defined(__CUDACC__)
#define WINNOW_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define WINNOW_HD inline __attribute__((always_inline))
#else
#define WINNOW_HD inline
#endif
