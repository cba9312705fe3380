// What the refine kernels (cpu/search/refine.cpp, cuda/search/refine.cu) share, host and
// device: the candidates of one query's windows, the rule that a position reached from
// several windows counts once, and the sorted list of the k best by (distance, t, y, x).
//
// Window j of a query is centred on c_j = (t_j, y_j, x_j) (centres, computed in Python);
// its candidate (i, jj), id (j * wr + i) * wr + jj, sits at (t_j, y_j + (i - r), x_j + (jj - r)),
// r = wr / 2, added in the centres' dtype (as the Python glue adds them, so that positions
// agree bit for bit).
#pragma once

#include <cstdint>

#include "hd.h"
#include "topk.h"

namespace stnls {

// Whether the window centred on (ct, cy, cx), of radius r, holds the position (t, y, x): one of
// its candidates has exactly those values.
template <typename acc_t>
STNLS_HD bool window_holds(acc_t ct, acc_t cy, acc_t cx, int r, acc_t t, acc_t y, acc_t x) {
  if (ct != t) return false;
  const acc_t dy = y - cy, dx = x - cx;
  const acc_t lim = acc_t(r) + acc_t(0.5);
  if (!(dy > -lim && dy < lim && dx > -lim && dx < lim)) return false;
  // the nearest whole offsets; the candidate there is recomputed as the kernels compute it
  const int iy = static_cast<int>(dy + (dy < acc_t(0) ? acc_t(-0.5) : acc_t(0.5)));
  const int ix = static_cast<int>(dx + (dx < acc_t(0) ? acc_t(-0.5) : acc_t(0.5)));
  return cy + acc_t(iy) == y && cx + acc_t(ix) == x;
}

// Whether candidate (t, y, x) of window j was already a candidate of an earlier window:
// cen points at the K_in centres (t, y, x) of the query.
template <typename acc_t>
STNLS_HD bool seen_before(const acc_t* cen, int64_t j, int r, acc_t t, acc_t y, acc_t x) {
  for (int64_t e = 0; e < j; ++e)
    if (window_holds(cen[e * 3], cen[e * 3 + 1], cen[e * 3 + 2], r, t, y, x)) return true;
  return false;
}

// (d, p) before (e, o): the better distance, then the smaller position (t, then y, then x).
// Candidates are distinct positions, so the order is total.
template <typename acc_t>
STNLS_HD bool refine_before(acc_t d, const acc_t* p, acc_t e, const acc_t* o, bool l2) {
  if (d != e) return better(d, e, l2);
  if (p[0] != o[0]) return p[0] < o[0];
  if (p[1] != o[1]) return p[1] < o[1];
  return p[2] < o[2];
}

// Insert (d, p, id) into the sorted list (ds, pos (3 a entry), ids; n entries) of capacity k.
template <typename acc_t>
STNLS_HD void refine_insert(acc_t* ds, acc_t* pos, int64_t* ids, int& n, int k, acc_t d,
                            const acc_t* p, int64_t id, bool l2) {
  int at;
  if (n < k) {
    at = n++;
  } else if (refine_before(d, p, ds[k - 1], pos + 3 * (k - 1), l2)) {
    at = k - 1;
  } else {
    return;
  }
  while (at > 0 && refine_before(d, p, ds[at - 1], pos + 3 * (at - 1), l2)) {
    ds[at] = ds[at - 1];
    ids[at] = ids[at - 1];
    for (int c = 0; c < 3; ++c) pos[3 * at + c] = pos[3 * (at - 1) + c];
    --at;
  }
  ds[at] = d;
  ids[at] = id;
  for (int c = 0; c < 3; ++c) pos[3 * at + c] = p[c];
}

}  // namespace stnls
