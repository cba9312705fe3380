// CPU kernels of iunfold / ifold (at::parallel_for).
//
// iunfold is parallel over patches. ifold is computed as a gather: every output pixel sums,
// in a fixed order (dt, a, b), the patch values read from it, so there is no race and the
// result is bit-identical run to run. Only the box of pixels the patches can reach is
// computed; the rest of the output is zero.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../include/checks.h"
#include "../include/grid.h"

namespace {

using stnls::Box;
using stnls::Grid;

void check_video(const at::Tensor& v) {
  TORCH_CHECK(v.dim() == 5, "video: expected (B, T, C, H, W), got ", v.dim(), " dims");
  TORCH_CHECK(v.is_floating_point(), "video: expected a floating-point tensor");
}

at::Tensor iunfold_patches_cpu(const at::Tensor& video_, at::IntArrayRef region, int64_t stride,
                               int64_t ps, int64_t pt, int64_t dilation) {
  check_video(video_);
  stnls::check_fold_args(ps, pt, dilation);
  const at::Tensor video = video_.contiguous();
  const int64_t B = video.size(0), T = video.size(1), C = video.size(2), H = video.size(3),
                W = video.size(4);
  const Grid g = stnls::make_grid(region, stride, T, H, W);
  const int64_t L = pt * C * ps * ps;
  auto out = at::empty({B, g.Q, L}, video.options());
  if (out.numel() == 0) return out;
  const int64_t r = ps / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "iunfold_patches_cpu", [&] {
    const scalar_t* v = video.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * g.Q, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / g.Q, q = n % g.Q;
        const int64_t t = g.t0 + q / (g.nH * g.nW);
        const int64_t y = g.y0 + (q / g.nW) % g.nH * g.stride;
        const int64_t x = g.x0 + q % g.nW * g.stride;
        scalar_t* on = o + n * L;
        for (int64_t dt = 0; dt < pt; ++dt)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t a = 0; a < ps; ++a) {
              const int64_t yy = y + dilation * (a - r);
              if (t + dt >= T || yy < 0 || yy >= H) {
                for (int64_t bb = 0; bb < ps; ++bb) *on++ = scalar_t(0);
                continue;
              }
              const scalar_t* row = v + (((b * T + t + dt) * C + c) * H + yy) * W;
              for (int64_t bb = 0; bb < ps; ++bb) {
                const int64_t xx = x + dilation * (bb - r);
                *on++ = (xx >= 0 && xx < W) ? row[xx] : scalar_t(0);
              }
            }
      }
    });
  });
  return out;
}

// For every pixel index u of [lo, hi) on one axis, the (patch offset a, grid index i) pairs
// with u == g0 + i*stride + dil*(a - ps/2), 0 <= i < n: flat (a, i) pairs, count[u - lo].
void axis_table(int64_t lo, int64_t hi, int64_t g0, int64_t n, int64_t stride, int64_t ps,
                int64_t dil, std::vector<int64_t>& pairs, std::vector<int64_t>& count) {
  const int64_t r = ps / 2;
  pairs.assign((hi - lo) * ps * 2, 0);
  count.assign(hi - lo, 0);
  for (int64_t u = lo; u < hi; ++u) {
    int64_t k = 0;
    for (int64_t a = 0; a < ps; ++a) {
      const int64_t d = u - dil * (a - r) - g0;
      if (d < 0 || d % stride != 0 || d / stride >= n) continue;
      pairs[((u - lo) * ps + k) * 2] = a;
      pairs[((u - lo) * ps + k) * 2 + 1] = d / stride;
      ++k;
    }
    count[u - lo] = k;
  }
}

at::Tensor ifold_patches_cpu(const at::Tensor& patches_, at::IntArrayRef region, int64_t stride,
                             int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt,
                             int64_t dilation) {
  TORCH_CHECK(patches_.dim() == 3 && patches_.is_floating_point(),
              "patches: expected a floating (B, Q, pt*C*ps*ps) tensor");
  stnls::check_fold_args(ps, pt, dilation);
  TORCH_CHECK(T >= 1 && H >= 1 && W >= 1, "T, H, W: expected >= 1");
  const Grid g = stnls::make_grid(region, stride, T, H, W);
  const at::Tensor patches = patches_.contiguous();
  const int64_t B = patches.size(0), L = patches.size(2);
  TORCH_CHECK(patches.size(1) == g.Q, "patches: expected Q=", g.Q, " for this region, got ",
              patches.size(1));
  TORCH_CHECK(L % (pt * ps * ps) == 0, "patches: size(2)=", L, " is not a multiple of pt*ps*ps");
  const int64_t C = L / (pt * ps * ps);
  auto out = at::zeros({B, T, C, H, W}, patches.options());
  if (out.numel() == 0 || g.Q == 0) return out;
  const Box bx = stnls::fold_box(g, T, H, W, ps, pt, dilation);
  if (bx.t1 <= bx.t0 || bx.y1 <= bx.y0 || bx.x1 <= bx.x0) return out;
  std::vector<int64_t> ypairs, ycount, xpairs, xcount;
  axis_table(bx.y0, bx.y1, g.y0, g.nH, g.stride, ps, dilation, ypairs, ycount);
  axis_table(bx.x0, bx.x1, g.x0, g.nW, g.stride, ps, dilation, xpairs, xcount);
  const int64_t nt = bx.t1 - bx.t0, ny = bx.y1 - bx.y0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                  "ifold_patches_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = patches.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // one task per output row (b, t, y) of the box, all channels: the patches read for
    // neighbouring x overlap, so they stay in cache across x and c
    at::parallel_for(0, B * nt * ny, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t yi = n % ny, t = bx.t0 + (n / ny) % nt, b = n / (ny * nt);
        const int64_t y = bx.y0 + yi;
        const int64_t* yp = ypairs.data() + yi * ps * 2;
        for (int64_t x = bx.x0; x < bx.x1; ++x) {
          const int64_t* xp = xpairs.data() + (x - bx.x0) * ps * 2;
          const int64_t nxp = xcount[x - bx.x0];
          for (int64_t c = 0; c < C; ++c) {
            acc_t s = 0;
            for (int64_t dt = 0; dt < pt; ++dt) {
              const int64_t tq = t - dt;
              if (tq < g.t0 || tq >= g.t1) continue;
              const int64_t qt = (tq - g.t0) * g.nH;
              for (int64_t ky = 0; ky < ycount[yi]; ++ky) {
                const int64_t a = yp[2 * ky], i = yp[2 * ky + 1];
                const scalar_t* prow = p + (b * g.Q + (qt + i) * g.nW) * L +
                                       ((dt * C + c) * ps + a) * ps;
                for (int64_t kx = 0; kx < nxp; ++kx)
                  s += static_cast<acc_t>(prow[xp[2 * kx + 1] * L + xp[2 * kx]]);
              }
            }
            o[(((b * T + t) * C + c) * H + y) * W + x] = static_cast<scalar_t>(s);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("iunfold_patches", &iunfold_patches_cpu);
  m.impl("ifold_patches", &ifold_patches_cpu);
}
