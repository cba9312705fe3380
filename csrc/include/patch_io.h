// Reading and writing the patches of gather / scatter / aggregate (csrc/{cpu,cuda}/gather_*):
// the arithmetic shared by the CPU and CUDA kernels, written to match the pure-PyTorch reference
// (napari_stnls/ops/_patches.py) operation for operation:
//   * a float position's fractional parts fy, fx and the weights 1 - fy, fy, 1 - fx, fx are
//     computed in the position's dtype, then cast to the accumulation type (as the reference
//     casts the weights to the values' dtype);
//   * reading: wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
//   * writing (the adjoint): corner (ry, cx) receives wx[cx] * (wy[ry] * value).
// Pixels are mirrored with stnls::reflect (mirror.h) in space and time.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "hd.h"
#include "mirror.h"

namespace stnls {

// Sizes of a gather / scatter: video (B, T, H, W, C), inds (B, nh, Q, K, 3), patches
// (B, nh, Q, K, pt, Ch, ps, ps) with Ch = C / nh.
struct GDims {
  int64_t B, T, H, W, C, nh, Q, K, Ch;
  int ps, pt, dil;
  STNLS_HD int64_t patches() const { return B * nh * Q * K; }
  STNLS_HD int64_t psz() const { return static_cast<int64_t>(pt) * Ch * ps * ps; }
  STNLS_HD int64_t video() const { return T * H * W * C; }
};

// One patch position: integer frame, top-left bilinear corner, weights, and whether the
// second row / column is read at all (always when the position's gradient is needed).
template <typename acc_t>
struct Pos {
  int64_t t, y0, x0;
  acc_t wy0, wy1, wx0, wx1;
  bool sy, sx;
};

// (t, y, x) at p[0..2]: integer types read whole pixels, floating types bilinearly.
template <typename acc_t, typename pos_t>
STNLS_HD Pos<acc_t> load_pos(const pos_t* p, bool need_both) {
  Pos<acc_t> o;
  if constexpr (std::is_floating_point<pos_t>::value) {
    // t is integer-valued (checked in Python): rounding is exact.
    o.t = static_cast<int64_t>(::floor(static_cast<double>(p[0]) + 0.5));
    const pos_t y = p[1], x = p[2];
    const pos_t yf = static_cast<pos_t>(::floor(static_cast<double>(y)));
    const pos_t xf = static_cast<pos_t>(::floor(static_cast<double>(x)));
    const pos_t fy = y - yf, fx = x - xf;
    o.y0 = static_cast<int64_t>(yf);
    o.x0 = static_cast<int64_t>(xf);
    o.wy0 = static_cast<acc_t>(pos_t(1) - fy);
    o.wy1 = static_cast<acc_t>(fy);
    o.wx0 = static_cast<acc_t>(pos_t(1) - fx);
    o.wx1 = static_cast<acc_t>(fx);
    o.sy = need_both || fy != pos_t(0);
    o.sx = need_both || fx != pos_t(0);
  } else {
    o.t = static_cast<int64_t>(p[0]);
    o.y0 = static_cast<int64_t>(p[1]);
    o.x0 = static_cast<int64_t>(p[2]);
    o.wy0 = o.wx0 = acc_t(1);
    o.wy1 = o.wx1 = acc_t(0);
    o.sy = o.sx = false;
  }
  return o;
}

// Flat pixel indices ((frame * H + row) * W + col) of the four bilinear corners of one
// patch pixel. p01/p10/p11 are only meaningful where Pos::sx / sy say they are read.
struct Corners {
  int64_t p00, p01, p10, p11;
};

template <typename acc_t>
STNLS_HD Corners corners(const Pos<acc_t>& p, int dt, int a, int b, int64_t T, int64_t H,
                         int64_t W, int ps, int dil) {
  const int r = ps / 2;
  const int64_t f = reflect(p.t + dt, T) * H;
  const int64_t ya = p.y0 + static_cast<int64_t>(dil) * (a - r);
  const int64_t xb = p.x0 + static_cast<int64_t>(dil) * (b - r);
  const int64_t r0 = (f + reflect(ya, H)) * W, r1 = (f + reflect(ya + 1, H)) * W;
  const int64_t c0 = reflect(xb, W), c1 = reflect(xb + 1, W);
  return {r0 + c0, r0 + c1, r1 + c0, r1 + c1};
}

// Value of channel ch (of C) at the corners.
template <typename acc_t, typename scalar_t>
STNLS_HD acc_t bilinear(const scalar_t* v, int64_t C, int64_t ch, const Corners& k,
                        const Pos<acc_t>& p) {
  acc_t r0 = static_cast<acc_t>(v[k.p00 * C + ch]);
  if (p.sx) r0 = p.wx0 * r0 + p.wx1 * static_cast<acc_t>(v[k.p01 * C + ch]);
  if (!p.sy) return r0;
  acc_t r1 = static_cast<acc_t>(v[k.p10 * C + ch]);
  if (p.sx) r1 = p.wx0 * r1 + p.wx1 * static_cast<acc_t>(v[k.p11 * C + ch]);
  return p.wy0 * r0 + p.wy1 * r1;
}

// d value / dy and d value / dx (Pos built with need_both).
template <typename acc_t, typename scalar_t>
STNLS_HD void bilinear_grad(const scalar_t* v, int64_t C, int64_t ch, const Corners& k,
                            const Pos<acc_t>& p, acc_t* dy, acc_t* dx) {
  const acc_t v00 = static_cast<acc_t>(v[k.p00 * C + ch]);
  const acc_t v01 = static_cast<acc_t>(v[k.p01 * C + ch]);
  const acc_t v10 = static_cast<acc_t>(v[k.p10 * C + ch]);
  const acc_t v11 = static_cast<acc_t>(v[k.p11 * C + ch]);
  *dy = (p.wx0 * v10 + p.wx1 * v11) - (p.wx0 * v00 + p.wx1 * v01);
  *dx = p.wy0 * (v01 - v00) + p.wy1 * (v11 - v10);
}

// Add g into the corners of channel ch (of C) with the bilinear weights (adjoint of bilinear).
template <typename acc_t, typename Add>
STNLS_HD void bilinear_add(acc_t* v, int64_t C, int64_t ch, const Corners& k, const Pos<acc_t>& p,
                           acc_t g, Add add) {
  const acc_t g0 = p.wy0 * g;
  add(&v[k.p00 * C + ch], p.wx0 * g0);
  if (p.sx) add(&v[k.p01 * C + ch], p.wx1 * g0);
  if (p.sy) {
    const acc_t g1 = p.wy1 * g;
    add(&v[k.p10 * C + ch], p.wx0 * g1);
    if (p.sx) add(&v[k.p11 * C + ch], p.wx1 * g1);
  }
}

}  // namespace stnls
