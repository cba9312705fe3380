// STNLS_HD: the qualifier of the functions host (CPU) and device (CUDA) code share.
#pragma once

#ifdef __CUDACC__
#define STNLS_HD __host__ __device__ __forceinline__
#else
#define STNLS_HD inline
#endif
