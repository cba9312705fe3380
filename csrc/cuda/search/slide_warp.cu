// The sliding kernel with the lists kept by the warps that sum the distances (see
// common.cuh), chosen by slide.cu.
#include "common.cuh"
#include "slide.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

// Whole-pixel grids, sliding, each warp keeping its own queries' lists
// (topk_slide_warp_kernel). topk_slide_kernel (slide.cu) spreads the offsets over the warps
// and hands each round's distances to the threads that keep the lists through shared memory,
// behind a block barrier; on 540p videos more than half of its time went to that barrier and
// to the lists' divergent insertions. Here the block's warps split the query tile instead:
//  * warp w owns TY = 6 rows of a TX x (kWarpTiles * TY) tile (TX = 32 - (ps - 1)); lane l holds
//    column l of its rows' query pixels in registers and, for every offset of its rows'
//    windows, sums the TY distances of column l (slide_dists, the same association as
//    topk_slide_kernel, so the same bits);
//  * the lane compares each distance with the k-th best of its query, held in a register;
//    the few that pass wait in a buffer of the warp (a bit each), and after every kSlideRows
//    offsets each lane inserts its own into its queries' lists in shared memory (TopK's
//    insertion; a bar that went stale meanwhile is only looser: the list decides). That code
//    stays outside the unrolled steps, so that the loop fits the instruction cache;
//  * the key pixels of a frame are staged once for the block (runs of fewer offsets where
//    flows spread the windows wider than the staging buffer), one block barrier per run.
//  * the offsets are visited centre-first (the query's own frame, then, in each run, the
//    middle column and the middle chunk of rows outwards): on real videos the bars tighten
//    sooner and fewer distances are inserted (H100, 5x540x960 bikes, clean: 75.3 -> 57.1 ms).
// The lists order by (distance, id) as TopK does, so the result does not depend on the
// order of the offsets (where no distance is NaN).
constexpr int kWarpTiles = 4;            // warps per block, stacked down the tile
constexpr int kWarpTY = 6;               // query rows of a warp (one or three channels)
constexpr int kEmpty = INT_MAX;          // the id of an empty list entry

// The n-th of the offsets lo .. hi in centre-first order: c (in lo .. hi), then c + 1, c - 1,
// c + 2, ... alternately while both sides last, then the rest of the longer side
__device__ __forceinline__ int centre_out(int n, int lo, int hi, int c) {
  const int L = c - lo, R = hi - c, m = min(L, R);
  if (n <= 2 * m) return (n & 1) ? c + (n + 1) / 2 : c - n / 2;
  const int extra = n - 2 * m;
  return R > L ? c + m + extra : c - m - extra;
}

// v goes before the list entry (e, ei): TopK's rule, an empty entry after everything
__device__ __forceinline__ bool goes_before(float v, int vi, float e, int ei, bool l2) {
  return ei == kEmpty || stnls::better(v, e, l2) || (v == e && vi < ei);
}

// (two blocks per SM: shared memory allows no more, the lists and staged keys taking about 80
// KB a block at k 10, and ptxas then keeps every value in registers, 210 for ps 7 and three
// channels; at 3 blocks it spills a few bytes, at 4 a few hundred)
template <typename scalar_t, int PCN, int PS>
__global__ void __launch_bounds__(kWarpTiles * 32, 2)
    topk_slide_warp_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                           const float* __restrict__ centres, const int64_t* __restrict__ frames,
                           int64_t T, int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt,
                           int ws, int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW,
                           int64_t nh, int K, bool l2, bool exclude_self, int kcap,
                           bool centre_first, bool balanced, int64_t* __restrict__ out,
                           float* __restrict__ dout) {
  constexpr int TX = 32 - (PS - 1), TY = kWarpTY, EY = TY + PS - 1, r = PS / 2;
  constexpr int BY = kWarpTiles * TY, EYB = BY + PS - 1;  // the block's query rows, with halo
  constexpr unsigned kAll = 0xffffffffu;
  extern __shared__ __align__(16) unsigned char warp_smem[];
  float* Ld = reinterpret_cast<float*>(warp_smem);  // kWarpTiles x TY x TX lists of K
  int* Li = reinterpret_cast<int*>(Ld + kWarpTiles * TY * TX * K);
  float* Ks = reinterpret_cast<float*>(Li + kWarpTiles * TY * TX * K);  // <= kcap key pixels
  __shared__ float buf[kWarpTiles][kSlideRows * TY * 32];  // distances that passed their bar
  __shared__ int2 wst[kWarpTiles][TY][32];   // each query's window start (dy, dx) this frame
  __shared__ uint16_t wslot[kWarpTiles][TY * 32];  // balanced: a round's (step, row, column)
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh, tr = blockIdx.y;
  const int64_t tiles_x = (nW + TX - 1) / TX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t gi0 = tile_i * BY + warp * TY, gj = tile_j * TX + lane;
  const int64_t t = gt0 + tr, qx = gx0 + gj;
  const int half = ws / 2, span = ws - 1;
  const int64_t oyb = gy0 + tile_i * BY - r, ox0 = gx0 + tile_j * TX - r;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;
  float* wLd = Ld + warp * TY * TX * K;
  int* wLi = Li + warp * TY * TX * K;
  float* wbuf = buf[warp];

  // the queries of this lane (rows i of column lane), as bits
  unsigned act = 0;
#pragma unroll
  for (int i = 0; i < TY; ++i)
    if (lane < TX && gi0 + i < nH && gj < nW) act |= 1u << i;
  for (int e = lane; e < TY * TX * K; e += 32) wLi[e] = kEmpty;

  float Qr[PCN][EY];
  slide_queries<scalar_t, PCN, EY>(Qr, qv, t, T, H, W, C, c0, Ch, oyb + warp * TY, ox0, lane);

  // the k-th best distance of each query (NaN while its list is not full; never passed by
  // queries outside the grid)
  float bar[TY];
  const float none = l2 ? -INFINITY : INFINITY;
#pragma unroll
  for (int i = 0; i < TY; ++i) bar[i] = (act >> i) & 1u ? NAN : none;
  __syncwarp();

  // centre_first: visit the offsets the query's own frame first and, in each run of staged
  // keys, the middle column and the middle chunk of rows first, then outwards: the best
  // candidates of real videos tend to lie there, so the bars tighten early and fewer
  // distances enter the lists. The lists' (distance, id) order makes it change no bit.
  int64_t fstar = 0;
  if (centre_first)
    for (int64_t f = 0; f < nt; ++f)
      if (frames[q_first * nt + f] == t) {
        fstar = f;
        break;
      }
  for (int64_t fi = 0; fi < nt; ++fi) {
    const int64_t f = fi == 0 ? fstar : (fi <= fstar ? fi - 1 : fi);
    const int64_t s = frames[q_first * nt + f];
    // every query's window start; the union of the warp's windows and of the block's
    int ylo = INT_MAX, xlo = INT_MAX, yhi = INT_MIN, xhi = INT_MIN;
#pragma unroll
    for (int i = 0; i < TY; ++i) {
      int2 g = make_int2(INT_MIN / 2, INT_MIN / 2);  // outside every offset range
      if ((act >> i) & 1u) {
        const int64_t q = (tr * nH + gi0 + i) * nW + gj;
        window_start(centres + ((b * Q + q) * nt + f) * 2, half, 1, gy0 + gi0 + i, qx, &g.x,
                     &g.y);
        ylo = min(ylo, g.x);
        yhi = max(yhi, g.x);
        xlo = min(xlo, g.y);
        xhi = max(xhi, g.y);
      }
      wst[warp][i][lane] = g;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ylo = min(ylo, __shfl_xor_sync(kAll, ylo, o));
      xlo = min(xlo, __shfl_xor_sync(kAll, xlo, o));
      yhi = max(yhi, __shfl_xor_sync(kAll, yhi, o));
      xhi = max(xhi, __shfl_xor_sync(kAll, xhi, o));
    }
    const bool any = ylo != INT_MAX;  // uniform across the warp
    int blo[2], bhi[2], unused[2];
    block_extent(any, ylo, xlo, gmin, gmax, blo, unused);
    block_extent(any, yhi, xhi, gmin, gmax, unused, bhi);
    const int bylo = blo[0], byhi = bhi[0] + span, bxlo = blo[1], bxhi = bhi[1] + span;
    if (bylo > byhi) continue;  // no query of the block in the grid (uniform)
    const int fw = static_cast<int>(f) * ws;
    const int ny = byhi - bylo + 1, nx = bxhi - bxlo + 1;
    int cy = 0, cx = 0;
    slide_runs<PCN, EYB>(ny, nx, kcap, &cy, &cx);
    for (int ya = bylo; ya <= byhi; ya += cy) {
      const int my = min(cy, byhi - ya + 1);
      for (int xa = bxlo; xa <= bxhi; xa += cx) {
        const int mx = min(cx, bxhi - xa + 1);
        const int KH = EYB + my - 1, KW = 32 + mx - 1, KP = odd_pitch(KW), KA = KH * KP;
        __syncthreads();  // every warp is done with the last run's keys
        slide_stage<scalar_t, PCN>(Ks, kv, s, T, H, W, C, c0, Ch, oyb, ya, ox0, xa, KH, KW, KP,
                                   KA);
        __syncthreads();  // Ks is staged
        if (!any) continue;
        // this warp's offsets in the run
        const int dy0 = max(ya, ylo), dy1 = min(ya + my - 1, yhi + span);
        const int dx0 = max(xa, xlo), dx1 = min(xa + mx - 1, xhi + span);
        const int ncy = dy1 >= dy0 ? (dy1 - dy0) / kSlideRows + 1 : 0;
        const int cxm = min(max((xlo + xhi + span) >> 1, dx0), dx1);
        const int cym = (min(max((ylo + yhi + span) >> 1, dy0), dy1) - dy0) / kSlideRows;
        for (int nx_ = 0; nx_ <= dx1 - dx0; ++nx_) {
          const int dx = centre_first ? centre_out(nx_, dx0, dx1, cxm) : dx0 + nx_;
          const float* kc = Ks + lane + (dx - xa);
          for (int ny_ = 0; ny_ < ncy; ++ny_) {
            const int dyc =
                dy0 + kSlideRows * (centre_first ? centre_out(ny_, 0, ncy - 1, cym) : ny_);
            const int iy0 = warp * TY + (dyc - ya);
            float Kr[PCN][EY];
            slide_load<PCN, EY>(Kr, kc, KA, KP, KH, iy0);
            // bit st * TY + i: the distance of row i at offset (dyc + st, dx) passed its bar
            // and waits in the buffer
            uint64_t bits = 0;
#pragma unroll
            for (int st = 0; st < kSlideRows; ++st) {
              if (st > 0) slide_down<PCN, EY>(Kr, kc, KA, KP, min(iy0 + st + EY - 1, KH - 1));
              if (dyc + st > dy1) break;  // uniform across the warp
              float d[TY];
              slide_dists<PS, PCN, TY, EY>(Qr, Kr, l2, [&](int i, float v) { d[i] = v; });
#pragma unroll
              for (int i = 0; i < TY; ++i) {
                if (l2 ? !(d[i] > bar[i]) : !(d[i] < bar[i])) {
                  wbuf[(st * TY + i) * 32 + lane] = d[i];
                  bits |= uint64_t(1) << (st * TY + i);
                }
              }
            }
            // the waiting distances go into their lists (one copy of this code, outside the
            // unrolled steps)
            if (__any_sync(kAll, bits != 0)) {
              const uint64_t had = bits;
              // the distance of row i, step st, column col into the list of query (i, col):
              // TopK's insertion, from the end, while the value goes before the entry
              auto insert = [&](int st, int i, int col) {
                const int dy = dyc + st;
                const int2 g = wst[warp][i][col];
                const int ii = dy - g.x, jj = dx - g.y;
                if (static_cast<unsigned>(ii) > static_cast<unsigned>(span) ||
                    static_cast<unsigned>(jj) > static_cast<unsigned>(span) ||
                    (exclude_self && s == t && dy == 0 && dx == 0))
                  return;  // not a candidate of that query
                const float vd = wbuf[(st * TY + i) * 32 + col];
                const int vid = (fw + ii) * ws + jj;
                float* ld = wLd + (i * TX + col) * K;
                int* li = wLi + (i * TX + col) * K;
                int pos = K - 1;
                if (!goes_before(vd, vid, ld[pos], li[pos], l2)) return;
                while (pos > 0 && goes_before(vd, vid, ld[pos - 1], li[pos - 1], l2)) {
                  ld[pos] = ld[pos - 1];
                  li[pos] = li[pos - 1];
                  --pos;
                }
                ld[pos] = vd;
                li[pos] = vid;
              };
              if (!balanced) {
                // each lane inserts its own: as many passes as the busiest lane has distances
#pragma unroll 1
                while (bits) {
                  const int bit = __ffsll(static_cast<long long>(bits)) - 1;
                  bits &= bits - 1;
                  const int st = bit / TY;
                  insert(st, bit - st * TY, lane);
                }
              } else {
                // rounds by rank: round n inserts the n-th waiting distance of every query,
                // the warp's lanes sharing them (a query's list is touched once a round), as
                // many passes a round as the round has distances over 32
                unsigned rm[TY];  // the steps at which row i's distance waits
#pragma unroll
                for (int i = 0; i < TY; ++i) {
                  rm[i] = 0;
#pragma unroll
                  for (int st = 0; st < kSlideRows; ++st)
                    rm[i] |= unsigned((bits >> (st * TY + i)) & 1u) << st;
                }
                bits = 0;
                uint16_t* slots = wslot[warp];
#pragma unroll 1
                while (true) {
                  int n = 0;
#pragma unroll
                  for (int i = 0; i < TY; ++i) n += rm[i] != 0;
                  if (!__any_sync(kAll, n != 0)) break;
                  int incl = n;  // inclusive prefix sum of n over the lanes
#pragma unroll
                  for (int o = 1; o < 32; o <<= 1) {
                    const int v = __shfl_up_sync(kAll, incl, o);
                    if (lane >= o) incl += v;
                  }
                  const int total = __shfl_sync(kAll, incl, 31);
                  int at = incl - n;
#pragma unroll
                  for (int i = 0; i < TY; ++i) {
                    if (rm[i]) {
                      const int st = __ffs(rm[i]) - 1;
                      rm[i] &= rm[i] - 1;
                      slots[at++] = static_cast<uint16_t>(st << 8 | i << 5 | lane);
                    }
                  }
                  __syncwarp();
#pragma unroll 1
                  for (int e = lane; e < total; e += 32) {
                    const int code = slots[e];
                    insert(code >> 8, (code >> 5) & 7, code & 31);
                  }
                  __syncwarp();  // the lists and slots are done with for this round
                }
              }
              // the new bars
              if (had) {
#pragma unroll
                for (int i = 0; i < TY; ++i) {
                  if ((act >> i) & 1u) {
                    const int last = (i * TX + lane) * K + K - 1;
                    bar[i] = wLi[last] == kEmpty ? NAN : wLd[last];
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < TY; ++i) {
    if (!((act >> i) & 1u)) continue;
    const int64_t q = (tr * nH + gi0 + i) * nW + gj;
    const float* ld = wLd + (i * TX + lane) * K;
    const int* li = wLi + (i * TX + lane) * K;
    float* dq = dout + (bh * Q + q) * K;
    int64_t* oq = out + (bh * Q + q) * K;
    for (int j = 0; j < K; ++j) {
      const bool empty = li[j] == kEmpty;
      dq[j] = empty ? (l2 ? INFINITY : -INFINITY) : ld[j];
      oq[j] = empty ? 0 : li[j];
    }
  }
}

}  // namespace

// The key budget of topk_slide_warp_kernel: the keys of a whole window of offsets for tiles
// whose windows coincide, at most 12 Ki floats, at least one offset's
int64_t slide_warp_kcap(int64_t ps, int64_t PC, int64_t ws) {
  const int64_t EYB = kWarpTiles * kWarpTY + ps - 1;
  const int64_t whole = PC * (EYB + ws - 1) * odd_pitch(int(32 + ws - 1));
  return std::max<int64_t>(std::min<int64_t>(whole, 12 * 1024), PC * EYB * odd_pitch(32));
}

// Its shared memory for k and a key budget of kcap floats: the dynamic part (lists and keys)
// and in all (with the queues, window starts and the balanced insertion's slots)
int64_t slide_warp_smem(int64_t ps, int64_t PC, int64_t k, int64_t kcap, bool total) {
  const int64_t TX = 32 - (ps - 1), rows = int64_t(kWarpTiles) * kWarpTY;
  const int64_t dyn = rows * TX * k * 8 + kcap * 4;
  return total ? dyn + rows * 32 * (4 * kSlideRows + 8 + 2) + 16 : dyn;
}

// Its launch grid's blocks
int64_t slide_warp_blocks(at::IntArrayRef grid, int64_t ps, int64_t bh) {
  const dim3 b = tile_blocks(grid, kWarpTiles * kWarpTY, 32 - (ps - 1), bh);
  return int64_t(b.x) * b.y * b.z;
}

// Host side of topk_slide_warp_kernel (the caller, search_topk_slide_cuda, checked the case
// and the shared memory); the outputs as search_topk_slide_cuda's.
void search_topk_slide_warp_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                 const at::Tensor& cen, const at::Tensor& frm,
                                 at::IntArrayRef grid, int64_t ps, int64_t pt, int64_t nheads,
                                 int64_t k, bool l2, bool exclude_self, int64_t ws, int64_t kcap,
                                 at::Tensor& ids, at::Tensor& dists) {
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = grid[3] * grid[4] * grid[5], nt = frm.size(1);
  const int64_t PC = pt * (C / nheads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int smem = static_cast<int>(slide_warp_smem(ps, PC, k, kcap, false));
  // NAPARI_STNLS_CUDA_SLIDE_ORDER=0 visits the offsets in plain order instead of
  // centre-first (read on every call, for timing; no bit changes)
  const char* order = std::getenv("NAPARI_STNLS_CUDA_SLIDE_ORDER");
  const bool centre_first = !(order && *order && std::atoi(order) == 0);
  // NAPARI_STNLS_CUDA_SLIDE_BAL=1 inserts the waiting distances in rounds by rank shared by
  // the warp's lanes (read on every call; no bit changes; off until measured on a GPU)
  const char* bal = std::getenv("NAPARI_STNLS_CUDA_SLIDE_BAL");
  const bool balanced = bal && *bal && std::atoi(bal) == 1;
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    auto launch = [&](auto pcn, auto psn) {
      constexpr int PS = decltype(psn)::value, PCN = decltype(pcn)::value;
      auto kern = topk_slide_warp_kernel<scalar_t, PCN, PS>;
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      const dim3 blocks = tile_blocks(grid, kWarpTiles * kWarpTY, 32 - (PS - 1), B * nheads);
      kern<<<blocks, kWarpTiles * 32, smem, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), cen.data_ptr<float>(),
          frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws), grid[0], grid[1], grid[2],
          grid[4], grid[5], nheads, int(k), l2, exclude_self, int(kcap), centre_first, balanced,
          ids.data_ptr<int64_t>(), dists.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    dispatch_slide(PC, ps, launch);
  };
  dispatch_slide_type(queries.scalar_type(), run);
}

}  // namespace stnls::search_cuda
