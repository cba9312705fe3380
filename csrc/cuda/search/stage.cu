// The staged kernel of whole-pixel grids (see common.cuh), chosen by box.cu.
#include "common.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

// Whole-pixel grids, staged (topk_stage_kernel): the box sums of topk_box_kernel, with
//  * the query tile and its halo staged once per search frame, and the key pixels a run of
//    offsets reaches staged once per run, in shared memory (so no mirroring or global read in
//    the inner loops), channel-major, rows at odd pitches (no bank conflicts);
//  * the offsets spread over the warps: each warp takes one offset per round and computes the
//    difference image, the row sums and the column sums of the whole tile on its own (only
//    __syncwarp), then one block barrier hands the kSW distances of each query to the thread
//    that keeps its top k. One barrier per kSW offsets instead of three per offset; the
//    distance buffer is double-buffered so that no second barrier is needed.
// With ps in {3, 5, 7}, stride0 = 1 and dilation 1 (PS > 0) the sums run in registers: a lane
// holds one row of the difference image and sums it, then a lane holds half a column of row
// sums and sums that; the generic path (PS = 0) goes through shared memory. Both add in the
// same order, so they give the same distances.
// A tile whose windows spread wider than the key budget (flows varying within the tile) is
// staged in runs of fewer offsets. The top k orders by (distance, id), so the order of runs
// does not matter.
// (the tile, kSY x kSX queries and kSW warps, is in tile.cuh)

// PCN: frames x channels per head when it is 1 or 3 (unrolled), else 0 (any).
// PS: the patch size of the register path, or 0 (generic).
// (three blocks per SM: ptxas then keeps every path under 85 registers without spilling; left
// to itself it capped them at 64 and spilled)
template <typename scalar_t, typename acc_t, int KM, int PCN, int PS>
__global__ void __launch_bounds__(kSY* kSX, 3)
    topk_stage_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                      const acc_t* __restrict__ centres, const int64_t* __restrict__ frames,
                      int64_t T, int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt, int ws,
                      int s1, int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW, int s0,
                      int ps, int pt, int dil, int64_t nh, int K, bool l2, bool exclude_self,
                      int DH, int DW, int64_t kcap, int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char stage_smem[];
  constexpr int kN = kSY * kSX;
  const int Ch = static_cast<int>(C / nh), PC = pt * Ch;
  const int QP = odd_pitch(DW), QA = DH * QP;
  const int DP = ((DW + 31) / 32) * 32 + 1;  // odd pitch of the difference images
  acc_t* Qs = reinterpret_cast<acc_t*>(stage_smem);  // PC x DH x QP
  acc_t* Dw = Qs + PC * QA;                           // kSW x DH x DP (generic path only)
  acc_t* Rw = Dw + (PS > 0 ? 0 : kSW * DH * DP);      // kSW x DH x kRP
  acc_t* Ds = Rw + kSW * DH * kRP;                    // 2 x kSW x kN
  acc_t* Ks = Ds + 2 * kSW * kN;                      // PC x KH x KP, at most kcap
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + kSX - 1) / kSX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t gi = tile_i * kSY + threadIdx.x / kSX, gj = tile_j * kSX + threadIdx.x % kSX;
  const bool active = gi < nH && gj < nW;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi * s0, qx = gx0 + gj * s0;
  const int r = ps / 2, half = ws / 2, span = (ws - 1) * s1;
  const int64_t oy0 = gy0 + tile_i * kSY * s0 - dil * r, ox0 = gx0 + tile_j * kSX * s0 - dil * r;
  const int64_t c0 = static_cast<int64_t>(h) * Ch, video = T * H * W * C;
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;

  TopK<acc_t, int, KM> top;
  int parity = 0;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    int gy = 0, gx = 0;  // offset of this query's first candidate
    if (active) window_start(centres + ((b * Q + q) * nt + f) * 2, half, s1, qy, qx, &gy, &gx);
    int lo[2], hi[2];
    block_extent(active, gy, gx, gmin, gmax, lo, hi);
    const int ylo = lo[0], yhi = hi[0] + span;
    const int xlo = lo[1], xhi = hi[1] + span;
    // every window of the tile is the same (no flow, or one constant over the tile): each
    // offset of the union is in each query's window
    const bool same = lo[0] == hi[0] && lo[1] == hi[1] && s1 == 1;
    if (ylo > yhi) continue;  // no active thread in this tile (uniform across the block)
    // The query tile and halo: every warp is past the last barrier of the previous frame's
    // rounds, so nobody reads Qs any more.
    for (int e = threadIdx.x; e < PC * DH * DW; e += blockDim.x) {
      const int pc = e / (DH * DW), pix = e - pc * (DH * DW), u = pix / DW, v = pix - u * DW;
      const int dt = pc / Ch, c = pc - dt * Ch;
      const int64_t fr = reflect(t + dt, T);
      Qs[pc * QA + u * QP + v] = static_cast<acc_t>(
          qv[((fr * H + reflect(oy0 + u, H)) * W + reflect(ox0 + v, W)) * C + c0 + c]);
    }
    // Runs of cy x cx offsets whose key pixels fit in kcap.
    const int ny = yhi - ylo + 1, nx = xhi - xlo + 1;
    int cy = ny, cx = nx;
    while (int64_t(PC) * (DH + cy - 1) * odd_pitch(DW + cx - 1) > kcap) {
      if (cy > 1)
        cy = (cy + 1) / 2;
      else
        cx = (cx + 1) / 2;
    }
    for (int ya = ylo; ya <= yhi; ya += cy) {
      const int my = min(cy, yhi - ya + 1);
      for (int xa = xlo; xa <= xhi; xa += cx) {
        const int mx = min(cx, xhi - xa + 1);
        const int KH = DH + my - 1, KW = DW + mx - 1, KP = odd_pitch(KW), KA = KH * KP;
        // Every warp has passed the round barrier after its last read of Ks.
        for (int e = threadIdx.x; e < PC * KH * KW; e += blockDim.x) {
          const int pc = e / (KH * KW), pix = e - pc * (KH * KW), u = pix / KW, v = pix - u * KW;
          const int dt = pc / Ch, c = pc - dt * Ch;
          const int64_t fr = reflect(s + dt, T);
          Ks[pc * KA + u * KP + v] = static_cast<acc_t>(
              kv[((fr * H + reflect(oy0 + ya + u, H)) * W + reflect(ox0 + xa + v, W)) * C + c0 +
                 c]);
        }
        __syncthreads();  // Qs and Ks are staged
        const int no = my * mx;
        for (int base = 0; base < no; base += kSW) {
          acc_t* Dbuf = Ds + parity * kSW * kN;
          const int o = base + warp;
          if (o < no) {
            const int oy = o / mx, ox = o - oy * mx;
            acc_t* R = Rw + warp * DH * kRP;
            if constexpr (PS > 0) {
              constexpr int DWc = kSX + PS - 1, DHc = kSY + PS - 1, RC = kSY / 2 + PS - 1;
              // 1-2. lane u: row u of the difference image at offset (ya + oy, xa + ox), in
              //      registers, and its sums over every window of PS columns
              if (lane < DHc) {
                const acc_t* qr = Qs + lane * QP;
                const acc_t* kr = Ks + (lane + oy) * KP + ox;
                acc_t Dr[DWc];
#pragma unroll
                for (int v = 0; v < DWc; ++v) {
                  acc_t acc = 0;
                  if constexpr (PCN > 0) {
#pragma unroll
                    for (int pc = 0; pc < PCN; ++pc) term<acc_t>(acc, qr[pc * QA + v], kr[pc * KA + v], l2);
                  } else {
                    for (int pc = 0; pc < PC; ++pc) term<acc_t>(acc, qr[pc * QA + v], kr[pc * KA + v], l2);
                  }
                  Dr[v] = acc;
                }
                acc_t* Rr = R + lane * kRP;
#pragma unroll
                for (int j = 0; j < kSX; ++j) {
                  acc_t acc = 0;
#pragma unroll
                  for (int bx = 0; bx < PS; ++bx) acc += Dr[j + bx];
                  Rr[j] = acc;
                }
              }
              __syncwarp();
              // 3. lane (j, half): column j's sums over every window of PS rows, for the
              //    tile's rows 8 * half ... 8 * half + 7
              const int j = lane & (kSX - 1), hl = lane >> 4;
              const acc_t* col = R + hl * (kSY / 2) * kRP + j;
              acc_t Rc[RC];
#pragma unroll
              for (int a = 0; a < RC; ++a) Rc[a] = col[a * kRP];
#pragma unroll
              for (int i = 0; i < kSY / 2; ++i) {
                acc_t acc = 0;
#pragma unroll
                for (int a = 0; a < PS; ++a) acc += Rc[i + a];
                Dbuf[warp * kN + (hl * (kSY / 2) + i) * kSX + j] = acc;
              }
            } else {
              acc_t* D = Dw + warp * DH * DP;
              // 1. the difference image of offset (ya + oy, xa + ox) over the tile and halo:
              //    each lane takes a column, the rows unrolled for independent loads
              for (int v = lane; v < DW; v += 32) {
                const acc_t* qc = Qs + v;
                const acc_t* kc = Ks + oy * KP + ox + v;
#pragma unroll 4
                for (int u = 0; u < DH; ++u) {
                  acc_t acc = 0;
                  if constexpr (PCN > 0) {
#pragma unroll
                    for (int pc = 0; pc < PCN; ++pc)
                      term<acc_t>(acc, qc[pc * QA + u * QP], kc[pc * KA + u * KP], l2);
                  } else {
                    for (int pc = 0; pc < PC; ++pc)
                      term<acc_t>(acc, qc[pc * QA + u * QP], kc[pc * KA + u * KP], l2);
                  }
                  D[u * DP + v] = acc;
                }
              }
              __syncwarp();
              // 2. sums along rows: the half-warps take every other row
              const int j = lane & (kSX - 1), hl = lane >> 4;
#pragma unroll 2
              for (int u = hl; u < DH; u += 2) {
                const acc_t* row = D + u * DP + j * s0;
                acc_t acc = 0;
                for (int bx = 0; bx < ps; ++bx) acc += row[dil * bx];
                R[u * kRP + j] = acc;
              }
              __syncwarp();
              // 3. sums along columns: the distances of the whole tile at this offset
#pragma unroll 2
              for (int i = hl; i < kSY; i += 2) {
                const acc_t* col = R + i * s0 * kRP + j;
                acc_t acc = 0;
                for (int a = 0; a < ps; ++a) acc += col[dil * a * kRP];
                Dbuf[warp * kN + i * kSX + j] = acc;
              }
            }
          }
          __syncthreads();  // the round's distances are in Dbuf
          if (active) {
            const int nw = min(kSW, no - base), fw = static_cast<int>(f) * ws;
            int oy = base / mx, ox = base - oy * mx;
            for (int w = 0; w < nw; ++w) {
              const int dy = ya + oy, dx = xa + ox;
              const int ii = dy - gy, jj = dx - gx;
              if (same || (static_cast<unsigned>(ii) <= static_cast<unsigned>(span) &&
                           static_cast<unsigned>(jj) <= static_cast<unsigned>(span) &&
                           (s1 == 1 || (ii % s1 == 0 && jj % s1 == 0))))
                if (!(exclude_self && s == t && dy == 0 && dx == 0))
                  top.insert(Dbuf[w * kN + threadIdx.x],
                             s1 == 1 ? (fw + ii) * ws + jj : (fw + ii / s1) * ws + jj / s1, K, l2);
              if (++ox == mx) {
                ox = 0;
                ++oy;
              }
            }
          }
          parity ^= 1;
        }
      }
    }
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, l2);
}

}  // namespace

// Host side of topk_stage_kernel (k <= 16; shared memory sized by the caller).
std::tuple<at::Tensor, at::Tensor> search_topk_stage_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                  const at::Tensor& centres, const at::Tensor& frames,
                                  at::IntArrayRef grid, int64_t stride0, int64_t ps, int64_t pt,
                                  int64_t dilation, int64_t nheads, int64_t k, bool l2,
                                  bool exclude_self, int64_t ws, int DH, int DW, int64_t kcap,
                                  int64_t smem, int fast) {
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = grid[3] * grid[4] * grid[5], nt = frames.size(1), s1 = grid[6];
  auto ids = at::empty({B, nheads, Q, k}, frames.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  const auto frm = frames.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks = tile_blocks(grid, kSY, kSX, B * nheads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_stage_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto launch = [&](auto pcn, auto psn) {
      auto kern = topk_stage_kernel<scalar_t, acc_t, 16, decltype(pcn)::value, decltype(psn)::value>;
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      kern<<<blocks, kSY * kSX, smem, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), cen.data_ptr<acc_t>(),
          frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws), int(s1), grid[0], grid[1],
          grid[2], grid[4], grid[5], int(stride0), int(ps), int(pt), int(dilation), nheads,
          int(k), l2, exclude_self, DH, DW, kcap, ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto with_ps = [&](auto pcn) {
      if (fast == 3)
        launch(pcn, std::integral_constant<int, 3>{});
      else if (fast == 5)
        launch(pcn, std::integral_constant<int, 5>{});
      else if (fast == 7)
        launch(pcn, std::integral_constant<int, 7>{});
      else
        launch(pcn, std::integral_constant<int, 0>{});
    };
    const int64_t PC = pt * (C / nheads);
    if (PC == 3)
      with_ps(std::integral_constant<int, 3>{});
    else if (PC == 1)
      with_ps(std::integral_constant<int, 1>{});
    else
      with_ps(std::integral_constant<int, 0>{});
  });
  return {dists, ids};
}

}  // namespace stnls::search_cuda
