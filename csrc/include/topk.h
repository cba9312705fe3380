// The top-k list of one query, host and device: the k best candidates in a small sorted
// list (CPU kernels, and the CUDA ones through TopK in topk.cuh), and the list capacities
// the kernels are compiled for.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "hd.h"

namespace stnls {

// Better-first comparison: smaller for L2, larger for products. Strict, so among equal
// distances the candidate seen first (smaller id) stays first.
template <typename acc_t>
STNLS_HD bool better(acc_t a, acc_t b, bool l2) {
  return l2 ? a < b : a > b;
}

// Insert (d, id) into the sorted top-k list (d[0..n), id[0..n)) of capacity k.
template <typename acc_t, typename id_t, typename idv_t>
STNLS_HD void topk_insert(acc_t* ds, id_t* ids, int& n, int k, acc_t d, idv_t id, bool l2) {
  int pos;
  if (n < k) {
    pos = n++;
  } else if (better(d, ds[k - 1], l2)) {
    pos = k - 1;
  } else {
    return;
  }
  while (pos > 0 && better(d, ds[pos - 1], l2)) {
    ds[pos] = ds[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  ds[pos] = d;
  ids[pos] = static_cast<id_t>(id);
}

// Writes a query's sorted list (ds, ids, n entries) as k distances and ids; entries past n
// (never, for a window holding at least k candidates) get id 0 and the worst distance.
template <typename acc_t, typename id_t>
STNLS_HD void topk_write(const acc_t* ds, const id_t* ids, int n, int k, bool l2, acc_t* dout,
                         int64_t* iout) {
  for (int r = 0; r < k; ++r) {
    dout[r] = r < n ? ds[r] : (l2 ? acc_t(INFINITY) : acc_t(-INFINITY));
    iout[r] = r < n ? static_cast<int64_t>(ids[r]) : 0;
  }
}

// Calls f(std::integral_constant<int, KMAX>{}) with the smallest KMAX in {16, 32, 64, 128}
// that holds k: the capacity of a kernel's per-thread top-k list.
template <typename F>
void dispatch_kmax(int64_t k, F&& f) {
  if (k <= 16) {
    f(std::integral_constant<int, 16>{});
  } else if (k <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (k <= 64) {
    f(std::integral_constant<int, 64>{});
  } else {
    f(std::integral_constant<int, 128>{});
  }
}

}  // namespace stnls
