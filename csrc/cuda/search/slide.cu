// The sliding kernel of whole-pixel grids (see common.cuh), chosen by box.cu.
#include "common.cuh"
#include "slide.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

// Whole-pixel grids, sliding (topk_slide_kernel): ps 3, 5 or 7, stride0 = stride1 = dilation
// = 1, float accumulation, k <= 32 (lists of 16 or 32), 1 or 3 frames x channels per head
// (workload A; nl_means's k = 24 at sigma 20..30). The box sums
// of the staged kernel with the work spread so that nearly every value stays in registers:
//  * a tile of TX x TY queries, TX = 32 - (ps - 1), TY = 8 (6 with three frames x channels):
//    lane l of every warp holds column l of the tile's query pixels (TY + ps - 1 rows, with
//    the halo) in registers for the whole search;
//  * a warp takes one column offset dx and a chunk of kSlideRows row offsets dy: it holds the
//    key column the lane meets at the first dy in registers and, from one dy to the next, the
//    column slides down by one row, so each step loads one key row per lane;
//  * each step (one offset for the whole tile) makes the difference column, its sums over
//    every window of ps rows in registers, then the sums over ps columns across lanes with
//    warp shuffles, and hands the tile's distances to the threads that keep each query's top
//    k through shared memory (one block barrier per kSlideWarps offsets, double-buffered);
//    those threads are spread evenly over the warps.
// Every distance is summed in one fixed association that does not depend on where the query
// sits in its tile: pair sums p(u) = e(u) + e(u + 1), then ((p(u) + p(u + 2)) + p(u + 4))
// + e(u + 6) for ps = 7 (shorter for 5 and 3), down the columns and then along the rows. So
// splitting the queries into batches changes no bit. The key pixels of a frame are staged in
// shared memory as in the staged kernel (runs of fewer offsets where flows spread them).
// (two blocks per SM: 128 registers a thread)
template <typename scalar_t, int KM, int PCN, int PS>
__global__ void __launch_bounds__(kSlideWarps * 32, 2)
    topk_slide_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                      const float* __restrict__ centres, const int64_t* __restrict__ frames,
                      int64_t T, int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt, int ws,
                      int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW, int64_t nh,
                      int K, bool l2, bool exclude_self, int kcap, int64_t* __restrict__ out,
                      float* __restrict__ dout) {
  using Tile = SlideTile<PS, PCN>;
  constexpr int TX = Tile::kTX, TY = Tile::kTY, EY = Tile::kEY, N = Tile::kN, r = PS / 2;
  extern __shared__ __align__(16) unsigned char slide_smem[];
  float* Ds = reinterpret_cast<float*>(slide_smem);  // 2 x kSlideWarps x N distances
  float* Ks = Ds + 2 * kSlideWarps * N;               // PCN x KH x KP key pixels, <= kcap
  __shared__ int2 offs[2][kSlideWarps];               // each warp's offset (dy, dx) of a step
  __shared__ int gmin[2], gmax[2];

  // the threads that keep the tile's top-k lists meet at every round's barrier
  const SlideBlock sb = slide_block<TX, TY>(nH, nW, nh);
  const int64_t bh = sb.bh, b = sb.b, h = sb.h, tr = sb.tr, tile_i = sb.tile_i,
                tile_j = sb.tile_j, gi = sb.gi, gj = sb.gj;
  const int warp = sb.warp, lane = sb.lane, qi = sb.qi;
  const bool active = sb.active;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi, qx = gx0 + gj;
  const int half = ws / 2, span = ws - 1;
  const int64_t oy0 = gy0 + tile_i * TY - r, ox0 = gx0 + tile_j * TX - r;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;

  // column `lane` of the query tile and its halo, for the whole search
  float Qr[PCN][EY];
  slide_queries<scalar_t, PCN, EY>(Qr, qv, t, T, H, W, C, c0, Ch, oy0, ox0, lane);

  TopK<float, int, KM> top;
  int parity = 0;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    int gy = 0, gx = 0;  // offset of this query's first candidate
    if (active) window_start(centres + ((b * Q + q) * nt + f) * 2, half, 1, qy, qx, &gy, &gx);
    int lo[2], hi[2];
    block_extent(active, gy, gx, gmin, gmax, lo, hi);
    const int ylo = lo[0], yhi = hi[0] + span;
    const int xlo = lo[1], xhi = hi[1] + span;
    if (ylo > yhi) continue;  // no active thread in this tile (uniform across the block)
    // every window of the tile is the same: each offset of the union is in each one
    const bool same = lo[0] == hi[0] && lo[1] == hi[1];
    const int fw = static_cast<int>(f) * ws;
    // runs of cy x cx offsets whose key pixels fit in kcap
    const int ny = yhi - ylo + 1, nx = xhi - xlo + 1;
    int cy = 0, cx = 0;
    slide_runs<PCN, EY>(ny, nx, kcap, &cy, &cx);
    for (int ya = ylo; ya <= yhi; ya += cy) {
      const int my = min(cy, yhi - ya + 1);
      for (int xa = xlo; xa <= xhi; xa += cx) {
        const int mx = min(cx, xhi - xa + 1);
        const int KH = EY + my - 1, KW = 32 + mx - 1, KP = odd_pitch(KW), KA = KH * KP;
        // Every warp has passed a round barrier after its last read of Ks.
        slide_stage<scalar_t, PCN>(Ks, kv, s, T, H, W, C, c0, Ch, oy0, ya, ox0, xa, KH, KW, KP, KA);
        __syncthreads();  // Ks is staged
        // items: one dx and kSlideRows dy each, one per warp per kSlideRows rounds
        const int nitems = mx * ((my + kSlideRows - 1) / kSlideRows);
        for (int ib = 0; ib < nitems; ib += kSlideWarps) {
          const int it = ib + warp;
          const bool has = it < nitems;  // uniform across the warp
          const int ix = has ? it % mx : 0, iy0 = has ? (it / mx) * kSlideRows : 0;
          const float* kc = Ks + lane + ix;
          float Kr[PCN][EY];
          slide_load<PCN, EY>(Kr, kc, KA, KP, KH, iy0);
#pragma unroll
          for (int st = 0; st < kSlideRows; ++st) {
            if (st > 0) slide_down<PCN, EY>(Kr, kc, KA, KP, min(iy0 + st + EY - 1, KH - 1));
            const bool valid = has && iy0 + st < my;
            if (valid) {
              float* Dw = Ds + (parity * kSlideWarps + warp) * N;
              slide_dists<PS, PCN, TY, EY>(Qr, Kr, l2, [&](int i, float d) {
                if (lane < TX) Dw[i * TX + lane] = d;
              });
            }
            if (lane == 0)
              offs[parity][warp] = valid ? make_int2(ya + iy0 + st, xa + ix) : make_int2(INT_MIN, 0);
            __syncthreads();  // the round's distances are in Ds
            if (active) {
              const float* Dq = Ds + parity * kSlideWarps * N + qi;
#pragma unroll 2
              for (int w = 0; w < kSlideWarps; ++w) {
                const float d = Dq[w * N];
                // most candidates lose to the k-th best: no further look at them
                if (top.n == K && (l2 ? d > top.worst_d : d < top.worst_d)) continue;
                const int2 o = offs[parity][w];
                if (o.x == INT_MIN) continue;
                const int ii = o.x - gy, jj = o.y - gx;
                if (!same && (static_cast<unsigned>(ii) > static_cast<unsigned>(span) ||
                              static_cast<unsigned>(jj) > static_cast<unsigned>(span)))
                  continue;
                if (exclude_self && s == t && o.x == 0 && o.y == 0) continue;
                top.insert(d, (fw + ii) * ws + jj, K, l2);
              }
            }
            parity ^= 1;
          }
        }
      }
    }
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, l2);
}

}  // namespace

// Host side of topk_slide_kernel: float accumulation (not float64), k <= 32, ps 3, 5 or 7,
// 1 or 3 frames x channels per head, unit spacings and dilation (checked by the caller).
std::tuple<at::Tensor, at::Tensor> search_topk_slide_cuda(const at::Tensor& queries,
                                                          const at::Tensor& keys,
                                                          const at::Tensor& centres,
                                                          const at::Tensor& frames,
                                                          at::IntArrayRef grid, int64_t ps,
                                                          int64_t pt, int64_t nheads, int64_t k,
                                                          bool l2, bool exclude_self, int64_t ws) {
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = grid[3] * grid[4] * grid[5], nt = frames.size(1);
  const int64_t PC = pt * (C / nheads);
  const auto st = queries.scalar_type();
  TORCH_CHECK(k <= 32 && (ps == 3 || ps == 5 || ps == 7) && (PC == 1 || PC == 3) &&
                  (st == at::kFloat || st == at::kHalf || st == at::kBFloat16),
              "search_topk_slide_cuda: unsupported case");
  auto ids = at::empty({B, nheads, Q, k}, frames.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(at::kFloat));
  if (ids.numel() == 0) return {dists, ids};
  const auto frm = frames.contiguous();
  const auto cen = centres.to(at::kFloat).contiguous();
  // The warps keep their own queries' lists (topk_slide_warp_kernel, slide_warp.cu) where
  // that was measured faster (H100, ps 7, ws 21, k 10, 3 channels: 52.0 against 55.0 ms on
  // 5x540x960, 86.5 against 110.6 on 8x540x960): k <= 16, 3 frames x channels, and grids of
  // at least 8 blocks per SM (on 5x256x256, 550 blocks, a partial last wave made it 4%
  // slower; with one channel 3% slower, with k = 24 11%). NAPARI_STNLS_CUDA_SLIDE_WARP=1 takes
  // it wherever its shared memory fits, 0 never (read on every call, for timing).
  const char* sw = std::getenv("NAPARI_STNLS_CUDA_SLIDE_WARP");
  const int mode = sw && *sw ? std::atoi(sw) : -1;
  if (mode != 0) {
    const int64_t wcap = slide_warp_kcap(ps, PC, ws);
    int dev = 0, optin = 0, sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const bool fits = slide_warp_smem(ps, PC, k, wcap, true) <= optin;
    const bool rule = k <= 16 && PC == 3 && slide_warp_blocks(grid, ps, B * nheads) >= 8 * sms;
    if (fits && (mode == 1 || rule)) {
      search_topk_slide_warp_cuda(queries, keys, cen, frm, grid, ps, pt, nheads, k, l2,
                                  exclude_self, ws, wcap, ids, dists);
      return {dists, ids};
    }
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  // key pixels of a whole window of offsets and the spread of the border tiles' windows
  constexpr int kcap = 16 * 1024;
  // a generic lambda: only float, half and bfloat16 kernels are compiled (not float64)
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    auto launch = [&](auto pcn, auto psn) {
      constexpr int PS = decltype(psn)::value, PCN = decltype(pcn)::value;
      using Tile = SlideTile<PS, PCN>;
      constexpr int N = Tile::kN;
      // lists of 16 or 32: a list lives in local memory (indexed at run time) either way,
      // and most candidates are rejected against the k-th distance held in registers
      auto kern = k <= 16 ? topk_slide_kernel<scalar_t, 16, PCN, PS>
                          : topk_slide_kernel<scalar_t, 32, PCN, PS>;
      const int smem = static_cast<int>((2 * kSlideWarps * N + kcap) * sizeof(float));
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      const dim3 blocks = tile_blocks(grid, Tile::kTY, Tile::kTX, B * nheads);
      kern<<<blocks, kSlideWarps * 32, smem, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), cen.data_ptr<float>(),
          frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws), grid[0], grid[1], grid[2],
          grid[4], grid[5], nheads, int(k), l2, exclude_self, kcap, ids.data_ptr<int64_t>(),
          dists.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    dispatch_slide(PC, ps, launch);
  };
  dispatch_slide_type(queries.scalar_type(), run);
  return {dists, ids};
}

}  // namespace stnls::search_cuda
