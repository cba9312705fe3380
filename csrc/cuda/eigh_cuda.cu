// CUDA kernel of eigh_jacobi: one thread block per matrix, the matrix and its eigenvectors in
// shared memory, parallel-ordered cyclic Jacobi (include/jacobi.h). Each step computes its
// n / 2 rotations (one thread each), then the block's threads apply them to the 2 x 2 blocks of
// the upper triangle of A (with their transposes) and to the rows of V, all independent.
//
// cuSOLVER's batched Jacobi (which torch.linalg.eigh uses on CUDA) takes matrices up to
// 32 x 32; larger batches are solved one matrix at a time. Here D is limited by shared memory
// alone: 2 D (D | 1) elements plus a little per matrix (D = 150 in float32: 181 KB, within the
// 227 KB a block may opt in to on Hopper).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <limits>
#include <tuple>

#include "../include/eigh_args.h"
#include "../include/jacobi.h"

namespace {

namespace jac = stnls::jacobi;

// The sum (or max) of v over the block, returned to every thread. red holds one value per warp;
// the leading barrier lets the previous reduction's readers finish first.
template <typename T, bool kMax>
__device__ T block_reduce(T v, T* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? (w > v ? w : v) : v + w;
  }
  const int nw = blockDim.x >> 5;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = red[0];
  for (int w = 1; w < nw; ++w) r = kMax ? (red[w] > r ? red[w] : r) : r + red[w];
  return r;
}

// Shared-memory layout of one matrix (the host computes its size with the same function).
template <typename T>
struct Layout {
  int D, ld, n, m;
  __host__ __device__ explicit Layout(int D_) : D(D_), ld(D_ | 1), n(D_ + (D_ & 1)), m((D_ + (D_ & 1)) / 2) {}
  // A (D x ld), V (D x ld), the step's rotations (4 m), the reduction (32), then n ints (the
  // step's pairs, and the sort's permutation at the end). ld is odd, so that a warp reading
  // one column in different rows hits different banks.
  __host__ __device__ size_t floats() const { return 2 * static_cast<size_t>(D) * ld + 4 * m + 32; }
  __host__ __device__ size_t bytes() const { return floats() * sizeof(T) + n * sizeof(int); }
};

template <typename T>
__global__ void __launch_bounds__(1024) eigh_jacobi_kernel(const T* __restrict__ cov, int D,
                                                          int max_sweeps, T tol, T eps,
                                                          T* __restrict__ vals,
                                                          T* __restrict__ vecs) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Layout<T> L(D);
  const int ld = L.ld, n = L.n, m = L.m;
  T* A = reinterpret_cast<T*>(smem);
  T* V = A + D * ld;
  T* rot = V + D * ld;
  T* red = rot + 4 * m;
  int* pq = reinterpret_cast<int*>(red + 32);
  const jac::Step<T> st{pq, pq + m, rot, rot + m, rot + 2 * m, rot + 3 * m};
  __shared__ int last_rotated;  // the last sweep that rotated a pair

  const int tid = threadIdx.x, nt = blockDim.x, DD = D * D;
  const int64_t mat = blockIdx.x;
  const T* in = cov + mat * DD;

  // the lower triangle, mirrored (coalesced reads), and V = I
  for (int e = tid; e < DD; e += nt) {
    const int i = e / D, j = e - i * D;
    if (j <= i) {
      const T v = in[e];
      A[i * ld + j] = v;
      A[j * ld + i] = v;
    }
    V[i * ld + j] = i == j ? T(1) : T(0);
  }
  if (tid == 0) last_rotated = -1;
  __syncthreads();
  // scale by a power of two near the largest magnitude, so that squares neither overflow nor
  // underflow
  T mx = 0;
  for (int e = tid; e < DD; e += nt) {
    const int i = e / D, j = e - i * D;
    mx = fmax(mx, fabs(A[i * ld + j]));
  }
  const T scale = jac::pow2_scale(block_reduce<T, true>(mx, red));
  const T inv = T(1) / scale;
  T sq = 0;
  for (int e = tid; e < DD; e += nt) {
    const int i = e / D, j = e - i * D;
    const T v = A[i * ld + j] * inv;
    A[i * ld + j] = v;
    sq += v * v;
  }
  const T tot = block_reduce<T, false>(sq, red);

  const int nA = m * (m + 1) / 2, nV = D * m, nOff = D * (D - 1) / 2;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    const bool rotated = sweep == 0 || last_rotated == sweep - 1;  // read before the barriers
    T off = 0;
    for (int idx = tid; idx < nOff; idx += nt) {
      int i, j;
      jac::triangle_index(idx, i, j);  // i <= j < D - 1
      const T v = A[i * ld + j + 1];
      off += v * v;
    }
    off = 2 * block_reduce<T, false>(off, red);
    if (!rotated || off <= tol * tol * tot) break;  // the same decision in every thread
    for (int r = 0; r < n - 1; ++r) {
      if (tid < m) {  // the host gives at least m threads
        jac::prepare_pair(A, ld, D, n, r, tid, eps, st);
        if (st.s[tid] != T(0)) last_rotated = sweep;
      }
      __syncthreads();
      for (int idx = tid; idx < nA + nV; idx += nt) {
        if (idx < nA) {
          int a, b;
          jac::triangle_index(idx, a, b);
          jac::update_block(A, ld, D, st, a, b);
        } else {
          const int v = idx - nA, b = v / D;
          jac::update_vectors(V, ld, st, v - b * D, b);
        }
      }
      __syncthreads();
    }
  }
  // ascending order, ties by index
  for (int j = tid; j < D; j += nt) {
    const int rk = jac::rank_of(A, ld, D, j);
    pq[rk] = j;
    vals[mat * D + rk] = A[j * ld + j] * scale;
  }
  __syncthreads();
  T* out = vecs + mat * DD;
  for (int e = tid; e < DD; e += nt) {
    const int i = e / D, j = e - i * D;
    out[e] = V[i * ld + pq[j]];
  }
}

int default_threads(int D) {
  if (D <= 16) return 64;
  if (D <= 32) return 128;
  if (D <= 64) return 256;
  if (D <= 100) return 512;
  return 1024;
}

std::tuple<at::Tensor, at::Tensor> eigh_jacobi_cuda(const at::Tensor& cov_, int64_t max_sweeps,
                                                    double tol, int64_t threads) {
  TORCH_CHECK(cov_.is_cuda(), "cov: expected a CUDA tensor");
  stnls::check_eigh_args(cov_, max_sweeps, tol, threads);
  const c10::cuda::CUDAGuard guard(cov_.device());
  const at::Tensor cov = cov_.contiguous();
  const int64_t N = cov.size(0), D = cov.size(1);
  auto vals = at::empty({N, D}, cov.options());
  auto vecs = at::empty({N, D, D}, cov.options());
  if (N == 0 || D == 0) return {vals, vecs};
  TORCH_CHECK(N <= INT_MAX, "cov: at most ", INT_MAX, " matrices per call, got ", N);
  TORCH_CHECK(D <= 4096, "cov: D <= 4096, got ", D);
  // at least one thread per pair (m = ceil(D / 2)), in whole warps (a loop over the pairs
  // would take the kernel from 32 to 53 registers)
  const int pairs = static_cast<int>((D + 1) / 2);
  int nt = threads > 0 ? static_cast<int>(threads) : default_threads(static_cast<int>(D));
  nt = std::max(nt, (pairs + 31) / 32 * 32);
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        c10::cuda::current_device()));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "eigh_jacobi_cuda", [&] {
    using T = scalar_t;
    const size_t shmem = Layout<T>(static_cast<int>(D)).bytes();
    TORCH_CHECK(shmem <= static_cast<size_t>(optin), "cov: ", D, " x ", D, " ",
                cov.scalar_type(), " matrices need ", shmem,
                " bytes of shared memory per block, this GPU allows ", optin);
    auto kernel = eigh_jacobi_kernel<T>;
    if (shmem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shmem)));
    kernel<<<static_cast<unsigned>(N), nt, shmem, stream>>>(
        cov.data_ptr<T>(), static_cast<int>(D), static_cast<int>(max_sweeps), static_cast<T>(tol),
        std::numeric_limits<T>::epsilon(), vals.data_ptr<T>(), vecs.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {vals, vecs};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) { m.impl("eigh_jacobi", &eigh_jacobi_cuda); }
