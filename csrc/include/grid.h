// Geometry of the query grids (host): the grid of a region and a stride (iunfold / ifold,
// aggregate_grid), the box of pixels ifold can touch, and aggregate_grid's axis maps (see
// aggregate_grid.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "checks.h"  // shape_str
#include "mirror.h"

namespace stnls {

// Geometry of the query grid of iunfold / ifold: region (t0, t1, y0, y1, x0, x1), stride.
struct Grid {
  int64_t t0, t1, y0, y1, x0, x1, stride, nH, nW, Q;
};

inline Grid make_grid(at::IntArrayRef region, int64_t stride, int64_t T, int64_t H, int64_t W) {
  TORCH_CHECK(region.size() == 6, "region: expected 6 values (t0, t1, y0, y1, x0, x1)");
  TORCH_CHECK(stride >= 1, "stride: expected >= 1, got ", stride);
  Grid g{region[0], region[1], region[2], region[3], region[4], region[5], stride, 0, 0, 0};
  TORCH_CHECK(0 <= g.t0 && g.t0 < g.t1 && g.t1 <= T && 0 <= g.y0 && g.y0 < g.y1 && g.y1 <= H &&
                  0 <= g.x0 && g.x0 < g.x1 && g.x1 <= W,
              "region: ", shape_str(region), " is empty or not inside the video (T, H, W) = (",
              T, ", ", H, ", ", W, ")");
  g.nH = (g.y1 - g.y0 + stride - 1) / stride;
  g.nW = (g.x1 - g.x0 + stride - 1) / stride;
  g.Q = (g.t1 - g.t0) * g.nH * g.nW;
  return g;
}

// The pixels ifold can touch: frames [t0, t1), rows [y0, y1), columns [x0, x1) (clamped to
// the video); everything else of its output is zero.
struct Box {
  int64_t t0, t1, y0, y1, x0, x1;
};

inline Box fold_box(const Grid& g, int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt,
                    int64_t dil) {
  const int64_t r = ps / 2;
  const int64_t ylast = g.y0 + (g.nH - 1) * g.stride, xlast = g.x0 + (g.nW - 1) * g.stride;
  Box b;
  b.t0 = g.t0;
  b.t1 = std::min(T, g.t1 - 1 + pt);
  b.y0 = std::max<int64_t>(0, g.y0 - dil * r);
  b.y1 = std::min(H, ylast + dil * (ps - 1 - r) + 1);
  b.x0 = std::max<int64_t>(0, g.x0 - dil * r);
  b.x1 = std::min(W, xlast + dil * (ps - 1 - r) + 1);
  return b;
}

// One axis map of aggregate_grid (see aggregate_grid.h): for the ng grid coordinates
// g0 + i * stride and the P offsets off(o), the CSR lists, per coordinate u of an axis of n,
// of the codes i * P + o whose mirrored coordinate reflect(g0 + i * stride + off(o), n) is u,
// in increasing code order.
template <typename Off>
std::vector<int64_t> axis_map(int64_t n, int64_t g0, int64_t ng, int64_t stride, int64_t P,
                              Off off) {
  std::vector<int64_t> m(n + 1 + ng * P, 0);
  std::vector<int64_t> target(ng * P);
  for (int64_t i = 0; i < ng; ++i)
    for (int64_t o = 0; o < P; ++o) {
      const int64_t u = reflect(g0 + i * stride + off(o), n);
      target[i * P + o] = u;
      ++m[u + 1];
    }
  for (int64_t u = 0; u < n; ++u) m[u + 1] += m[u];
  std::vector<int64_t> fill(m.begin(), m.begin() + n);
  for (int64_t code = 0; code < ng * P; ++code) m[n + 1 + fill[target[code]]++] = code;
  return m;
}

// [first, last] coordinates of an axis map that receive anything (n, n - 1 if none).
inline std::pair<int64_t, int64_t> map_span(const std::vector<int64_t>& m, int64_t n) {
  int64_t lo = 0, hi = n - 1;
  while (lo < n && m[lo + 1] == m[lo]) ++lo;
  while (hi >= 0 && m[hi + 1] == m[hi]) --hi;
  return {lo, hi};
}

// The three maps of aggregate_grid, one after the other (time, rows, columns), the grid and
// the box of pixels that receive anything (frames t0..t1-1, rows y0..y1-1, columns x0..x1-1).
struct GridMaps {
  std::vector<int64_t> all;
  int64_t ty, tx;  // where the row and column maps start
  Grid g;
  Box box;
};

inline GridMaps grid_maps(const Grid& g, int64_t T, int64_t H, int64_t W, int64_t ps,
                          int64_t pt, int64_t dil) {
  const int64_t r = ps / 2;
  auto tm = axis_map(T, g.t0, g.t1 - g.t0, 1, pt, [](int64_t o) { return o; });
  auto ym = axis_map(H, g.y0, g.nH, g.stride, ps, [&](int64_t o) { return dil * (o - r); });
  auto xm = axis_map(W, g.x0, g.nW, g.stride, ps, [&](int64_t o) { return dil * (o - r); });
  GridMaps out;
  out.g = g;
  const auto st = map_span(tm, T), sy = map_span(ym, H), sx = map_span(xm, W);
  out.box = {st.first, st.second + 1, sy.first, sy.second + 1, sx.first, sx.second + 1};
  out.ty = static_cast<int64_t>(tm.size());
  out.tx = out.ty + static_cast<int64_t>(ym.size());
  out.all = std::move(tm);
  out.all.insert(out.all.end(), ym.begin(), ym.end());
  out.all.insert(out.all.end(), xm.begin(), xm.end());
  return out;
}

}  // namespace stnls
