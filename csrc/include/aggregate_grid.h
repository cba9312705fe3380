// aggregate at the query grid, in fold form (csrc/{cpu,cuda}/gather_*: aggregate_grid).
//
// Non-local means adds each query's K weighted neighbour patches at the query's own patch.
// When the queries lie on a grid (search's region and stride0), every output pixel can find
// the patch pixels that land on it instead of having them added to it: pixel (t, y, x)
// receives, from each query q whose patch pixel (dt, a, b) mirrors onto (t, y, x), and each
// neighbour k of q, weight(q, k) * video[inds(q, k) + (dt, dil (a - r), dil (b - r))] (read
// as gather reads it). Each pixel is written by one thread: no atomics, and the same bits on
// every run. On CUDA (grid_pixel, one thread per pixel) the sum runs over (time entries, row
// entries, column entries, k) in map order; the CPU kernel takes a whole output row per task
// and runs over (time entries, row entries, grid column, k, patch column).
//
// The axis maps are built on the host (grid.h, axis_map / grid_maps): for an axis of
// n coordinates, map[0 .. n] are CSR offsets and map[n + 1 + e] are the entries, each
// grid index * P + offset index (P = pt for time, ps in space), listing for coordinate u the
// (grid index, offset) pairs whose mirrored position is u, in increasing code order.
#pragma once

#include <cstdint>

#include "patch_io.h"

namespace stnls {

// Sizes of a grid aggregate: the video (B, T, H, W, C), inds (B, nh, Q, K, 3) with
// Q = nTr * nH * nW grid queries.
struct GridDims {
  GDims d;
  int64_t nH, nW;
};

// The K neighbours of the grid queries of one (batch item, head), as inds (B, nh, Q, K, 3)
// and weights (B, nh, Q, K) hold them (weights may be null: 1).
template <typename acc_t, typename pos_t>
struct NeighboursAoS {
  const pos_t* pos;
  const acc_t* wts;
  int64_t base, K;  // base = (b * nh + h) * Q
  STNLS_HD void operator()(int64_t q, int64_t k, Pos<acc_t>& p, acc_t& w) const {
    const int64_t n = (base + q) * K + k;
    p = load_pos<acc_t>(pos + n * 3, false);
    w = wts == nullptr ? acc_t(1) : wts[n];
  }
};

// Sums, for pixel (t, y, x) of one (batch item, head) whose video is vb and neighbours nb,
// channels c0 .. c0 + nc - 1 of the head (ch0 = its first channel of C) into acc[0 .. nc)
// (added to what they hold) and the weights into *cnt. The weights multiply the values only
// when weighted (as scatter: v * w).
template <typename video_t, typename acc_t, int NCMAX, typename Nb>
STNLS_HD void grid_pixel(const video_t* vb, const Nb& nb, bool weighted, const GridDims& g,
                         const int64_t* tmap, const int64_t* ymap, const int64_t* xmap,
                         int64_t t, int64_t y, int64_t x, int64_t ch0, int nc, acc_t* acc,
                         acc_t* cnt) {
  const GDims& d = g.d;
  const int64_t* te = tmap + d.T + 1;
  const int64_t* ye = ymap + d.H + 1;
  const int64_t* xe = xmap + d.W + 1;
  for (int64_t et = tmap[t]; et < tmap[t + 1]; ++et) {
    const int64_t it = te[et] / d.pt;
    const int dt = static_cast<int>(te[et] - it * d.pt);
    for (int64_t ey = ymap[y]; ey < ymap[y + 1]; ++ey) {
      const int64_t iy = ye[ey] / d.ps;
      const int a = static_cast<int>(ye[ey] - iy * d.ps);
      const int64_t row = (it * g.nH + iy) * g.nW;
      for (int64_t ex = xmap[x]; ex < xmap[x + 1]; ++ex) {
        const int64_t ix = xe[ex] / d.ps;
        const int bb = static_cast<int>(xe[ex] - ix * d.ps);
        for (int64_t k = 0; k < d.K; ++k) {
          Pos<acc_t> p;
          acc_t w;
          nb(row + ix, k, p, w);
          const Corners kc = corners(p, dt, a, bb, d.T, d.H, d.W, d.ps, d.dil);
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
          for (int c = 0; c < NCMAX; ++c)
            if (c < nc) {
              // rounded to the video's dtype, as gather stores it
              const acc_t v = static_cast<acc_t>(
                  static_cast<video_t>(bilinear(vb, d.C, ch0 + c, kc, p)));
              acc[c] += weighted ? v * w : v;
            }
          *cnt += w;
        }
      }
    }
  }
}

}  // namespace stnls
