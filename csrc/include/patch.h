// Reading mirrored, possibly sub-pixel patches of a channels-last video (T, H, W, C): the
// arithmetic shared by every kernel (CPU and CUDA) so that all of them compare exactly the
// same patch values as the pure-PyTorch reference (napari_stnls/ops/_patches.py):
//   * pixel indices outside 0..n-1 are mirrored without repeating the border (-1 -> 1);
//   * frames past the end are mirrored about the last frame;
//   * a sub-pixel value is wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define STNLS_HD __host__ __device__ __forceinline__
#else
#define STNLS_HD inline
#endif

namespace stnls {

constexpr int kMaxPs = 32;  // compiled kernels handle ps <= kMaxPs and pt <= kMaxPt
constexpr int kMaxPt = 8;

STNLS_HD int64_t reflect(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;  // the common case: inside the frame
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  int64_t m = i % period;
  if (m < 0) m += period;
  return m >= n ? period - m : m;
}

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

}  // namespace stnls
