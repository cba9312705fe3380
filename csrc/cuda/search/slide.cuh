// The sliding box sums of whole-pixel grids (slide.cu's topk_slide_kernel, described there),
// shared with the sub-pixel kernel that takes its whole-pixel distances from them (subpix.cu).
#pragma once

#include "common.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {

constexpr int kSlideWarps = 8, kSlideRows = 7;

// TY rows of queries: fewer with 3 frames x channels, so that the query and key columns stay
// in registers (at 128 registers ptxas spills none for one, and a few values for three)
template <int PS, int PCN>
struct SlideTile {
  static constexpr int kTY = PCN == 1 ? 8 : 6, kTX = 32 - (PS - 1), kEY = kTY + PS - 1,
                       kN = kTX * kTY;
};

// v[i] = the sum of e[i .. i + PS) in the association above, for i < TY
template <int PS, int TY, int EY>
__device__ __forceinline__ void slide_box_rows(const float (&e)[EY], float (&v)[TY]) {
  static_assert(EY == TY + PS - 1, "rows of the difference column");
  float p[EY - 1];
#pragma unroll
  for (int u = 0; u < EY - 1; ++u) p[u] = e[u] + e[u + 1];
#pragma unroll
  for (int i = 0; i < TY; ++i) {
    if constexpr (PS == 3) v[i] = p[i] + e[i + 2];
    if constexpr (PS == 5) v[i] = (p[i] + p[i + 2]) + e[i + 4];
    if constexpr (PS == 7) v[i] = ((p[i] + p[i + 2]) + p[i + 4]) + e[i + 6];
  }
}

// the same association along the lanes: lane l gets the sum of v over lanes l .. l + PS
// (meaningful for l < 32 - (PS - 1))
template <int PS>
__device__ __forceinline__ float slide_box_lanes(float v) {
  constexpr unsigned kAll = 0xffffffffu;
  const float p = v + __shfl_down_sync(kAll, v, 1);
  if constexpr (PS == 3) return p + __shfl_down_sync(kAll, v, 2);
  if constexpr (PS == 5) return (p + __shfl_down_sync(kAll, p, 2)) + __shfl_down_sync(kAll, v, 4);
  return ((p + __shfl_down_sync(kAll, p, 2)) + __shfl_down_sync(kAll, p, 4)) +
         __shfl_down_sync(kAll, v, 6);
}


// Column `lane` of a query tile whose top-left patch pixel is (oy0, ox0), with its halo
// (EY rows), of PCN frames x channels (frames t.., channels c0..; mirrored)
template <typename scalar_t, int PCN, int EY>
__device__ __forceinline__ void slide_queries(float (&Qr)[PCN][EY], const scalar_t* qv, int64_t t,
                                              int64_t T, int64_t H, int64_t W, int64_t C,
                                              int64_t c0, int Ch, int64_t oy0, int64_t ox0,
                                              int lane) {
  const int64_t x = reflect(ox0 + lane, W);
#pragma unroll
  for (int pc = 0; pc < PCN; ++pc) {
    const int dt = pc / Ch, c = pc - dt * Ch;
    const int64_t fr = reflect(t + dt, T) * H;
#pragma unroll
    for (int u = 0; u < EY; ++u)
      Qr[pc][u] = static_cast<float>(qv[((fr + reflect(oy0 + u, H)) * W + x) * C + c0 + c]);
  }
}

// Runs of cy x cx offsets of an ny x nx union of offsets whose key pixels fit kcap floats
template <int PCN, int EY>
__device__ __forceinline__ void slide_runs(int ny, int nx, int kcap, int* cy, int* cx) {
  *cy = ny;
  *cx = nx;
  while (PCN * (EY + *cy - 1) * odd_pitch(32 + *cx - 1) > kcap) {
    if (*cy > 1)
      *cy = (*cy + 1) / 2;
    else
      *cx = (*cx + 1) / 2;
  }
}

// The block stages the key pixels of a run: PCN planes of KH x KW at pitch KP (plane KA) from
// row oy0 + ya and column ox0 + xa of frames s.. (mirrored)
template <typename scalar_t, int PCN>
__device__ __forceinline__ void slide_stage(float* Ks, const scalar_t* kv, int64_t s, int64_t T,
                                            int64_t H, int64_t W, int64_t C, int64_t c0, int Ch,
                                            int64_t oy0, int ya, int64_t ox0, int xa, int KH,
                                            int KW, int KP, int KA) {
  for (int e = threadIdx.x; e < PCN * KH * KW; e += blockDim.x) {
    const int pc = e / (KH * KW), pix = e - pc * (KH * KW), u = pix / KW, v = pix - u * KW;
    const int dt = pc / Ch, c = pc - dt * Ch;
    const int64_t fr = reflect(s + dt, T);
    Ks[pc * KA + u * KP + v] = static_cast<float>(
        kv[((fr * H + reflect(oy0 + ya + u, H)) * W + reflect(ox0 + xa + v, W)) * C + c0 + c]);
  }
}

// The key column of a lane from staged row iy0 on (rows past KH - 1 read row KH - 1)
template <int PCN, int EY>
__device__ __forceinline__ void slide_load(float (&Kr)[PCN][EY], const float* kc, int KA, int KP,
                                           int KH, int iy0) {
#pragma unroll
  for (int pc = 0; pc < PCN; ++pc)
#pragma unroll
    for (int u = 0; u < EY; ++u) Kr[pc][u] = kc[pc * KA + min(iy0 + u, KH - 1) * KP];
}

// ... slid down by one row, whose new last row is staged row `row` (renaming once unrolled)
template <int PCN, int EY>
__device__ __forceinline__ void slide_down(float (&Kr)[PCN][EY], const float* kc, int KA, int KP,
                                           int row) {
#pragma unroll
  for (int pc = 0; pc < PCN; ++pc) {
#pragma unroll
    for (int u = 0; u < EY - 1; ++u) Kr[pc][u] = Kr[pc][u + 1];
    Kr[pc][EY - 1] = kc[pc * KA + row * KP];
  }
}

// The distances at one offset of the TY queries of column `lane` of the tile, each handed to
// emit(i, d) for query row i as soon as it is summed (meaningful for lanes < 32 - (PS - 1));
// every lane of the warp calls it (shuffles)
template <int PS, int PCN, int TY, int EY, typename Emit>
__device__ __forceinline__ void slide_dists(const float (&Qr)[PCN][EY], const float (&Kr)[PCN][EY],
                                            bool l2, Emit&& emit) {
  float e[EY];
#pragma unroll
  for (int u = 0; u < EY; ++u) {
    float acc = 0.f;
#pragma unroll
    for (int pc = 0; pc < PCN; ++pc) term<float>(acc, Qr[pc][u], Kr[pc][u], l2);
    e[u] = acc;
  }
  float v[TY];
  slide_box_rows<PS, TY, EY>(e, v);
#pragma unroll
  for (int i = 0; i < TY; ++i) emit(i, slide_box_lanes<PS>(v[i]));
}

// f(pcn, psn) with the integral constants of 1 or 3 frames x channels (PC) and ps 3, 5 or 7:
// the sliding kernels' instantiations
template <typename F>
void dispatch_slide(int64_t PC, int64_t ps, F&& f) {
  auto with_ps = [&](auto pcn) {
    if (ps == 3)
      f(pcn, std::integral_constant<int, 3>{});
    else if (ps == 5)
      f(pcn, std::integral_constant<int, 5>{});
    else
      f(pcn, std::integral_constant<int, 7>{});
  };
  if (PC == 3)
    with_ps(std::integral_constant<int, 3>{});
  else
    with_ps(std::integral_constant<int, 1>{});
}

// f(type tag) for the video types the sliding kernels are compiled for: float, half and
// bfloat16 (not float64)
template <typename F>
void dispatch_slide_type(at::ScalarType st, F&& f) {
  if (st == at::kFloat)
    f(float{});
  else if (st == at::kHalf)
    f(at::Half{});
  else
    f(at::BFloat16{});
}

// Where a thread of a sliding kernel's block stands: the (batch x head, grid frame, tile) of
// the block, and the query qi of the tile whose list the thread keeps (OW lanes of every warp,
// so that the lists' work is spread evenly over the warps); `owner` for qi < N, `active` for
// queries inside the grid (nH x nW).
struct SlideBlock {
  int64_t bh, b, h, tr, tile_i, tile_j, gi, gj;
  int warp, lane, qi;
  bool owner, active;
};

template <int TX, int TY>
__device__ __forceinline__ SlideBlock slide_block(int64_t nH, int64_t nW, int64_t nh) {
  constexpr int N = TX * TY, OW = (N + kSlideWarps - 1) / kSlideWarps;
  static_assert(OW <= 32, "owners per warp");
  SlideBlock k;
  k.bh = blockIdx.z;
  k.b = k.bh / nh;
  k.h = k.bh % nh;
  k.tr = blockIdx.y;
  const int64_t tiles_x = (nW + TX - 1) / TX;
  k.tile_i = blockIdx.x / tiles_x;
  k.tile_j = blockIdx.x % tiles_x;
  k.warp = threadIdx.x >> 5;
  k.lane = threadIdx.x & 31;
  k.qi = k.warp * OW + k.lane;
  k.gi = k.tile_i * TY + k.qi / TX;
  k.gj = k.tile_j * TX + k.qi % TX;
  k.owner = k.lane < OW && k.qi < N;
  k.active = k.owner && k.gi < nH && k.gj < nW;
  return k;
}

}  // namespace stnls::search_cuda
