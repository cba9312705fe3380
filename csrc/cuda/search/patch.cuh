// How the CUDA search kernels read a patch (topk_kernel, search_dists and its backward): a
// position's top-left pixel and fractional parts (Pos), the flat indices of a patch pixel's
// two rows and columns (Px), its value (x then y, as PatchLoc::value), and the distance of
// two patches.
#pragma once

#include "common.cuh"

namespace stnls::search_cuda {

template <typename acc_t>
struct Pos {
  int64_t t, y0, x0;
  acc_t fy, fx;
  bool sy, sx;
};

template <typename acc_t>
__device__ __forceinline__ acc_t floor_acc(acc_t v) {
  const acc_t t = static_cast<acc_t>(static_cast<int64_t>(v));
  return t > v ? t - acc_t(1) : t;
}

template <typename acc_t>
__device__ __forceinline__ Pos<acc_t> make_pos(int64_t t, acc_t y, acc_t x, bool need_both) {
  Pos<acc_t> p;
  const acc_t y0 = floor_acc(y), x0 = floor_acc(x);
  p.t = t;
  p.y0 = static_cast<int64_t>(y0);
  p.x0 = static_cast<int64_t>(x0);
  p.fy = y - y0;
  p.fx = x - x0;
  p.sy = need_both || p.fy != acc_t(0);
  p.sx = need_both || p.fx != acc_t(0);
  return p;
}

// Flat (frame*H + row)*W bases and columns of patch pixel (dt, a, b) for both corners.
struct Px {
  int64_t r0, r1, c0, c1;
};

template <typename acc_t>
__device__ __forceinline__ Px locate(const Pos<acc_t>& p, int dt, int a, int b, int64_t T, int64_t H,
                                     int64_t W, int ps, int dil) {
  const int r = ps / 2;
  const int64_t f = reflect(p.t + dt, T) * H;
  Px o;
  o.r0 = (f + reflect(p.y0 + dil * (a - r), H)) * W;
  o.r1 = (f + reflect(p.y0 + 1 + dil * (a - r), H)) * W;
  o.c0 = reflect(p.x0 + dil * (b - r), W);
  o.c1 = reflect(p.x0 + 1 + dil * (b - r), W);
  return o;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t value(const scalar_t* v, int64_t C, const Pos<acc_t>& p, const Px& o,
                                       int64_t ch) {
  const acc_t v00 = static_cast<acc_t>(v[(o.r0 + o.c0) * C + ch]);
  acc_t r0 = v00;
  if (p.sx) {
    const acc_t v01 = static_cast<acc_t>(v[(o.r0 + o.c1) * C + ch]);
    r0 = (acc_t(1) - p.fx) * v00 + p.fx * v01;
  }
  if (!p.sy) return r0;
  const acc_t v10 = static_cast<acc_t>(v[(o.r1 + o.c0) * C + ch]);
  acc_t r1 = v10;
  if (p.sx) {
    const acc_t v11 = static_cast<acc_t>(v[(o.r1 + o.c1) * C + ch]);
    r1 = (acc_t(1) - p.fx) * v10 + p.fx * v11;
  }
  return (acc_t(1) - p.fy) * r0 + p.fy * r1;
}

template <typename scalar_t, typename acc_t>
__device__ acc_t patch_distance(const scalar_t* qv, const Pos<acc_t>& qp, const scalar_t* kv,
                                const Pos<acc_t>& kp, int64_t T, int64_t H, int64_t W, int64_t C,
                                int64_t c0, int64_t Ch, int ps, int pt, int dil, bool l2) {
  acc_t d = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b) {
        const Px qo = locate(qp, dt, a, b, T, H, W, ps, dil);
        const Px ko = locate(kp, dt, a, b, T, H, W, ps, dil);
        for (int64_t c = 0; c < Ch; ++c) {
          const acc_t q = value(qv, C, qp, qo, c0 + c);
          const acc_t k = value(kv, C, kp, ko, c0 + c);
          if (l2) {
            const acc_t e = q - k;
            d += e * e;
          } else {
            d += q * k;
          }
        }
      }
  return d;
}

}  // namespace stnls::search_cuda
