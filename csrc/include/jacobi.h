// Parallel-ordered cyclic Jacobi for small symmetric matrices: the steps the CPU twin
// (cpu/eigh_cpu.cpp) and the CUDA kernel (cuda/eigh_cuda.cu) share.
//
// A sweep is n - 1 steps, n = D rounded up to even. Each step pairs the n indices by the
// round-robin (circle) schedule into n / 2 disjoint pairs (p, q), p < q, so that over a sweep
// every pair meets once; for odd D the index D is a dummy whose pair is the identity. A step
// computes the n / 2 rotations from the current matrix (`rotation`), then applies all of them,
// A <- J^T A J and V <- V J, as independent 2 x 2 block updates (`update_block`,
// `update_vectors`): the blocks of one step touch disjoint elements, so they may run in any
// order or in parallel with the same result. A is kept symmetric (each off-diagonal block is
// written with its transpose) and each pair's own a_pq is set to exactly zero.
//
// A is a D x D matrix with row stride ld, V likewise; V's columns are the eigenvectors.
#pragma once

#include <cmath>
#include <limits>

#include "hd.h"

namespace stnls {
namespace jacobi {

// sqrt and division correctly rounded also where the CUDA kernels are built with
// --use_fast_math (whose approximations would make the rotations drift from orthogonal).
STNLS_HD float rn_sqrt(float x) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}
STNLS_HD double rn_sqrt(double x) { return std::sqrt(x); }
STNLS_HD float rn_div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
STNLS_HD double rn_div(double a, double b) { return a / b; }

// The power of two that brings the largest magnitude mx into [0.5, 1): dividing by it is
// exact, so a diagonal matrix keeps its values bit for bit. 1 for zero or non-finite mx.
template <typename T>
STNLS_HD T pow2_scale(T mx) {
  using std::frexp;
  using std::ldexp;
  if (!(mx > T(0)) || !(mx <= std::numeric_limits<T>::max())) return T(1);
  int e;
  frexp(mx, &e);
  return ldexp(T(1), e);
}

// Pair k (0 <= k < n/2) of step r (0 <= r < n-1) of the round-robin schedule on n (even)
// indices, as p < q. Index n - 1 is in pair 0 of every step.
STNLS_HD void round_robin(int n, int r, int k, int& p, int& q) {
  int a, b;
  if (k == 0) {
    a = n - 1;
    b = r;
  } else {
    a = (r + k) % (n - 1);
    b = (r - k + n - 1) % (n - 1);
  }
  p = a < b ? a : b;
  q = a < b ? b : a;
}

// The rotation (c, s) of indices p < q that zeroes a_pq of A' = J^T A J, with J the identity
// but J_pp = J_qq = c, J_pq = s, J_qp = -s, and the new diagonal a'_pp = app - t apq,
// a'_qq = aqq + t apq (t = s / c, |t| <= 1: the smaller of the two angles). A pair whose
// a_pq is zero or negligible against its diagonal (|apq| <= eps sqrt|app aqq|, where the
// rotation would change no element by more than rounding) is left alone: c = 1, s = 0.
template <typename T>
STNLS_HD void rotation(T app, T aqq, T apq, T eps, T& c, T& s, T& dpp, T& dqq) {
  using std::fabs;
  if (apq == T(0) || fabs(apq) <= eps * rn_sqrt(fabs(app * aqq))) {
    c = T(1);
    s = T(0);
    dpp = app;
    dqq = aqq;
    return;
  }
  const T theta = rn_div(T(0.5) * (aqq - app), apq);
  T t;
  if (fabs(theta) > T(1e10)) {
    t = rn_div(T(0.5), theta);  // theta^2 + 1 would round to theta^2 (or overflow)
  } else {
    t = rn_div(T(1), fabs(theta) + rn_sqrt(theta * theta + T(1)));
    if (theta < T(0)) t = -t;
  }
  c = rn_div(T(1), rn_sqrt(t * t + T(1)));
  s = t * c;
  dpp = app - t * apq;
  dqq = aqq + t * apq;
}

// A step's pairs and rotations: pair k is (p[k], q[k]) with rotation (c[k], s[k]) and new
// diagonal (dpp[k], dqq[k]).
template <typename T>
struct Step {
  int* p;
  int* q;
  T* c;
  T* s;
  T* dpp;
  T* dqq;
};

// Fills pair k of step r (n = D rounded up to even) from the current A.
template <typename T>
STNLS_HD void prepare_pair(const T* A, int ld, int D, int n, int r, int k, T eps, const Step<T>& st) {
  int p, q;
  round_robin(n, r, k, p, q);
  st.p[k] = p;
  st.q[k] = q;
  if (q >= D) {  // the dummy index of odd D: the identity
    st.c[k] = T(1);
    st.s[k] = T(0);
    st.dpp[k] = A[p * ld + p];
    st.dqq[k] = T(0);
    return;
  }
  rotation(A[p * ld + p], A[q * ld + q], A[p * ld + q], eps, st.c[k], st.s[k], st.dpp[k], st.dqq[k]);
}

// A <- J^T A J on the 2 x 2 block of rows (p_a, q_a) and columns (p_b, q_b), a <= b, and its
// transpose. Pair a's own block gets its new diagonal and exact zeros.
template <typename T>
STNLS_HD void update_block(T* A, int ld, int D, const Step<T>& st, int a, int b) {
  const int p = st.p[a], q = st.q[a];
  const bool qin = q < D;
  if (a == b) {
    if (qin && st.s[a] != T(0)) {
      A[p * ld + p] = st.dpp[a];
      A[q * ld + q] = st.dqq[a];
      A[p * ld + q] = T(0);
      A[q * ld + p] = T(0);
    }
    return;
  }
  const T ca = st.c[a], sa = st.s[a], cb = st.c[b], sb = st.s[b];
  if (sa == T(0) && sb == T(0)) return;  // both rotations are the identity
  const int r = st.p[b], s = st.q[b];
  const bool sin = s < D;
  const T bpr = A[p * ld + r];
  const T bps = sin ? A[p * ld + s] : T(0);
  const T bqr = qin ? A[q * ld + r] : T(0);
  const T bqs = qin && sin ? A[q * ld + s] : T(0);
  // rows: J_a^T B
  const T xpr = ca * bpr - sa * bqr, xps = ca * bps - sa * bqs;
  const T xqr = sa * bpr + ca * bqr, xqs = sa * bps + ca * bqs;
  // columns: (J_a^T B) J_b
  const T ypr = cb * xpr - sb * xps, yps = sb * xpr + cb * xps;
  const T yqr = cb * xqr - sb * xqs, yqs = sb * xqr + cb * xqs;
  A[p * ld + r] = ypr;
  A[r * ld + p] = ypr;
  if (sin) {
    A[p * ld + s] = yps;
    A[s * ld + p] = yps;
  }
  if (qin) {
    A[q * ld + r] = yqr;
    A[r * ld + q] = yqr;
  }
  if (qin && sin) {
    A[q * ld + s] = yqs;
    A[s * ld + q] = yqs;
  }
}

// V <- V J on row i, columns (p_b, q_b).
template <typename T>
STNLS_HD void update_vectors(T* V, int ld, const Step<T>& st, int i, int b) {
  const T c = st.c[b], s = st.s[b];
  if (s == T(0)) return;
  const int p = st.p[b], q = st.q[b];  // q < D: a dummy pair has s == 0
  const T vp = V[i * ld + p], vq = V[i * ld + q];
  V[i * ld + p] = c * vp - s * vq;
  V[i * ld + q] = s * vp + c * vq;
}

// Block index idx (0 <= idx < m (m + 1) / 2) of the upper triangle of an m x m grid of
// blocks, column by column: (a, b) with a <= b.
STNLS_HD void triangle_index(int idx, int& a, int& b) {
  using std::sqrt;
  b = static_cast<int>((sqrt(8.0f * static_cast<float>(idx) + 1.0f) - 1.0f) * 0.5f);
  while (b * (b + 1) / 2 > idx) --b;
  while ((b + 1) * (b + 2) / 2 <= idx) ++b;
  a = idx - b * (b + 1) / 2;
}

// Whether eigenvalue w (index i) comes before v (index j) in the ascending order: ties by
// index, NaN after every number, so that the order is total and the ranks a permutation.
template <typename T>
STNLS_HD bool before(T w, int i, T v, int j) {
  const bool wn = w != w, vn = v != v;
  if (wn || vn) return (!wn && vn) || (wn && vn && i < j);
  return w < v || (w == v && i < j);
}

// Position of the eigenvalue A_jj in ascending order.
template <typename T>
STNLS_HD int rank_of(const T* A, int ld, int D, int j) {
  const T v = A[j * ld + j];
  int r = 0;
  for (int i = 0; i < D; ++i) r += before(A[i * ld + i], i, v, j);
  return r;
}

}  // namespace jacobi
}  // namespace stnls
