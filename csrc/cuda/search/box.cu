// search_topk_box on CUDA (see common.cuh): whole-pixel search grids with the queries on a
// regular grid. topk_box_kernel, and the choice between it, the staged, sliding and
// single-pixel kernels (stage.cu, slide.cu, pix.cu) and search_topk (topk.cu).
#include <torch/library.h>

#include "common.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

// Whole-pixel search grids: box sums shared by a tile of queries.
//
// For a tile of kTY x kTX queries of one frame and one offset (dy, dx) between a query and a
// candidate, the patch distance of every query in the tile is a ps x ps box sum of one
// "difference image" D(u, v) = sum over frames and channels of the per-pixel term between the
// query video at (y, x) and the key video at (y + dy, x + dx), both mirrored at the borders
// on their own absolute coordinates (exactly how each patch reads them). So each offset costs
// one D over the tile and its halo, row sums, then column sums: O(C) per candidate instead of
// O(ps^2 C). Each thread keeps its query's top k; offsets are visited in ascending (dy, dx)
// order, so a thread sees its own candidates in ascending id order (ties keep the first).
constexpr int kTY = 16, kTX = 16;

// The smallest stride0 that takes the warp-per-query kernel instead of the box kernels.
constexpr int64_t kStridedMin = 2;
int64_t strided_min() {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_STRIDED");
  return e && *e ? std::atoll(e) : kStridedMin;
}

template <typename scalar_t, typename acc_t, int KMAX>
__global__ void __launch_bounds__(kTY* kTX)
    topk_box_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                    const acc_t* __restrict__ centres, const int64_t* __restrict__ frames, int64_t T,
                    int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt, int ws, int s1,
                    int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW, int s0, int ps,
                    int pt, int dil, int64_t nh, int K, bool l2, bool exclude_self, int DH, int DW,
                    int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* D = reinterpret_cast<acc_t*>(smem_raw);  // DH x DW
  acc_t* R = D + DH * DW;                          // DH x kTX
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + kTX - 1) / kTX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int ty = threadIdx.x / kTX, tx = threadIdx.x % kTX;
  const int64_t gi = tile_i * kTY + ty, gj = tile_j * kTX + tx;
  const bool active = gi < nH && gj < nW;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi * s0, qx = gx0 + gj * s0;
  const int64_t py0 = gy0 + tile_i * kTY * s0, px0 = gx0 + tile_j * kTX * s0;
  const int r = ps / 2, half = ws / 2;
  const int64_t Ch = C / nh, c0 = h * Ch, video = T * H * W * C;
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;

  TopK<acc_t, int, KMAX> top;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    int gy = 0, gx = 0;
    if (active) window_start(centres + ((b * Q + q) * nt + f) * 2, half, s1, qy, qx, &gy, &gx);
    int lo[2], hi[2];
    block_extent(active, gy, gx, gmin, gmax, lo, hi);
    const int ylo = lo[0], yhi = hi[0] + (ws - 1) * s1;
    const int xlo = lo[1], xhi = hi[1] + (ws - 1) * s1;
    if (ylo > yhi) continue;  // no active thread in this tile (uniform across the block)
    for (int dy = ylo; dy <= yhi; ++dy) {
      for (int dx = xlo; dx <= xhi; ++dx) {
        // 1. the difference image over the tile and its halo
        for (int e = threadIdx.x; e < DH * DW; e += blockDim.x) {
          const int u = e / DW, v = e % DW;
          const int64_t yq = py0 - dil * r + u, xq = px0 - dil * r + v;
          const int64_t ryq = reflect(yq, H), rxq = reflect(xq, W);
          const int64_t ryk = reflect(yq + dy, H), rxk = reflect(xq + dx, W);
          acc_t acc = 0;
          for (int dt = 0; dt < pt; ++dt) {
            const int64_t fq = reflect(t + dt, T), fk = reflect(s + dt, T);
            const scalar_t* a = qv + ((fq * H + ryq) * W + rxq) * C + c0;
            const scalar_t* bb = kv + ((fk * H + ryk) * W + rxk) * C + c0;
            for (int64_t c = 0; c < Ch; ++c) {
              const acc_t x = static_cast<acc_t>(a[c]), y = static_cast<acc_t>(bb[c]);
              if (l2) {
                const acc_t e2 = x - y;
                acc += e2 * e2;
              } else {
                acc += x * y;
              }
            }
          }
          D[e] = acc;
        }
        __syncthreads();
        // 2. sums along rows (x) for every tile column
        for (int e = threadIdx.x; e < DH * kTX; e += blockDim.x) {
          const int u = e / kTX, jx = e % kTX;
          const acc_t* row = D + u * DW + jx * s0;
          acc_t acc = 0;
          for (int bx = 0; bx < ps; ++bx) acc += row[dil * bx];
          R[e] = acc;
        }
        __syncthreads();
        // 3. sums along columns (y): the patch distance of this thread's query at (dy, dx)
        if (active) {
          const int ii = dy - gy, jj = dx - gx;
          if (ii >= 0 && jj >= 0 && ii <= (ws - 1) * s1 && jj <= (ws - 1) * s1 && ii % s1 == 0 &&
              jj % s1 == 0 && !(exclude_self && s == t && dy == 0 && dx == 0)) {
            acc_t d = 0;
            for (int a = 0; a < ps; ++a) d += R[(ty * s0 + dil * a) * kTX + tx];
            top.insert(d, static_cast<int>((f * ws + ii / s1) * ws + jj / s1), K, l2);
          }
        }
        __syncthreads();  // D and R are rewritten for the next offset
      }
    }
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, l2);
}

std::tuple<at::Tensor, at::Tensor> search_topk_box_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                const at::Tensor& coords, const at::Tensor& centres,
                                const at::Tensor& frames, const at::Tensor& offsets,
                                at::IntArrayRef grid, int64_t stride0, int64_t ps, int64_t pt,
                                int64_t dilation, int64_t nheads, int64_t k, bool l2,
                                bool exclude_self) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(grid.size() == 7, "grid: expected (t0, y0, x0, T_r, nH, nW, stride1)");
  const int64_t Q = coords.size(0), nt = frames.size(1), ws = offsets.size(0);
  TORCH_CHECK(grid[3] * grid[4] * grid[5] == Q, "grid: does not match the number of queries");
  const int64_t s1 = grid[6];
  // NAPARI_STNLS_CUDA_PIX=0 turns the single-pixel kernel off (to time it against the box one)
  static const bool pix_on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CUDA_PIX");
    return !(e && std::string(e) == "0");
  }();
  if (pix_on && ps == 1 && pt == 1 && k <= 16 && s1 >= 1 && queries.size(4) / nheads <= 64) {
    if (const int mode = pix_tc_mode(queries, stride0, s1, nheads, k, nt, ws))
      return search_topk_pix_tc_cuda(queries, keys, centres, frames, grid, nheads, k, l2,
                                     exclude_self, ws, mode);
    return search_topk_pix_cuda(queries, keys, centres, frames, grid, stride0, nheads, k, l2,
                                exclude_self, ws);
  }
  if (nt * ws * ws >= INT_MAX || s1 < 1)  // ids past int, or a sub-pixel grid
    return search_topk_cuda(queries, keys, coords, centres, frames, offsets, ps, pt, dilation,
                            nheads, k, l2, exclude_self);
  // Strided query grids: the box kernels fill a difference image over every pixel of a tile of
  // queries and its halo for every offset, so they do the work of every pixel whatever
  // stride0 (at stride0 = 4 more than the whole dense search), and a tile of 16 x 16 strided
  // queries leaves the GPU with few blocks. A warp per query (topk_window_kernel, topk.cu:
  // the query patch and the window in shared memory, distances summed directly) does work
  // proportional to the queries. It takes stride0 >= strided_min() (measured: see
  // docs/api.md); NAPARI_STNLS_CUDA_STRIDED=N moves that bound to N (0: never), read on every
  // call so that one process can time both paths.
  if (const int64_t smin = strided_min(); smin > 0 && stride0 >= smin)
    return search_topk_cuda(queries, keys, coords, centres, frames, offsets, ps, pt, dilation,
                            nheads, k, l2, exclude_self);
  // Lists longer than the sliding kernel's (k > 32) would leave these grids to
  // topk_box_kernel (the staged kernel takes k <= 16): for small windows the warp per query
  // is faster (H100, 5x3x540x960, ps 7: ws 9, k 48 149 against 238 ms; ws 11, k 100 285
  // against 877 ms; ps 5, ws 9, k 40 124 against 179 ms), for ws 21 slower (k 48: 2016
  // against 744 ms). NAPARI_STNLS_CUDA_BOXK=N sends every whole-pixel grid with k > N there
  // instead of that rule (read on every call, for timing).
  const char* boxk = std::getenv("NAPARI_STNLS_CUDA_BOXK");
  if (boxk && *boxk ? k > std::atoll(boxk) : k > 32 && ws <= 11)
    return search_topk_cuda(queries, keys, coords, centres, frames, offsets, ps, pt, dilation,
                            nheads, k, l2, exclude_self);
  // NAPARI_STNLS_CUDA_SLIDE=0 turns the sliding kernel off (to time it against the staged one)
  static const bool slide_on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CUDA_SLIDE");
    return !(e && std::string(e) == "0");
  }();
  const int64_t PCh = pt * (queries.size(4) / nheads);
  if (slide_on && k <= 32 && s1 == 1 && stride0 == 1 && dilation == 1 &&
      (ps == 3 || ps == 5 || ps == 7) && (PCh == 1 || PCh == 3) &&
      queries.scalar_type() != at::kDouble)
    return search_topk_slide_cuda(queries, keys, centres, frames, grid, ps, pt, nheads, k, l2,
                                  exclude_self, ws);
  const size_t acc_bytes = queries.scalar_type() == at::kDouble ? 8 : 4;
  // NAPARI_STNLS_CUDA_STAGE=0 turns the staged kernel off (to time it against the box one)
  static const bool stage_on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CUDA_STAGE");
    return !(e && std::string(e) == "0");
  }();
  if (stage_on && k <= 16) {
    const int64_t DH = (kSY - 1) * stride0 + dilation * (ps - 1) + 1;
    const int64_t DW = (kSX - 1) * stride0 + dilation * (ps - 1) + 1;
    const int64_t PC = pt * (queries.size(4) / nheads);
    const int64_t DP = ((DW + 31) / 32) * 32 + 1;
    const int fast = stride0 == 1 && dilation == 1 && (ps == 3 || ps == 5 || ps == 7) ? int(ps) : 0;
    const int64_t fixed = PC * DH * odd_pitch(int(DW)) + (fast ? 0 : kSW * DH * DP) +
                          kSW * DH * kRP + 2 * kSW * kSY * kSX;
    // keys of a whole window of offsets where they fit in ~72 KiB in all (three blocks per
    // SM), else runs of fewer offsets; at least 8 x 8 offsets' worth
    const int64_t kcap = std::max<int64_t>(PC * (DH + 7) * odd_pitch(int(DW + 7)),
                                           (72 * 1024) / int64_t(acc_bytes) - fixed);
    const int64_t smem = (fixed + kcap) * int64_t(acc_bytes);
    int dev = 0, optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem <= optin - 1024)
      return search_topk_stage_cuda(queries, keys, centres, frames, grid, stride0, ps, pt,
                                    dilation, nheads, k, l2, exclude_self, ws, int(DH), int(DW),
                                    kcap, smem, fast);
  }
  const int DH = int((kTY - 1) * stride0 + dilation * (ps - 1) + 1);
  const int DW = int((kTX - 1) * stride0 + dilation * (ps - 1) + 1);
  const size_t smem = acc_bytes * size_t(DH) * size_t(DW + kTX);
  if (k > 128 || smem > 48 * 1024)  // tile does not fit: the per-query kernel
    return search_topk_cuda(queries, keys, coords, centres, frames, offsets, ps, pt, dilation,
                            nheads, k, l2, exclude_self);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  const auto frm = frames.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks = tile_blocks(grid, kTY, kTX, B * nheads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_box_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto launch = [&](auto kmax) {
      constexpr int KM = decltype(kmax)::value;
      topk_box_kernel<scalar_t, acc_t, KM><<<blocks, kTY * kTX, smem, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), cen.data_ptr<acc_t>(),
          frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws), int(s1), grid[0], grid[1],
          grid[2], grid[4], grid[5], int(stride0), int(ps), int(pt), int(dilation), nheads,
          int(k), l2, exclude_self, DH, DW, ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
    };
    stnls::dispatch_kmax(k, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dists, ids};
}

}  // namespace

}  // namespace stnls::search_cuda

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("search_topk_box", &stnls::search_cuda::search_topk_box_cuda);
}
