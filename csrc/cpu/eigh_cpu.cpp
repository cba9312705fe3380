// CPU twin of the CUDA Jacobi eigen-solver (the same steps, include/jacobi.h), one matrix per
// task (at::parallel_for). Used by the tests as the reference of the CUDA kernel's algorithm;
// the denoisers keep LAPACK (torch.linalg.eigh) on the CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../include/eigh_args.h"
#include "../include/jacobi.h"

namespace {

namespace jac = stnls::jacobi;

template <typename T>
T off_norm2(const T* A, int D) {
  T s = 0;
  for (int i = 0; i < D; ++i)
    for (int j = i + 1; j < D; ++j) s += A[i * D + j] * A[i * D + j];
  return 2 * s;
}

// One matrix: in (D, D) (lower triangle read) -> vals (D), vecs (D, D); work holds 2 D^2 + 3 n.
template <typename T>
void solve_one(const T* in, int D, int max_sweeps, T tol, T* vals, T* vecs, T* A, T* V, int* pq,
               T* rot) {
  const int n = D + (D & 1), m = n / 2;
  const jac::Step<T> st{pq, pq + m, rot, rot + m, rot + 2 * m, rot + 3 * m};
  T scale = 0;
  for (int i = 0; i < D; ++i)
    for (int j = 0; j <= i; ++j) scale = std::max(scale, std::fabs(in[i * D + j]));
  scale = jac::pow2_scale(scale);
  const T inv = T(1) / scale;
  T tot = 0;
  for (int i = 0; i < D; ++i)
    for (int j = 0; j <= i; ++j) {
      const T v = in[i * D + j] * inv;
      A[i * D + j] = A[j * D + i] = v;
      tot += (i == j ? 1 : 2) * v * v;
    }
  for (int i = 0; i < D * D; ++i) V[i] = 0;
  for (int i = 0; i < D; ++i) V[i * D + i] = 1;
  const T eps = std::numeric_limits<T>::epsilon();
  bool rotated = true;  // a sweep that rotates no pair ends the iteration
  for (int sweep = 0; sweep < max_sweeps && rotated && !(off_norm2(A, D) <= tol * tol * tot);
       ++sweep) {
    rotated = false;
    for (int r = 0; r < n - 1; ++r) {
      for (int k = 0; k < m; ++k) {
        jac::prepare_pair(A, D, D, n, r, k, eps, st);
        rotated |= st.s[k] != T(0);
      }
      for (int b = 0; b < m; ++b)
        for (int a = 0; a <= b; ++a) jac::update_block(A, D, D, st, a, b);
      for (int b = 0; b < m; ++b)
        for (int i = 0; i < D; ++i) jac::update_vectors(V, D, st, i, b);
    }
  }
  for (int j = 0; j < D; ++j) {
    const int rk = jac::rank_of(A, D, D, j);
    vals[rk] = A[j * D + j] * scale;
    for (int i = 0; i < D; ++i) vecs[i * D + rk] = V[i * D + j];
  }
}

std::tuple<at::Tensor, at::Tensor> eigh_jacobi_cpu(const at::Tensor& cov_, int64_t max_sweeps,
                                                   double tol, int64_t threads) {
  stnls::check_eigh_args(cov_, max_sweeps, tol, threads);
  const at::Tensor cov = cov_.contiguous();
  const int64_t N = cov.size(0), D = cov.size(1);
  auto vals = at::empty({N, D}, cov.options());
  auto vecs = at::empty({N, D, D}, cov.options());
  if (N == 0 || D == 0) return {vals, vecs};
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "eigh_jacobi_cpu", [&] {
    using T = scalar_t;
    const T* in = cov.data_ptr<T>();
    T* pv = vals.data_ptr<T>();
    T* pu = vecs.data_ptr<T>();
    const int d = static_cast<int>(D), n = d + (d & 1);
    at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
      std::vector<T> A(D * D), V(D * D), rot(2 * n);
      std::vector<int> pq(n);
      for (int64_t i = lo; i < hi; ++i)
        solve_one<T>(in + i * D * D, d, static_cast<int>(max_sweeps), static_cast<T>(tol),
                     pv + i * D, pu + i * D * D, A.data(), V.data(), pq.data(), rot.data());
    });
  });
  return {vals, vecs};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) { m.impl("eigh_jacobi", &eigh_jacobi_cpu); }
