// CUDA kernels of iunfold / ifold, one thread per output element. ifold is computed as a
// gather (each pixel of the box the patches reach sums the patch values read from it, in a
// fixed order), so it needs no atomics and is deterministic.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../include/checks.h"
#include "../include/grid.h"

namespace {

using stnls::Box;
using stnls::Grid;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Video (B, T, C, H, W) sizes and patch geometry.
struct FDims {
  int64_t B, T, C, H, W;
  int ps, pt, dil;
};

template <typename scalar_t>
__global__ void iunfold_kernel(const scalar_t* __restrict__ video, Grid g, FDims d, int64_t total,
                               scalar_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= total) return;
  const int64_t L = static_cast<int64_t>(d.pt) * d.C * d.ps * d.ps;
  int64_t m = n % L;
  const int64_t q = (n / L) % g.Q, b = n / (L * g.Q);
  const int bb = static_cast<int>(m % d.ps);
  m /= d.ps;
  const int a = static_cast<int>(m % d.ps);
  m /= d.ps;
  const int64_t c = m % d.C, dt = m / d.C;
  const int r = d.ps / 2;
  const int64_t t = g.t0 + q / (g.nH * g.nW) + dt;
  const int64_t y = g.y0 + (q / g.nW) % g.nH * g.stride + static_cast<int64_t>(d.dil) * (a - r);
  const int64_t x = g.x0 + q % g.nW * g.stride + static_cast<int64_t>(d.dil) * (bb - r);
  const bool inside = t < d.T && y >= 0 && y < d.H && x >= 0 && x < d.W;
  out[n] = inside ? video[(((b * d.T + t) * d.C + c) * d.H + y) * d.W + x] : scalar_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void ifold_kernel(const scalar_t* __restrict__ patches, Grid g, Box bx, FDims d,
                             int64_t total, scalar_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= total) return;
  const int64_t nx = bx.x1 - bx.x0, ny = bx.y1 - bx.y0, nt = bx.t1 - bx.t0;
  const int64_t x = bx.x0 + n % nx, y = bx.y0 + (n / nx) % ny, c = (n / (nx * ny)) % d.C;
  const int64_t t = bx.t0 + (n / (nx * ny * d.C)) % nt, b = n / (nx * ny * d.C * nt);
  const int64_t L = static_cast<int64_t>(d.pt) * d.C * d.ps * d.ps;
  const int r = d.ps / 2;
  acc_t s = 0;
  for (int dt = 0; dt < d.pt; ++dt) {
    const int64_t tq = t - dt;
    if (tq < g.t0 || tq >= g.t1) continue;
    const int64_t qt = (tq - g.t0) * g.nH;
    for (int a = 0; a < d.ps; ++a) {
      const int64_t dy = y - static_cast<int64_t>(d.dil) * (a - r) - g.y0;
      if (dy < 0 || dy % g.stride != 0 || dy / g.stride >= g.nH) continue;
      const int64_t qrow = (qt + dy / g.stride) * g.nW;
      const int64_t off = ((dt * d.C + c) * d.ps + a) * d.ps;
      for (int bb = 0; bb < d.ps; ++bb) {
        const int64_t dx = x - static_cast<int64_t>(d.dil) * (bb - r) - g.x0;
        if (dx < 0 || dx % g.stride != 0 || dx / g.stride >= g.nW) continue;
        s += static_cast<acc_t>(patches[(b * g.Q + qrow + dx / g.stride) * L + off + bb]);
      }
    }
  }
  out[(((b * d.T + t) * d.C + c) * d.H + y) * d.W + x] = static_cast<scalar_t>(s);
}

at::Tensor iunfold_patches_cuda(const at::Tensor& video_, at::IntArrayRef region, int64_t stride,
                                int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(video_.is_cuda(), "video: expected a CUDA tensor");
  TORCH_CHECK(video_.dim() == 5 && video_.is_floating_point(),
              "video: expected a floating (B, T, C, H, W) tensor");
  stnls::check_fold_args(ps, pt, dilation);
  const c10::cuda::CUDAGuard guard(video_.device());
  const at::Tensor video = video_.contiguous();
  const FDims d{video.size(0), video.size(1), video.size(2), video.size(3), video.size(4),
                static_cast<int>(ps), static_cast<int>(pt), static_cast<int>(dilation)};
  const Grid g = stnls::make_grid(region, stride, d.T, d.H, d.W);
  auto out = at::empty({d.B, g.Q, pt * d.C * ps * ps}, video.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "iunfold_patches_cuda", [&] {
    iunfold_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        video.data_ptr<scalar_t>(), g, d, total, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor ifold_patches_cuda(const at::Tensor& patches_, at::IntArrayRef region, int64_t stride,
                              int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt,
                              int64_t dilation) {
  TORCH_CHECK(patches_.is_cuda(), "patches: expected a CUDA tensor");
  TORCH_CHECK(patches_.dim() == 3 && patches_.is_floating_point(),
              "patches: expected a floating (B, Q, pt*C*ps*ps) tensor");
  stnls::check_fold_args(ps, pt, dilation);
  TORCH_CHECK(T >= 1 && H >= 1 && W >= 1, "T, H, W: expected >= 1");
  const c10::cuda::CUDAGuard guard(patches_.device());
  const Grid g = stnls::make_grid(region, stride, T, H, W);
  const at::Tensor patches = patches_.contiguous();
  const int64_t B = patches.size(0), L = patches.size(2);
  TORCH_CHECK(patches.size(1) == g.Q, "patches: expected Q=", g.Q, " for this region, got ",
              patches.size(1));
  TORCH_CHECK(L % (pt * ps * ps) == 0, "patches: size(2)=", L, " is not a multiple of pt*ps*ps");
  const FDims d{B, T, L / (pt * ps * ps), H, W, static_cast<int>(ps), static_cast<int>(pt),
                static_cast<int>(dilation)};
  auto out = at::zeros({B, T, d.C, H, W}, patches.options());
  if (out.numel() == 0 || g.Q == 0) return out;
  const Box bx = stnls::fold_box(g, T, H, W, ps, pt, dilation);
  if (bx.t1 <= bx.t0 || bx.y1 <= bx.y0 || bx.x1 <= bx.x0) return out;
  const int64_t total = B * (bx.t1 - bx.t0) * d.C * (bx.y1 - bx.y0) * (bx.x1 - bx.x0);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                  "ifold_patches_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ifold_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        patches.data_ptr<scalar_t>(), g, bx, d, total, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("iunfold_patches", &iunfold_patches_cuda);
  m.impl("ifold_patches", &ifold_patches_cuda);
}
