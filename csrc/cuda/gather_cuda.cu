// CUDA kernels of gather / scatter.
//
// Gathers (gather, the gradient w.r.t. the patches of scatter) run one thread per output
// element. Scatters (scatter, gather's gradient w.r.t. the video, aggregate) run one thread per
// patch element and add atomically (gpuAtomicAdd) into float32/float64 buffers, so their results may
// differ run to run in the last bits. Reductions over a patch (the gradients w.r.t. positions
// and weights) run one thread per patch. The arithmetic is that of csrc/include/patch_io.h,
// shared with the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../include/aggregate_grid.h"
#include "../include/checks.h"
#include "../include/dispatch.h"
#include "../include/gather_args.h"
#include "../include/grid.h"
#include "../include/mirror.h"
#include "../include/patch_io.h"

namespace {

using stnls::Corners;
using stnls::GDims;
using stnls::Pos;

constexpr int kThreads = 256;       // element-wise kernels
constexpr int kPatchThreads = 128;  // one thread per patch

unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

struct AtomicAdd {
  template <typename T>
  __host__ __device__ __forceinline__ void operator()(T* p, T v) const {
#ifdef __CUDA_ARCH__
    gpuAtomicAdd(p, v);
#else
    *p += v;
#endif
  }
};

// Element n of the patches (B, nh, Q, K, pt, Ch, ps, ps): its patch, head, batch item and
// (dt, c, a, b) inside the patch.
struct Elem {
  int64_t patch, b, h, c;
  int dt, a, bb;
};

// Groups of 2^log2g threads (up to a warp) take one patch each and walk its elements: a warp
// reads and writes consecutive elements, and no thread divides 64-bit numbers (an element-
// wise index split into (patch, dt, c, a, b) cost several 64-bit divisions per element).
template <typename F>
__device__ __forceinline__ void for_patch_elems(const GDims& d, int log2g, F&& f) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t patch = g >> log2g;
  if (patch >= d.patches()) return;
  const int G = 1 << log2g, lane = static_cast<int>(g & (G - 1));
  const int64_t bh = d.B * d.nh == 1 ? 0 : patch / (d.Q * d.K);
  Elem e;
  e.patch = patch;
  e.h = bh % d.nh;
  e.b = bh / d.nh;
  const int psz = static_cast<int>(d.psz()), ps = d.ps, Ch = static_cast<int>(d.Ch);
  for (int m = lane; m < psz; m += G) {
    int r = m;
    e.bb = r % ps;
    r /= ps;
    e.a = r % ps;
    r /= ps;
    e.c = r % Ch;
    e.dt = r / Ch;
    f(patch * psz + m, e);
  }
}

// Launch size of for_patch_elems: the group size and the number of blocks.
int group_log2(const GDims& d) {
  TORCH_CHECK(d.psz() < (int64_t(1) << 30), "patches too large: pt * C * ps * ps = ", d.psz());
  int l = 0;
  while ((int64_t(1) << l) < std::min<int64_t>(d.psz(), 32)) ++l;
  return l;
}

unsigned elem_blocks(const GDims& d, int log2g) { return blocks_for(d.patches() << log2g, kThreads); }

template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void gather_kernel(const scalar_t* __restrict__ video, const pos_t* __restrict__ pos,
                              GDims d, int log2g, scalar_t* __restrict__ out) {
  for_patch_elems(d, log2g, [&](int64_t n, const Elem& e) {
    const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + e.patch * 3, false);
    const Corners k = stnls::corners(p, e.dt, e.a, e.bb, d.T, d.H, d.W, d.ps, d.dil);
    out[n] = static_cast<scalar_t>(
        stnls::bilinear(video + e.b * d.video(), d.C, e.h * d.Ch + e.c, k, p));
  });
}

// Adds weight * patch into out (B, T, H, W, C) and, from the c == 0 threads, the weights into
// cnt (B, T, H, W, nh). wts and cnt may be null.
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ pat, const pos_t* __restrict__ pos,
                               const acc_t* __restrict__ wts, GDims d, int log2g,
                               acc_t* __restrict__ out, acc_t* __restrict__ cnt) {
  for_patch_elems(d, log2g, [&](int64_t n, const Elem& e) {
    const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + e.patch * 3, false);
    const Corners k = stnls::corners(p, e.dt, e.a, e.bb, d.T, d.H, d.W, d.ps, d.dil);
    const acc_t w = wts == nullptr ? acc_t(1) : wts[e.patch];
    acc_t g = static_cast<acc_t>(pat[n]);
    if (wts != nullptr) g = g * w;
    stnls::bilinear_add(out + e.b * d.video(), d.C, e.h * d.Ch + e.c, k, p, g, AtomicAdd{});
    if (cnt != nullptr && e.c == 0)
      stnls::bilinear_add(cnt + e.b * d.T * d.H * d.W * d.nh, d.nh, e.h, k, p, w, AtomicAdd{});
  });
}

// aggregate: patch element n read from the video at inds (rounded to the video's dtype, as
// gather stores it) and added, weighted, at at's position: scatter_kernel's additions without
// the patches in memory.
template <typename video_t, typename acc_t, typename pos_t>
__global__ void aggregate_kernel(const video_t* __restrict__ video, const pos_t* __restrict__ src,
                                 const pos_t* __restrict__ dst, const acc_t* __restrict__ wts,
                                 GDims d, int log2g, acc_t* __restrict__ out,
                                 acc_t* __restrict__ cnt) {
  for_patch_elems(d, log2g, [&](int64_t, const Elem& e) {
    const Pos<acc_t> ps = stnls::load_pos<acc_t>(src + e.patch * 3, false);
    const Corners ks = stnls::corners(ps, e.dt, e.a, e.bb, d.T, d.H, d.W, d.ps, d.dil);
    const acc_t v = static_cast<acc_t>(static_cast<video_t>(
        stnls::bilinear(video + e.b * d.video(), d.C, e.h * d.Ch + e.c, ks, ps)));
    const Pos<acc_t> p = stnls::load_pos<acc_t>(dst + e.patch * 3, false);
    const Corners k = stnls::corners(p, e.dt, e.a, e.bb, d.T, d.H, d.W, d.ps, d.dil);
    const acc_t w = wts == nullptr ? acc_t(1) : wts[e.patch];
    stnls::bilinear_add(out + e.b * d.video(), d.C, e.h * d.Ch + e.c, k, p,
                        wts == nullptr ? v : v * w, AtomicAdd{});
    if (e.c == 0)
      stnls::bilinear_add(cnt + e.b * d.T * d.H * d.W * d.nh, d.nh, e.h, k, p, w, AtomicAdd{});
  });
}

// aggregate at the query grid in fold form (aggregate_grid.h): one thread per output pixel of
// the box the grid's patches reach, head and group of up to kGridChunk channels of the head,
// x fastest, so that a warp reads the neighbours of neighbouring queries. Plain stores: no
// atomics, the same bits on every run. Three blocks per SM (80 registers, some spilled): 23%
// faster than the compiler's 110 registers on the H200; four gave no more. Reading inds and
// weights transposed to (K, Q) planes, so that a warp's loads are whole lines, gained nothing
// (-6% to +8%) for a temporary copy of them, so they are read as they are.
constexpr int kGridChunk = 4;

template <typename video_t, typename acc_t, typename pos_t>
__global__ void __launch_bounds__(kThreads, 3) aggregate_grid_kernel(
    const video_t* __restrict__ video, const pos_t* __restrict__ pos,
    const acc_t* __restrict__ wts, stnls::GridDims g, const int64_t* __restrict__ maps,
    int64_t ty, int64_t tx, int64_t nchunks, stnls::Box box, stnls::Box ob,
    acc_t* __restrict__ out, acc_t* __restrict__ cnt) {
  const GDims& d = g.d;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bw = box.x1 - box.x0, bh = box.y1 - box.y0, nbox = (box.t1 - box.t0) * bh * bw;
  if (n >= d.B * d.nh * nchunks * nbox) return;
  const int64_t i = n % nbox, rest = n / nbox;
  const int64_t x = box.x0 + i % bw, y = box.y0 + (i / bw) % bh, t = box.t0 + i / (bw * bh);
  const int64_t chunk = rest % nchunks, h = (rest / nchunks) % d.nh, b = rest / (nchunks * d.nh);
  const int64_t c0 = chunk * kGridChunk;
  const int nc = static_cast<int>(min(static_cast<int64_t>(kGridChunk), d.Ch - c0));
  acc_t acc[kGridChunk];
#pragma unroll
  for (int c = 0; c < kGridChunk; ++c) acc[c] = acc_t(0);
  acc_t w = acc_t(0);
  const video_t* vb = video + b * d.video();
  const stnls::NeighboursAoS<acc_t, pos_t> nb{pos, wts, (b * d.nh + h) * d.Q, d.K};
  stnls::grid_pixel<video_t, acc_t, kGridChunk>(vb, nb, wts != nullptr, g, maps, maps + ty,
                                                maps + tx, t, y, x, h * d.Ch + c0, nc, acc, &w);
  // the output holds the pixels of box ob
  const int64_t oH = ob.y1 - ob.y0, oW = ob.x1 - ob.x0;
  const int64_t o = ((b * (ob.t1 - ob.t0) + t - ob.t0) * oH + y - ob.y0) * oW + x - ob.x0;
#pragma unroll
  for (int c = 0; c < kGridChunk; ++c)
    if (c < nc) out[o * d.C + h * d.Ch + c0 + c] = acc[c];
  if (chunk == 0) cnt[o * d.nh + h] = w;
}

// The same sums for float32 videos of at most 4 channels and one head, float32 positions, and
// sizes whose flat indices fit int32 (aggregate_grid_cuda checks): the video is read from a
// copy padded to 4 channels, so a bilinear tap is one 16-byte load instead of C loads, all
// four taps of a neighbour's pixel are loaded at once, and the index arithmetic is 32-bit.
// The terms and their order are those of grid_pixel, and each interpolation is bilinear's
// expression, so a pixel's sum is computed as aggregate_grid_kernel computes it. Packed: the
// positions and weights are read from (B, K, Q) planes of float4 (t, y, x, weight) that the
// launcher writes, so that a warp, whose threads take consecutive queries, reads whole lines
// (the (B, Q, K, 3) positions put its 32 loads 12 K bytes apart). NAPARI_STNLS_CUDA_AGG4:
// see grid4_variant.
__device__ __forceinline__ int reflect32(int i, int n) {
  if (i >= 0 && i < n) return i;
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  int m = i % period;
  if (m < 0) m += period;
  return m >= n ? period - m : m;
}

__device__ __forceinline__ float lerp4(float v00, float v01, float v10, float v11, bool sx, bool sy,
                                       float wx0, float wx1, float wy0, float wy1) {
  // bilinear's expression (patch_io.h), on values already loaded
  float r0 = v00;
  if (sx) r0 = wx0 * r0 + wx1 * v01;
  if (!sy) return r0;
  float r1 = v10;
  if (sx) r1 = wx0 * r1 + wx1 * v11;
  return wy0 * r0 + wy1 * r1;
}

// One (pixel, neighbour) term of the grid sums: acc[0..3] += the bilinear read of the taps
// (v00, v01; v10, v11), times w where weighted, and acc[4] += w. aggregate_grid4_kernel and
// aggregate_grid_rows_kernel both add through it, so that their sums are the same bits.
__device__ __forceinline__ void add_term4(float* acc, float4 v00, float4 v01, float4 v10,
                                          float4 v11, bool sx, bool sy, float wx0, float fx,
                                          float wy0, float fy, float w, bool weighted) {
  const float s0 = lerp4(v00.x, v01.x, v10.x, v11.x, sx, sy, wx0, fx, wy0, fy);
  const float s1 = lerp4(v00.y, v01.y, v10.y, v11.y, sx, sy, wx0, fx, wy0, fy);
  const float s2 = lerp4(v00.z, v01.z, v10.z, v11.z, sx, sy, wx0, fx, wy0, fy);
  const float s3 = lerp4(v00.w, v01.w, v10.w, v11.w, sx, sy, wx0, fx, wy0, fy);
  if (weighted) {
    acc[0] += s0 * w;
    acc[1] += s1 * w;
    acc[2] += s2 * w;
    acc[3] += s3 * w;
  } else {
    acc[0] += s0;
    acc[1] += s1;
    acc[2] += s2;
    acc[3] += s3;
  }
  acc[4] += w;
}

template <bool Packed>
__global__ void __launch_bounds__(kThreads, 4) aggregate_grid4_kernel(
    const float4* __restrict__ video, const float* __restrict__ pos, const float* __restrict__ wts,
    const float4* __restrict__ packed,
    stnls::GridDims g, const int64_t* __restrict__ maps, int64_t ty, int64_t tx, stnls::Box box,
    stnls::Box ob, bool weighted, float* __restrict__ out, float* __restrict__ cnt) {
  const GDims& d = g.d;
  const int bw = static_cast<int>(box.x1 - box.x0), bh = static_cast<int>(box.y1 - box.y0);
  const int nbox = static_cast<int>(box.t1 - box.t0) * bh * bw;
  const int n = static_cast<int>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= static_cast<int>(d.B) * nbox) return;
  const int i = n % nbox, b = n / nbox;
  const int x = static_cast<int>(box.x0) + i % bw, y = static_cast<int>(box.y0) + (i / bw) % bh;
  const int t = static_cast<int>(box.t0) + i / (bw * bh);
  const int T = static_cast<int>(d.T), H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const int ps = d.ps, pt = d.pt, r = ps / 2, dil = d.dil, K = static_cast<int>(d.K);
  const int nH = static_cast<int>(g.nH), nW = static_cast<int>(g.nW), nc = static_cast<int>(d.C);
  const float4* vb = video + static_cast<int64_t>(b) * T * H * W;
  const int Q = static_cast<int>(d.Q), qbase = b * Q;
  const int64_t* tmap = maps;
  const int64_t* ymap = maps + ty;
  const int64_t* xmap = maps + tx;
  const int64_t* te = tmap + T + 1;
  const int64_t* ye = ymap + H + 1;
  const int64_t* xe = xmap + W + 1;
  float acc[5] = {0.f, 0.f, 0.f, 0.f, 0.f};  // 4 channels, then the weights
  const int et1 = static_cast<int>(tmap[t + 1]), ey1 = static_cast<int>(ymap[y + 1]);
  const int ex0 = static_cast<int>(xmap[x]), ex1 = static_cast<int>(xmap[x + 1]);
  for (int et = static_cast<int>(tmap[t]); et < et1; ++et) {
    const int ct = static_cast<int>(te[et]), it = ct / pt, dt = ct - it * pt;
    for (int ey = static_cast<int>(ymap[y]); ey < ey1; ++ey) {
      const int cy = static_cast<int>(ye[ey]), iy = cy / ps, a = cy - iy * ps;
      const int row = (it * nH + iy) * nW;
      for (int ex = ex0; ex < ex1; ++ex) {
        const int cx = static_cast<int>(xe[ex]), ix = cx / ps, bb = cx - ix * ps;
        const int nq = (qbase + row + ix) * K;
        for (int k = 0; k < K; ++k) {
          float tv, yv, xv, w;
          if constexpr (Packed) {  // (B, K, Q) planes of (t, y, x, weight): a warp reads whole lines
            const float4 pw = __ldg(packed + (b * K + k) * Q + row + ix);
            tv = pw.x, yv = pw.y, xv = pw.z, w = pw.w;
          } else {
            const float* p = pos + (nq + k) * 3;
            tv = p[0], yv = p[1], xv = p[2];
            w = wts == nullptr ? 1.f : wts[nq + k];
          }
          const int ft = static_cast<int>(floorf(tv + 0.5f));
          const float yf = floorf(yv), xf = floorf(xv);
          const float fy = yv - yf, fx = xv - xf;
          const int ya = static_cast<int>(yf) + dil * (a - r), xb = static_cast<int>(xf) + dil * (bb - r);
          const int f = reflect32(ft + dt, T) * H;
          const int r0 = (f + reflect32(ya, H)) * W, r1 = (f + reflect32(ya + 1, H)) * W;
          const int c0 = reflect32(xb, W), c1 = reflect32(xb + 1, W);
          const float4 v00 = __ldg(vb + r0 + c0), v01 = __ldg(vb + r0 + c1);
          const float4 v10 = __ldg(vb + r1 + c0), v11 = __ldg(vb + r1 + c1);
          const bool sy = fy != 0.f, sx = fx != 0.f;
          add_term4(acc, v00, v01, v10, v11, sx, sy, 1.f - fx, fx, 1.f - fy, fy, w, weighted);
        }
      }
    }
  }
  const int oH = static_cast<int>(ob.y1 - ob.y0), oW = static_cast<int>(ob.x1 - ob.x0);
  const int64_t o = ((static_cast<int64_t>(b) * (ob.t1 - ob.t0) + t - ob.t0) * oH + y - ob.y0) * oW + x - ob.x0;
  float* op = out + o * nc;
  op[0] = acc[0];
  if (nc > 1) op[1] = acc[1];
  if (nc > 2) op[2] = acc[2];
  if (nc > 3) op[3] = acc[3];
  cnt[o] = acc[4];
}

// The same sums, for the pixels no mirrored patch pixel reaches, with each neighbour's
// position work shared by the PS pixels of its patch column: one thread per output column x of
// a band of rows, walking the grid's query rows down. For query row iy it takes the queries
// ix = x - r .. x + r whose patches cover column x, last to first (b = PS - 1 .. 0: ix
// ascending), and for each neighbour k reads the packed (t, y, x, weight) once, sets up the
// bilinear read once, and adds its patch column's PS values into the PS rows that query row
// covers, each row's running sum in registers (PS rows, rolled: slot (iy + a) % PS), each tap
// row loaded once for the two interpolations that use it. A pixel row is written when the last
// query row that reaches it is done. The terms of a pixel, their expressions and their order
// (query rows, then columns, ascending, then k) are aggregate_grid4_kernel's, whose map lists
// them in that order wherever nothing is mirrored: the same bits. For pt = 1, stride 1,
// dilation 1; aggregate_grid_cuda sends the border strips (mirrored entries) to
// aggregate_grid4_kernel.
constexpr int kRowsThreads = 64;  // output columns a block
constexpr int kRowsBand = 32;     // output rows a block

template <int PS>
__global__ void __launch_bounds__(kRowsThreads) aggregate_grid_rows_kernel(
    const float4* __restrict__ video, const float4* __restrict__ packed, stnls::GridDims g,
    int64_t gt0, int64_t gy0, int64_t gx0, stnls::Box inner, stnls::Box ob, bool weighted,
    float* __restrict__ out, float* __restrict__ cnt) {
  constexpr int r = PS / 2;
  const GDims& d = g.d;
  const int T = static_cast<int>(d.T), H = static_cast<int>(d.H), W = static_cast<int>(d.W);
  const int K = static_cast<int>(d.K), nc = static_cast<int>(d.C);
  const int nH = static_cast<int>(g.nH), nW = static_cast<int>(g.nW), Q = static_cast<int>(d.Q);
  const int nt = static_cast<int>(inner.t1 - inner.t0);
  const int b = static_cast<int>(blockIdx.z) / nt;
  const int t = static_cast<int>(inner.t0) + static_cast<int>(blockIdx.z) % nt;
  const int x = static_cast<int>(inner.x0) + static_cast<int>(blockIdx.x) * kRowsThreads + threadIdx.x;
  if (x >= inner.x1) return;
  const int Y0 = static_cast<int>(inner.y0) + static_cast<int>(blockIdx.y) * kRowsBand;
  const int Y1 = min(Y0 + kRowsBand, static_cast<int>(inner.y1));
  const int it = t - static_cast<int>(gt0), qy0 = static_cast<int>(gy0), qx0 = static_cast<int>(gx0);
  const float4* vb = video + static_cast<int64_t>(b) * T * H * W;
  const float4* pb = packed + static_cast<int64_t>(b) * K * Q;
  const int oH = static_cast<int>(ob.y1 - ob.y0), oW = static_cast<int>(ob.x1 - ob.x0);
  const int64_t obase = (static_cast<int64_t>(b) * (ob.t1 - ob.t0) + t - ob.t0) * oH;
  // query row iy reaches pixel rows qy0 + iy - r .. qy0 + iy + r
  const int iy_start = Y0 - qy0 - r, nrows = Y1 - Y0 + 2 * r;
  float acc[PS][5];
#pragma unroll
  for (int u = 0; u < PS; ++u)
#pragma unroll
    for (int c = 0; c < 5; ++c) acc[u][c] = 0.f;
  for (int jb = 0; jb < nrows; jb += PS) {
#pragma unroll
    for (int u = 0; u < PS; ++u) {
      const int j = jb + u;
      if (j >= nrows) break;
      const int iy = iy_start + j;
      if (iy >= 0 && iy < nH) {
        const int row = (it * nH + iy) * nW;
        for (int bb = PS - 1; bb >= 0; --bb) {
          const int ix = x - qx0 - (bb - r);
          if (ix < 0 || ix >= nW) continue;
          for (int k = 0; k < K; ++k) {
            const float4 pw = __ldg(pb + k * Q + row + ix);
            const float w = pw.w;
            const int ft = static_cast<int>(floorf(pw.x + 0.5f));
            const float yf = floorf(pw.y), xf = floorf(pw.z);
            const float fy = pw.y - yf, fx = pw.z - xf;
            const int xb = static_cast<int>(xf) + (bb - r);
            const int f = reflect32(ft, T) * H;
            const int c0 = reflect32(xb, W), c1 = reflect32(xb + 1, W);
            const bool sy = fy != 0.f, sx = fx != 0.f;
            const float wy0 = 1.f - fy, wx0 = 1.f - fx;
            const int ya = static_cast<int>(yf) - r;  // the tap row of a = 0
            int rb = (f + reflect32(ya, H)) * W;
            float4 p0 = __ldg(vb + rb + c0), p1 = sx ? __ldg(vb + rb + c1) : p0;
#pragma unroll
            for (int a = 0; a < PS; ++a) {
              float4 q0 = p0, q1 = p1;  // row ya + a + 1: this a's second tap row, the next a's first
              if (sy || a + 1 < PS) {
                rb = (f + reflect32(ya + a + 1, H)) * W;
                q0 = __ldg(vb + rb + c0);
                q1 = sx ? __ldg(vb + rb + c1) : q0;
              }
              add_term4(acc[(u + a) % PS], p0, p1, q0, q1, sx, sy, wx0, fx, wy0, fy, w, weighted);
              p0 = q0;
              p1 = q1;
            }
          }
        }
      }
      // pixel row qy0 + iy - r (slot u) is complete: no later query row reaches it
      const int y = qy0 + iy - r;
      if (y >= Y0 && y < Y1) {
        const int64_t o = (obase + y - ob.y0) * oW + x - ob.x0;
        float* op = out + o * nc;
        op[0] = acc[u][0];
        if (nc > 1) op[1] = acc[u][1];
        if (nc > 2) op[2] = acc[u][2];
        if (nc > 3) op[3] = acc[u][3];
        cnt[o] = acc[u][4];
      }
#pragma unroll
      for (int c = 0; c < 5; ++c) acc[u][c] = 0.f;
    }
  }
}

// One thread per patch: gradient of sum(grad * patch) w.r.t. the patch's (y, x).
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void gather_pos_grad_kernel(const scalar_t* __restrict__ video,
                                       const scalar_t* __restrict__ grad,
                                       const pos_t* __restrict__ pos, GDims d,
                                       pos_t* __restrict__ gpos) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= d.patches()) return;
  const int64_t h = (n / (d.Q * d.K)) % d.nh, b = n / (d.nh * d.Q * d.K);
  const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, true);
  const scalar_t* vb = video + b * d.video();
  const scalar_t* gn = grad + n * d.psz();
  acc_t gy = 0, gx = 0;
  int64_t m = 0;
  for (int dt = 0; dt < d.pt; ++dt)
    for (int64_t c = h * d.Ch; c < (h + 1) * d.Ch; ++c)
      for (int a = 0; a < d.ps; ++a)
        for (int bb = 0; bb < d.ps; ++bb, ++m) {
          const Corners k = stnls::corners(p, dt, a, bb, d.T, d.H, d.W, d.ps, d.dil);
          acc_t dy, dx;
          stnls::bilinear_grad(vb, d.C, c, k, p, &dy, &dx);
          const acc_t gg = static_cast<acc_t>(gn[m]);
          gy += gg * dy;
          gx += gg * dx;
        }
  gpos[n * 3 + 1] = static_cast<pos_t>(gy);
  gpos[n * 3 + 2] = static_cast<pos_t>(gx);
}

// Gradient w.r.t. the patches of scatter: weight * (grad_video read like gather).
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void scatter_patch_grad_kernel(const scalar_t* __restrict__ gvid,
                                          const pos_t* __restrict__ pos,
                                          const acc_t* __restrict__ wts, GDims d, int log2g,
                                          scalar_t* __restrict__ gpat) {
  for_patch_elems(d, log2g, [&](int64_t n, const Elem& e) {
    const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + e.patch * 3, false);
    const Corners k = stnls::corners(p, e.dt, e.a, e.bb, d.T, d.H, d.W, d.ps, d.dil);
    const acc_t G = stnls::bilinear(gvid + e.b * d.video(), d.C, e.h * d.Ch + e.c, k, p);
    gpat[n] = static_cast<scalar_t>(wts == nullptr ? G : G * wts[e.patch]);
  });
}

// One thread per patch: gradients of scatter w.r.t. the weight and the position (y, x).
// gvid / gcnt (the gradients of the two outputs) may be null.
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void scatter_reduce_grad_kernel(const scalar_t* __restrict__ gvid,
                                           const scalar_t* __restrict__ gcnt,
                                           const scalar_t* __restrict__ pat,
                                           const pos_t* __restrict__ pos,
                                           const acc_t* __restrict__ wts, GDims d, bool need_w,
                                           bool need_i, acc_t* __restrict__ gw,
                                           pos_t* __restrict__ gpos) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= d.patches()) return;
  const int64_t h = (n / (d.Q * d.K)) % d.nh, b = n / (d.nh * d.Q * d.K);
  const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, need_i);
  const acc_t wn = wts == nullptr ? acc_t(1) : wts[n];
  acc_t sw = 0, gy = 0, gx = 0;
  if (gvid != nullptr) {
    const scalar_t* gvb = gvid + b * d.video();
    const scalar_t* pn = pat + n * d.psz();
    int64_t m = 0;
    for (int dt = 0; dt < d.pt; ++dt)
      for (int64_t c = h * d.Ch; c < (h + 1) * d.Ch; ++c)
        for (int a = 0; a < d.ps; ++a)
          for (int bb = 0; bb < d.ps; ++bb, ++m) {
            const Corners k = stnls::corners(p, dt, a, bb, d.T, d.H, d.W, d.ps, d.dil);
            const acc_t pv = static_cast<acc_t>(pn[m]);
            if (need_w) sw += pv * stnls::bilinear(gvb, d.C, c, k, p);
            if (need_i) {
              acc_t dy, dx;
              stnls::bilinear_grad(gvb, d.C, c, k, p, &dy, &dx);
              const acc_t pw = pv * wn;
              gy += pw * dy;
              gx += pw * dx;
            }
          }
  }
  if (gcnt != nullptr) {
    const scalar_t* gcb = gcnt + b * d.T * d.H * d.W * d.nh;
    for (int dt = 0; dt < d.pt; ++dt)
      for (int a = 0; a < d.ps; ++a)
        for (int bb = 0; bb < d.ps; ++bb) {
          const Corners k = stnls::corners(p, dt, a, bb, d.T, d.H, d.W, d.ps, d.dil);
          if (need_w) sw += stnls::bilinear(gcb, d.nh, h, k, p);
          if (need_i) {
            acc_t dy, dx;
            stnls::bilinear_grad(gcb, d.nh, h, k, p, &dy, &dx);
            gy += wn * dy;
            gx += wn * dx;
          }
        }
  }
  if (need_w) gw[n] = sw;
  if constexpr (std::is_floating_point<pos_t>::value) {
    if (need_i) {
      gpos[n * 3 + 1] = static_cast<pos_t>(gy);
      gpos[n * 3 + 2] = static_cast<pos_t>(gx);
    }
  }
}

at::Tensor gather_patches_cuda(const at::Tensor& video, const at::Tensor& inds_, int64_t ps,
                               int64_t pt, int64_t dilation) {
  stnls::check_video(video, "video");
  TORCH_CHECK(video.is_cuda(), "video: expected a CUDA tensor");
  stnls::check_patch_args(ps, pt, dilation);
  stnls::check_device(inds_, video, "inds");
  const c10::cuda::CUDAGuard guard(video.device());
  const at::Tensor inds = stnls::check_inds(inds_, video.size(0));
  const GDims d = stnls::dims_from(video, inds, ps, pt, dilation);
  auto out = at::empty({d.B, d.nh, d.Q, d.K, pt, d.Ch, ps, ps}, video.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "gather_patches_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
      using pos_t = decltype(tag);
      const int lg = group_log2(d);
      gather_kernel<video_t, acc_t, pos_t><<<elem_blocks(d, lg), kThreads, 0, stream>>>(
          video.data_ptr<video_t>(), inds.data_ptr<pos_t>(), d, lg, out.data_ptr<video_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_patches_backward_cuda(
    const at::Tensor& grad, const at::Tensor& video, const at::Tensor& inds_, int64_t ps,
    int64_t pt, int64_t dilation, std::array<bool, 2> needs) {
  stnls::check_video(video, "video");
  TORCH_CHECK(video.is_cuda(), "video: expected a CUDA tensor");
  stnls::check_patch_args(ps, pt, dilation);
  stnls::check_device(inds_, video, "inds");
  stnls::check_device(grad, video, "grad");
  const c10::cuda::CUDAGuard guard(video.device());
  const at::Tensor inds = stnls::check_inds(inds_, video.size(0));
  const GDims d = stnls::dims_from(video, inds, ps, pt, dilation);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({d.B, d.nh, d.Q, d.K, pt, d.Ch, ps, ps}),
              "grad: expected the shape of the patches, got ", stnls::shape_str(grad.sizes()));
  const auto acc = stnls::acc_type(video.scalar_type());
  const bool sub = inds.is_floating_point();
  auto gv = at::zeros(video.sizes(), video.options().dtype(acc));
  auto gi = at::zeros(inds.sizes(), inds.options().dtype(sub ? inds.scalar_type() : acc));
  const bool need_v = needs[0], need_i = needs[1] && sub;
  const int64_t total = grad.numel();
  if (total == 0 || (!need_v && !need_i)) return {gv.to(video.scalar_type()), gi};
  const at::Tensor g = grad.to(video.scalar_type()).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "gather_patches_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
      using pos_t = decltype(tag);
      if (need_v) {
        const int lg = group_log2(d);
        scatter_kernel<video_t, acc_t, pos_t><<<elem_blocks(d, lg), kThreads, 0, stream>>>(
            g.data_ptr<video_t>(), inds.data_ptr<pos_t>(), nullptr, d, lg,
            gv.data_ptr<acc_t>(), nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if constexpr (std::is_floating_point<pos_t>::value) {
        if (need_i) {
          gather_pos_grad_kernel<video_t, acc_t, pos_t>
              <<<blocks_for(d.patches(), kPatchThreads), kPatchThreads, 0, stream>>>(
                  video.data_ptr<video_t>(), g.data_ptr<video_t>(), inds.data_ptr<pos_t>(), d,
                  gi.data_ptr<pos_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  });
  return {gv.to(video.scalar_type()), gi};
}

std::tuple<at::Tensor, at::Tensor> scatter_patches_cuda(const at::Tensor& patches,
                                                        const at::Tensor& inds_,
                                                        const std::optional<at::Tensor>& weights,
                                                        int64_t T, int64_t H, int64_t W,
                                                        int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(patches.is_cuda(), "patches: expected a CUDA tensor");
  stnls::check_device(inds_, patches, "inds");
  if (weights.has_value() && weights->defined()) stnls::check_device(*weights, patches, "weights");
  const c10::cuda::CUDAGuard guard(patches.device());
  const at::Tensor inds = stnls::check_inds(inds_, patches.dim() > 0 ? patches.size(0) : 0);
  const GDims d = stnls::scatter_dims(patches, inds, T, H, W, ps, pt, dilation);
  const auto acc = stnls::acc_type(patches.scalar_type());
  auto out = at::zeros({d.B, T, H, W, d.C}, patches.options().dtype(acc));
  auto cnt = at::zeros({d.B, T, H, W, d.nh}, patches.options().dtype(acc));
  const auto w = stnls::weights_acc(weights, d, acc);
  const int64_t total = patches.numel();
  if (total > 0) {
    const at::Tensor pat = patches.contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                    "scatter_patches_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using patch_t = scalar_t;
      stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        const int lg = group_log2(d);
        scatter_kernel<patch_t, acc_t, pos_t><<<elem_blocks(d, lg), kThreads, 0, stream>>>(
            pat.data_ptr<patch_t>(), inds.data_ptr<pos_t>(),
            w.has_value() ? w->data_ptr<acc_t>() : nullptr, d, lg, out.data_ptr<acc_t>(),
            cnt.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {out.to(patches.scalar_type()), cnt.to(patches.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scatter_patches_backward_cuda(
    const std::optional<at::Tensor>& grad_video, const std::optional<at::Tensor>& grad_counts,
    const at::Tensor& patches, const at::Tensor& inds_, const std::optional<at::Tensor>& weights,
    int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt, int64_t dilation,
    std::array<bool, 3> needs) {
  TORCH_CHECK(patches.is_cuda(), "patches: expected a CUDA tensor");
  stnls::check_device(inds_, patches, "inds");
  if (weights.has_value() && weights->defined()) stnls::check_device(*weights, patches, "weights");
  const c10::cuda::CUDAGuard guard(patches.device());
  const at::Tensor inds = stnls::check_inds(inds_, patches.dim() > 0 ? patches.size(0) : 0);
  const GDims d = stnls::scatter_dims(patches, inds, T, H, W, ps, pt, dilation);
  const auto acc = stnls::acc_type(patches.scalar_type());
  const auto w = stnls::weights_acc(weights, d, acc);
  const bool sub = inds.is_floating_point();
  auto gp = at::zeros(patches.sizes(), patches.options());
  auto gw = at::zeros({d.B, d.nh, d.Q, d.K}, patches.options().dtype(acc));
  auto gi = at::zeros(inds.sizes(), inds.options().dtype(sub ? inds.scalar_type() : acc));
  const auto wdtype = w.has_value() ? weights->scalar_type() : patches.scalar_type();
  at::Tensor gvid, gcnt;
  if (grad_video.has_value() && grad_video->defined()) {
    stnls::check_device(*grad_video, patches, "grad_video");
    TORCH_CHECK(grad_video->sizes() == at::IntArrayRef({d.B, T, H, W, d.C}),
                "grad_video: expected (B, T, H, W, C), got ",
                stnls::shape_str(grad_video->sizes()));
    gvid = grad_video->to(patches.scalar_type()).contiguous();
  }
  if (grad_counts.has_value() && grad_counts->defined()) {
    stnls::check_device(*grad_counts, patches, "grad_counts");
    TORCH_CHECK(grad_counts->sizes() == at::IntArrayRef({d.B, T, H, W, d.nh}),
                "grad_counts: expected (B, T, H, W, nheads), got ",
                stnls::shape_str(grad_counts->sizes()));
    gcnt = grad_counts->to(patches.scalar_type()).contiguous();
  }
  const bool need_p = needs[0] && gvid.defined();
  const bool need_w = needs[1] && w.has_value() && (gvid.defined() || gcnt.defined());
  const bool need_i = needs[2] && sub && (gvid.defined() || gcnt.defined());
  const int64_t total = patches.numel();
  if (total > 0 && (need_p || need_w || need_i)) {
    const at::Tensor pat = patches.contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                    "scatter_patches_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using patch_t = scalar_t;
      const patch_t* gvd = gvid.defined() ? gvid.data_ptr<patch_t>() : nullptr;
      const patch_t* gcd = gcnt.defined() ? gcnt.data_ptr<patch_t>() : nullptr;
      const acc_t* wd = w.has_value() ? w->data_ptr<acc_t>() : nullptr;
      stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        if (need_p) {
          const int lg = group_log2(d);
          scatter_patch_grad_kernel<patch_t, acc_t, pos_t>
              <<<elem_blocks(d, lg), kThreads, 0, stream>>>(
                  gvd, inds.data_ptr<pos_t>(), wd, d, lg, gp.data_ptr<patch_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (need_w || need_i) {
          scatter_reduce_grad_kernel<patch_t, acc_t, pos_t>
              <<<blocks_for(d.patches(), kPatchThreads), kPatchThreads, 0, stream>>>(
                  gvd, gcd, pat.data_ptr<patch_t>(), inds.data_ptr<pos_t>(), wd, d, need_w,
                  need_i, gw.data_ptr<acc_t>(), need_i ? gi.data_ptr<pos_t>() : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
  return {gp, gw.to(wdtype), gi};
}

std::tuple<at::Tensor, at::Tensor> aggregate_patches_cuda(const at::Tensor& video,
                                                          const at::Tensor& inds,
                                                          const at::Tensor& at_pos,
                                                          const std::optional<at::Tensor>& weights,
                                                          int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(video.is_cuda(), "video: expected a CUDA tensor");
  stnls::check_device(inds, video, "inds");
  stnls::check_device(at_pos, video, "at");
  if (weights.has_value() && weights->defined()) stnls::check_device(*weights, video, "weights");
  const c10::cuda::CUDAGuard guard(video.device());
  auto a = stnls::aggregate_args(video, inds, at_pos, weights, ps, pt, dilation);
  const GDims& d = a.d;
  if (d.patches() > 0 && d.C > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                    "aggregate_patches_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      stnls::dispatch_pos(a.inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        const int lg = group_log2(d);
        aggregate_kernel<video_t, acc_t, pos_t><<<elem_blocks(d, lg), kThreads, 0, stream>>>(
            video.data_ptr<video_t>(), a.inds.data_ptr<pos_t>(), a.at.data_ptr<pos_t>(),
            a.w.has_value() ? a.w->data_ptr<acc_t>() : nullptr, d, lg, a.out.data_ptr<acc_t>(),
            a.cnt.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
}

// Whether aggregate_grid4_kernel takes the call (see there): 0 no, 1 reading inds and
// weights as they are, 2 from (B, K, Q) planes of packed (t, y, x, weight).
// NAPARI_STNLS_CUDA_AGG4=0|1|2 chooses; the default, kGrid4Default, is 2: on an H100 the
// aggregation of nl_means' 540p search (k 24) took 43 ms against 83 (=0) and 101 (=1), with
// sums within float rounding of the scalar kernel's (docs/benchmarks.md).
constexpr int kGrid4Default = 2;

int grid4_variant(const at::Tensor& video, const at::Tensor& inds, const GDims& d) {
  constexpr int64_t lim = std::numeric_limits<int32_t>::max();
  if (!(video.scalar_type() == at::kFloat && inds.scalar_type() == at::kFloat && d.nh == 1 &&
        d.C >= 1 && d.C <= 4 && d.B * d.T * d.H * d.W * 4 < lim && d.B * d.Q * d.K * 4 < lim))
    return 0;
  const char* e = std::getenv("NAPARI_STNLS_CUDA_AGG4");
  if (e != nullptr && e[0] >= '0' && e[0] <= '2') return e[0] - '0';
  return kGrid4Default;
}

// NAPARI_STNLS_CUDA_AGG_ROWS (read on every call): 1 sends the pixels no mirrored patch pixel
// reaches to aggregate_grid_rows_kernel where the call fits it; 2, for the tests, does that and
// leaves the border strips out (zeros), to show which pixels the kernel wrote; 0 or unset
// (the default until the kernel has run on a GPU) never.
int grid_rows_mode() {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_AGG_ROWS");
  return e != nullptr && (e[0] == '1' || e[0] == '2') ? e[0] - '0' : 0;
}

// The pixels of box that aggregate_grid_rows_kernel takes: where the call fits it (pt 1,
// stride 1, dilation 1, ps 3, 5 or 7) and `mode` (grid_rows_mode) is on, the rows and columns
// r + 1 .. n - 2 - r that no mirrored patch pixel reaches; else none (an empty box).
stnls::Box grid_rows_inner(const GDims& d, const stnls::Grid& g, const stnls::Box& box, int mode) {
  const bool fits = d.pt == 1 && g.stride == 1 && d.dil == 1 &&
                    (d.ps == 3 || d.ps == 5 || d.ps == 7) && d.B * (box.t1 - box.t0) <= 65535;
  if (mode == 0 || !fits)
    return {box.t0, box.t1, 0, 0, 0, 0};
  const int64_t r = d.ps / 2;
  return {box.t0, box.t1, std::max(box.y0, r + 1), std::min(box.y1, d.H - 1 - r),
          std::max(box.x0, r + 1), std::min(box.x1, d.W - 1 - r)};
}

template <typename F>
void dispatch_rows_ps(int ps, F&& f) {
  if (ps == 3) {
    f(std::integral_constant<int, 3>{});
  } else if (ps == 5) {
    f(std::integral_constant<int, 5>{});
  } else {
    f(std::integral_constant<int, 7>{});
  }
}

std::tuple<at::Tensor, at::Tensor> aggregate_grid_cuda(const at::Tensor& video,
                                                       const at::Tensor& inds,
                                                       const std::optional<at::Tensor>& weights,
                                                       at::IntArrayRef region, int64_t stride,
                                                       at::IntArrayRef out_box, int64_t ps,
                                                       int64_t pt, int64_t dilation) {
  TORCH_CHECK(video.is_cuda(), "video: expected a CUDA tensor");
  stnls::check_device(inds, video, "inds");
  if (weights.has_value() && weights->defined()) stnls::check_device(*weights, video, "weights");
  const c10::cuda::CUDAGuard guard(video.device());
  auto a = stnls::aggregate_grid_args(video, inds, weights, region, stride, out_box, ps, pt,
                                      dilation);
  const GDims& d = a.d;
  const stnls::Box& box = a.maps.box;
  const int64_t nbox = (box.t1 - box.t0) * (box.y1 - box.y0) * (box.x1 - box.x0);
  if (d.C > 0 && d.K > 0 && box.t1 > box.t0 && box.y1 > box.y0 && box.x1 > box.x0) {
    // the maps go to the device from pinned memory, with no host synchronisation (the caching
    // host allocator keeps the buffer until the copy is done)
    auto host = at::empty({static_cast<int64_t>(a.maps.all.size())},
                          at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::copy(a.maps.all.begin(), a.maps.all.end(), host.data_ptr<int64_t>());
    const auto maps = host.to(video.device(), /*non_blocking=*/true);
    const int64_t nchunks = (d.Ch + kGridChunk - 1) / kGridChunk;
    const int64_t total = d.B * d.nh * nchunks * nbox;  // the box's pixels; the rest stay 0
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (const int v4 = grid4_variant(video, a.inds, d); v4 > 0) {
      // the video padded to 4 channels (B, T, H, W, 4): one 16-byte load a bilinear tap
      const auto vid4 = at::constant_pad_nd(video, {0, 4 - d.C}).contiguous();
      const auto* vp = reinterpret_cast<const float4*>(vid4.data_ptr<float>());
      const float* wp = a.w.has_value() ? a.w->data_ptr<float>() : nullptr;
      const stnls::GridDims gd{d, a.maps.g.nH, a.maps.g.nW};
      const unsigned nb = blocks_for(d.B * nbox, kThreads);
      if (v4 == 2) {
        // positions and weights as (B, K, Q) planes of float4 (t, y, x, weight)
        const auto w = a.w.has_value() ? *a.w : at::ones({d.B, 1, d.Q, d.K}, a.inds.options());
        const auto pk = at::cat({a.inds, w.unsqueeze(-1)}, -1).permute({0, 1, 3, 2, 4}).contiguous();
        const auto* pkp = reinterpret_cast<const float4*>(pk.data_ptr<float>());
        auto grid4 = [&](const stnls::Box& part) {
          const int64_t n = (part.t1 - part.t0) * (part.y1 - part.y0) * (part.x1 - part.x0);
          if (part.y1 <= part.y0 || part.x1 <= part.x0 || n == 0) return;
          aggregate_grid4_kernel<true><<<blocks_for(d.B * n, kThreads), kThreads, 0, stream>>>(
              vp, nullptr, nullptr, pkp, gd, maps.data_ptr<int64_t>(), a.maps.ty, a.maps.tx, part,
              a.box, a.w.has_value(), a.out.data_ptr<float>(), a.cnt.data_ptr<float>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        const int rows_mode = grid_rows_mode();
        const stnls::Box in = grid_rows_inner(d, a.maps.g, box, rows_mode);
        if (in.y1 > in.y0 && in.x1 > in.x0) {
          // the pixels no mirrored patch pixel reaches, then the border strips around them
          const dim3 rb(static_cast<unsigned>((in.x1 - in.x0 + kRowsThreads - 1) / kRowsThreads),
                        static_cast<unsigned>((in.y1 - in.y0 + kRowsBand - 1) / kRowsBand),
                        static_cast<unsigned>(d.B * (in.t1 - in.t0)));
          dispatch_rows_ps(d.ps, [&](auto psv) {
            aggregate_grid_rows_kernel<decltype(psv)::value><<<rb, kRowsThreads, 0, stream>>>(
                vp, pkp, gd, a.maps.g.t0, a.maps.g.y0, a.maps.g.x0, in, a.box, a.w.has_value(),
                a.out.data_ptr<float>(), a.cnt.data_ptr<float>());
          });
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (rows_mode == 2) return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
          grid4({box.t0, box.t1, box.y0, in.y0, box.x0, box.x1});
          grid4({box.t0, box.t1, in.y1, box.y1, box.x0, box.x1});
          grid4({box.t0, box.t1, in.y0, in.y1, box.x0, in.x0});
          grid4({box.t0, box.t1, in.y0, in.y1, in.x1, box.x1});
        } else {
          grid4(box);
        }
        return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
      } else {
        aggregate_grid4_kernel<false><<<nb, kThreads, 0, stream>>>(
            vp, a.inds.data_ptr<float>(), wp, nullptr, gd, maps.data_ptr<int64_t>(), a.maps.ty,
            a.maps.tx, box, a.box, wp != nullptr, a.out.data_ptr<float>(), a.cnt.data_ptr<float>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                    "aggregate_grid_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      stnls::dispatch_pos(a.inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        aggregate_grid_kernel<video_t, acc_t, pos_t>
            <<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
                video.data_ptr<video_t>(), a.inds.data_ptr<pos_t>(),
                a.w.has_value() ? a.w->data_ptr<acc_t>() : nullptr,
                stnls::GridDims{d, a.maps.g.nH, a.maps.g.nW}, maps.data_ptr<int64_t>(),
                a.maps.ty, a.maps.tx, nchunks, box, a.box, a.out.data_ptr<acc_t>(),
                a.cnt.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("gather_patches", &gather_patches_cuda);
  m.impl("gather_patches_backward", &gather_patches_backward_cuda);
  m.impl("scatter_patches", &scatter_patches_cuda);
  m.impl("scatter_patches_backward", &scatter_patches_backward_cuda);
  m.impl("aggregate_patches", &aggregate_patches_cuda);
  m.impl("aggregate_grid", &aggregate_grid_cuda);
}
