// What the tiled kernels of whole-pixel grids (box.cu, stage.cu, slide.cu, pix.cu) share: where
// a query's window starts, the extent of a tile's windows, the launch grid, and the staged
// kernel's tile (box.cu sizes its shared memory).
#pragma once

#include "common.cuh"

namespace stnls::search_cuda {

// Offset (gy, gx) of the first candidate of a query's window from the query (qy, qx), for the
// window centre c = (y, x) rounded to whole pixels.
template <typename acc_t>
__device__ __forceinline__ void window_start(const acc_t* c, int half, int s1, int64_t qy,
                                             int64_t qx, int* gy, int* gx) {
  *gy = static_cast<int>(llrint(static_cast<double>(c[0])) - half * s1 - qy);
  *gx = static_cast<int>(llrint(static_cast<double>(c[1])) - half * s1 - qx);
}

// Block-wide minimum lo and maximum hi of (y, x) over the active threads, through the shared
// pair gmin/gmax (lo = INT_MAX where no thread is active). Every thread of the block calls it;
// its last barrier lets the next call reset gmin/gmax once everyone has read them.
__device__ __forceinline__ void block_extent(bool active, int y, int x, int* gmin, int* gmax,
                                             int* lo, int* hi) {
  if (threadIdx.x == 0) {
    gmin[0] = gmin[1] = INT_MAX;
    gmax[0] = gmax[1] = INT_MIN;
  }
  __syncthreads();
  if (active) {
    atomicMin(&gmin[0], y);
    atomicMin(&gmin[1], x);
    atomicMax(&gmax[0], y);
    atomicMax(&gmax[1], x);
  }
  __syncthreads();
  lo[0] = gmin[0];
  lo[1] = gmin[1];
  hi[0] = gmax[0];
  hi[1] = gmax[1];
  __syncthreads();
}

// Launch grid of the tiled kernels: (tiles of ty x tx queries of a grid frame, grid frames,
// batch x heads), for the query grid (t0, y0, x0, T_r, nH, nW, ...).
inline dim3 tile_blocks(at::IntArrayRef grid, int64_t ty, int64_t tx, int64_t bh) {
  TORCH_CHECK(grid[3] <= 65535 && bh <= 65535, "too many frames or batch x heads");
  const int64_t tiles = ((grid[4] + ty - 1) / ty) * ((grid[5] + tx - 1) / tx);
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(grid[3]),
              static_cast<unsigned>(bh));
}

// Stages RH x RW pixels of frame s of the channels-last video kv (B item's), from pixel
// (y0, x0) on (mirrored), into S for the single-pixel kernels: pixel-major, `pitch` values
// apart, channels c0 .. c0 + Ch - 1 of C, then zeros up to CMAX. Warp `warp` of nw takes rows
// warp, warp + nw, ...; its lanes go over (pixel, channel): coalesced reads, conflict-free
// stores, BATCH loads in flight before their stores.
template <int CMAX, int BATCH, typename acc_t, typename scalar_t>
__device__ __forceinline__ void stage_pixels(acc_t* S, const scalar_t* __restrict__ kv, int64_t s,
                                             int64_t H, int64_t W, int64_t C, int64_t c0, int Ch,
                                             int64_t y0, int64_t x0, int RH, int RW, int pitch,
                                             int warp, int nw, int lane) {
  const int n_el = RW * CMAX;
  for (int u = warp; u < RH; u += nw) {
    const int64_t yrow = (s * H + reflect(y0 + u, H)) * W;
    acc_t* srow = S + u * RW * pitch;
    for (int e0 = lane; e0 < n_el; e0 += 32 * BATCH) {
      acc_t buf[BATCH];
#pragma unroll
      for (int j = 0; j < BATCH; ++j) {
        const int e = e0 + 32 * j, v = e / CMAX, c = e % CMAX;
        buf[j] = acc_t(0);
        if (e < n_el && c < Ch)
          buf[j] = static_cast<acc_t>(kv[(yrow + reflect(x0 + v, W)) * C + c0 + c]);
      }
#pragma unroll
      for (int j = 0; j < BATCH; ++j) {
        const int e = e0 + 32 * j;
        if (e < n_el) srow[(e / CMAX) * pitch + e % CMAX] = buf[j];
      }
    }
  }
}

// The smallest power of two in lo .. 64 that holds ch channels (the single-pixel kernels'
// channel capacities; ch <= 64), and a call of f(std::integral_constant<int, it>{})
inline int64_t channel_capacity(int64_t ch, int64_t lo) {
  int64_t n = lo;
  while (n < ch && n < 64) n *= 2;
  return n;
}

template <int LO, typename F>
void dispatch_channels(int64_t ch, F&& f) {
  if (LO >= ch || LO == 64) {
    f(std::integral_constant<int, LO>{});
  } else if constexpr (LO < 64) {
    dispatch_channels<LO * 2>(ch, f);
  }
}

// The staged kernel's tile (stage.cu)
constexpr int kSY = 16, kSX = 16, kSW = 8;  // tile of kSY x kSX queries, kSW warps
constexpr int kRP = 18;  // pitch of the row sums: the two half-warps of step 3 on other banks
static_assert(kSX == 16 && kSY == 16, "steps 2 and 3 give each half-warp half of the tile");

__host__ __device__ __forceinline__ int odd_pitch(int w) { return w | 1; }

}  // namespace stnls::search_cuda
