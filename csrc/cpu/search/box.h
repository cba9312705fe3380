// What the CPU box-sum searches share (box.cpp: whole-pixel grids; subpix.cpp: sub-pixel
// windows through whole-pixel box sums): the distance term of a run of channels, and one
// offset's difference image over a tile of queries and its halo.
#pragma once

#include <cstdint>
#include <vector>

#include "../../include/mirror.h"

namespace stnls::search_cpu {

// The distance term of n contiguous values (a pixel's channels, in the box path's difference
// image): sum of squared differences (l2) or of products. Vectorised (a fixed order of
// partial sums: deterministic); this matters for many-channel features (workload B: 64
// channels, one pixel per patch).
template <typename acc_t, typename scalar_t>
inline acc_t distance_run(const scalar_t* x, const scalar_t* y, int64_t n, bool l2) {
  acc_t acc = 0;
  if (l2) {
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < n; ++c) {
      const acc_t e = static_cast<acc_t>(x[c]) - static_cast<acc_t>(y[c]);
      acc += e * e;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < n; ++c) acc += static_cast<acc_t>(x[c]) * static_cast<acc_t>(y[c]);
  }
  return acc;
}

// Whether a[0 .. n) are consecutive integers (a mirrored run turns back somewhere)
inline bool monotone(const int64_t* a, int64_t n) {
  for (int64_t i = 1; i < n; ++i)
    if (a[i] != a[i - 1] + 1) return false;
  return true;
}

// out[0 .. n): the three-channel L2 terms of n consecutive pixels (channels at stride C), set
// (first frame of the patch) or added: difference_image's sums in its order, vectorised.
template <typename acc_t, typename scalar_t>
inline void difference_run3_add(const scalar_t* x, const scalar_t* y, int64_t C, int64_t n,
                                acc_t* out, bool first) {
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) {
    const acc_t e0 = static_cast<acc_t>(x[v * C]) - static_cast<acc_t>(y[v * C]);
    const acc_t e1 = static_cast<acc_t>(x[v * C + 1]) - static_cast<acc_t>(y[v * C + 1]);
    const acc_t e2 = static_cast<acc_t>(x[v * C + 2]) - static_cast<acc_t>(y[v * C + 2]);
    const acc_t run = ((acc_t(0) + e0 * e0) + e1 * e1) + e2 * e2;
    out[v] = first ? acc_t(0) + run : out[v] + run;
  }
}

// D[u * DW + v] for the rows urow and columns vcol some query's patch covers: the distance
// term between query pixel (ryq[u], rxq[v]) of frame t and key pixel (ryk[u], rxk[v]) of frame
// s (mirrored rows and columns, frames mirrored here), summed over pt frames and the Ch
// channels from c0.
template <typename scalar_t, typename acc_t>
void difference_image(const scalar_t* qv, const scalar_t* kv, int64_t t, int64_t s, int64_t T,
                      int64_t H, int64_t W, int64_t C, int64_t c0, int64_t Ch, int64_t pt, bool l2,
                      const std::vector<int64_t>& urow, const std::vector<int64_t>& vcol,
                      const int64_t* ryq, const int64_t* rxq, const int64_t* ryk,
                      const int64_t* rxk, int64_t DW, acc_t* D) {
  // columns vcol one run of pixels, unmirrored in both videos
  const int64_t n = static_cast<int64_t>(vcol.size()), v0 = n ? vcol[0] : 0;
  const bool contiguous = n > 0 && vcol[n - 1] - v0 == n - 1 && rxq[v0 + n - 1] - rxq[v0] == n - 1 &&
                          rxk[v0 + n - 1] - rxk[v0] == n - 1 && monotone(rxq + v0, n) &&
                          monotone(rxk + v0, n);
  for (int64_t dt = 0; dt < pt; ++dt) {
    const int64_t fq = stnls::reflect(t + dt, T), fk = stnls::reflect(s + dt, T);
    for (const int64_t u : urow) {
      const scalar_t* xr = qv + (fq * H + ryq[u]) * W * C + c0;
      const scalar_t* yr = kv + (fk * H + ryk[u]) * W * C + c0;
      acc_t* Du = D + u * DW;
      if (Ch == 3 && l2 && contiguous) {  // a run of pixels in both videos: vectorised
        difference_run3_add<acc_t>(xr + rxq[v0] * C, yr + rxk[v0] * C, C, n, Du + v0, dt == 0);
      } else if (Ch == 3 && l2) {  // the common case, the same sums as distance_run
        for (const int64_t v : vcol) {
          const scalar_t* x = xr + rxq[v] * C;
          const scalar_t* y = yr + rxk[v] * C;
          const acc_t e0 = static_cast<acc_t>(x[0]) - static_cast<acc_t>(y[0]);
          const acc_t e1 = static_cast<acc_t>(x[1]) - static_cast<acc_t>(y[1]);
          const acc_t e2 = static_cast<acc_t>(x[2]) - static_cast<acc_t>(y[2]);
          const acc_t run = ((acc_t(0) + e0 * e0) + e1 * e1) + e2 * e2;
          Du[v] = dt == 0 ? acc_t(0) + run : Du[v] + run;
        }
      } else {
        for (const int64_t v : vcol) {
          const acc_t run = distance_run<acc_t>(xr + rxq[v] * C, yr + rxk[v] * C, Ch, l2);
          Du[v] = dt == 0 ? acc_t(0) + run : Du[v] + run;
        }
      }
    }
  }
}

}  // namespace stnls::search_cpu
