// How the search reads a mirrored, possibly sub-pixel patch of a channels-last video
// (T, H, W, C) (the CPU kernels; the CUDA ones read the same way, csrc/cuda/search/patch.cuh),
// so that every kernel compares exactly the patch values of the pure-PyTorch reference
// (napari_stnls/ops/_patches.py): a sub-pixel value is
// wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11), mirrored as mirror.h says.
// Also the largest patch the compiled kernels take (kMaxPs, kMaxPt), which sizes PatchLoc.
#pragma once

#include <cmath>
#include <cstdint>

#include "hd.h"
#include "mirror.h"

namespace stnls {

constexpr int kMaxPs = 32;  // compiled kernels handle ps <= kMaxPs and pt <= kMaxPt
constexpr int kMaxPt = 8;

// Where the pixels of one patch live: flat row bases ((frame * H + row) * W) per (dt, a) and
// columns per b, for the top-left corner (0) and, at sub-pixel positions, the next row/column
// (1), with the bilinear weights.
template <typename acc_t>
struct PatchLoc {
  int64_t row0[kMaxPt][kMaxPs];
  int64_t row1[kMaxPt][kMaxPs];
  int64_t col0[kMaxPs];
  int64_t col1[kMaxPs];
  acc_t fy, fx;
  bool sub_y, sub_x;  // whether the second row / column is read at all

  // t integer frame; (y, x) possibly fractional; need_both forces the second row and
  // column (for gradients w.r.t. the position at whole pixels).
  STNLS_HD void set(int64_t t, acc_t y, acc_t x, int64_t T, int64_t H, int64_t W, int ps, int pt,
                    int dil, bool need_both) {
    const acc_t y0f = floor_(y), x0f = floor_(x);
    fy = y - y0f;
    fx = x - x0f;
    sub_y = need_both || fy != acc_t(0);
    sub_x = need_both || fx != acc_t(0);
    const int64_t y0 = static_cast<int64_t>(y0f), x0 = static_cast<int64_t>(x0f);
    const int r = ps / 2;
    for (int b = 0; b < ps; ++b) {
      col0[b] = reflect(x0 + dil * (b - r), W);
      col1[b] = reflect(x0 + 1 + dil * (b - r), W);
    }
    for (int dt = 0; dt < pt; ++dt) {
      const int64_t f = reflect(t + dt, T) * H;
      for (int a = 0; a < ps; ++a) {
        row0[dt][a] = (f + reflect(y0 + dil * (a - r), H)) * W;
        row1[dt][a] = (f + reflect(y0 + 1 + dil * (a - r), H)) * W;
      }
    }
  }

  // Value of patch pixel (dt, a, b), channel ch, in a channels-last video with C channels.
  template <typename scalar_t>
  STNLS_HD acc_t value(const scalar_t* v, int64_t C, int dt, int a, int b, int64_t ch) const {
    const acc_t v00 = static_cast<acc_t>(v[(row0[dt][a] + col0[b]) * C + ch]);
    acc_t r0 = v00;
    if (sub_x) {
      const acc_t v01 = static_cast<acc_t>(v[(row0[dt][a] + col1[b]) * C + ch]);
      r0 = (acc_t(1) - fx) * v00 + fx * v01;
    }
    if (!sub_y) return r0;
    const acc_t v10 = static_cast<acc_t>(v[(row1[dt][a] + col0[b]) * C + ch]);
    acc_t r1 = v10;
    if (sub_x) {
      const acc_t v11 = static_cast<acc_t>(v[(row1[dt][a] + col1[b]) * C + ch]);
      r1 = (acc_t(1) - fx) * v10 + fx * v11;
    }
    return (acc_t(1) - fy) * r0 + fy * r1;
  }

  // d value / d y and d value / d x of patch pixel (dt, a, b), channel ch (both corners read).
  template <typename scalar_t>
  STNLS_HD void grad_pos(const scalar_t* v, int64_t C, int dt, int a, int b, int64_t ch, acc_t* dy,
                         acc_t* dx) const {
    const acc_t v00 = static_cast<acc_t>(v[(row0[dt][a] + col0[b]) * C + ch]);
    const acc_t v01 = static_cast<acc_t>(v[(row0[dt][a] + col1[b]) * C + ch]);
    const acc_t v10 = static_cast<acc_t>(v[(row1[dt][a] + col0[b]) * C + ch]);
    const acc_t v11 = static_cast<acc_t>(v[(row1[dt][a] + col1[b]) * C + ch]);
    *dy = (acc_t(1) - fx) * (v10 - v00) + fx * (v11 - v01);
    *dx = (acc_t(1) - fy) * (v01 - v00) + fy * (v11 - v10);
  }

  // Add g into the (up to four) pixels the value of (dt, a, b, ch) was read from, with the
  // same bilinear weights (the adjoint of value()).
  template <typename scalar_t, typename Add>
  STNLS_HD void scatter(scalar_t* v, int64_t C, int dt, int a, int b, int64_t ch, acc_t g,
                        Add add) const {
    const acc_t wy0 = sub_y ? acc_t(1) - fy : acc_t(1), wx0 = sub_x ? acc_t(1) - fx : acc_t(1);
    add(&v[(row0[dt][a] + col0[b]) * C + ch], g * wy0 * wx0);
    if (sub_x) add(&v[(row0[dt][a] + col1[b]) * C + ch], g * wy0 * fx);
    if (sub_y) {
      add(&v[(row1[dt][a] + col0[b]) * C + ch], g * fy * wx0);
      if (sub_x) add(&v[(row1[dt][a] + col1[b]) * C + ch], g * fy * fx);
    }
  }

 private:
  STNLS_HD static acc_t floor_(acc_t v) {
    const acc_t t = static_cast<acc_t>(static_cast<int64_t>(v));
    return t > v ? t - acc_t(1) : t;
  }
};

}  // namespace stnls
