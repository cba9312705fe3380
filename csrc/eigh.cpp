// Operator schema of eigh_jacobi, the batched eigen-decomposition of small symmetric matrices
// by parallel-ordered cyclic Jacobi (the algorithm: include/jacobi.h; kernels in
// cpu/eigh_cpu.cpp, cuda/eigh_cuda.cu; fake kernel in napari_stnls/ops/_registrations.py).
//
// cov is (N, D, D) float32 or float64; only its lower triangle is read (like
// torch.linalg.eigh). Returns (values (N, D), vectors (N, D, D)) in cov's dtype, the values in
// ascending order and vectors[n, :, j] the unit eigenvector of values[n, j]. Sweeps stop once
// the off-diagonal Frobenius norm is at most tol times the matrix's, or after max_sweeps.
// threads: CUDA threads per matrix (0: chosen from D; raised to at least D / 2); the CPU kernel
// ignores it.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(napari_stnls, m) {
  m.def("eigh_jacobi(Tensor cov, int max_sweeps, float tol, int threads) -> (Tensor, Tensor)");
}
