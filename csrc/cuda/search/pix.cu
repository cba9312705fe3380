// The single-pixel kernel of whole-pixel grids (see common.cuh), chosen by box.cu.
#include "common.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

// Single-pixel patches (ps = 1, pt = 1) on whole-pixel grids: every candidate is one pixel, so
// the box sums buy nothing and the cost is the C channels of each candidate (workload B:
// C = 64, dot products). For a tile of kPY x kPX queries of one frame and each search frame,
// the pixels their windows can reach are staged once in shared memory, pixel-major (see
// kPixPitch), and each thread compares its query's channels, held in registers, with its
// ws x ws candidates, kPixCands at a time, keeping its top k. A block whose
// windows reach beyond the staged capacity (flows that vary a lot within the tile) reads
// those candidates from global memory instead: same values, added in the same order.
constexpr int kPY = 8, kPX = 32;
constexpr int kPixBatch = 8;  // staging loads in flight per lane
constexpr int kPixCands = 4;  // candidates per distance step

// Pixels staged pixel-major, kPixPitch<acc_t, CMAX> values apart: float pitches of CMAX + 4
// let a thread read 4 channels with one 16-byte load, and the 8 lanes of each quarter-warp
// (consecutive pixels) fall on distinct banks; double pitches are odd for the same reason.
// Channels Ch..CMAX-1 are staged as zeros (and the query's are zero), so every candidate
// sums all CMAX channels with no tests.
template <typename acc_t, int CMAX>
constexpr int kPixPitch = std::is_same<acc_t, float>::value ? CMAX + 4 : CMAX + 1;

// Distances of the query (channels qr) to NC candidates of one staged window row, candidate
// n at col + n * step. Independent accumulators (NC candidates, two partial sums each) keep
// the shared-memory loads and multiply-adds in flight: with one block of 8 warps per SM, one
// dependent chain per candidate left the schedulers idle.
template <int NC, int CMAX, bool L2, typename acc_t>
__device__ __forceinline__ void pix_dists_(const acc_t* qr, const acc_t* __restrict__ col,
                                           int step, acc_t* d) {
  acc_t part[NC][2];
#pragma unroll
  for (int n = 0; n < NC; ++n) part[n][0] = part[n][1] = acc_t(0);
  auto add = [&](int n, int c, acc_t kval) {
    if constexpr (L2) {
      const acc_t e = qr[c] - kval;
      part[n][c & 1] += e * e;
    } else {
      part[n][c & 1] += qr[c] * kval;
    }
  };
  if constexpr (std::is_same<acc_t, float>::value) {
#pragma unroll
    for (int c = 0; c < CMAX; c += 4) {
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        const float4 k4 = *reinterpret_cast<const float4*>(col + n * step + c);
        add(n, c, k4.x);
        add(n, c + 1, k4.y);
        add(n, c + 2, k4.z);
        add(n, c + 3, k4.w);
      }
    }
  } else {
#pragma unroll
    for (int c = 0; c < CMAX; ++c) {
#pragma unroll
      for (int n = 0; n < NC; ++n) add(n, c, col[n * step + c]);
    }
  }
#pragma unroll
  for (int n = 0; n < NC; ++n) d[n] = part[n][0] + part[n][1];
}

template <int NC, int CMAX, typename acc_t>
__device__ __forceinline__ void pix_dists(const acc_t* qr, const acc_t* col, int step, bool l2,
                                          acc_t* d) {
  if (l2)
    pix_dists_<NC, CMAX, true>(qr, col, step, d);
  else
    pix_dists_<NC, CMAX, false>(qr, col, step, d);
}

// (one block per SM: the staged pixels take most of shared memory; with the whole register
// file to use, the 64 channels held per thread do not spill)
template <typename scalar_t, typename acc_t, int KMAX, int CMAX>
__global__ void __launch_bounds__(kPY* kPX, 1)
    topk_pix_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                    const acc_t* __restrict__ centres, const int64_t* __restrict__ frames, int64_t T,
                    int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt, int ws, int s1,
                    int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW, int s0,
                    int64_t nh, int K, bool l2, bool exclude_self, int capacity,
                    int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // RH * RW <= capacity staged pixels, kPixPitch<acc_t, CMAX> values each
  acc_t* S = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + kPX - 1) / kPX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int ty = threadIdx.x / kPX, tx = threadIdx.x % kPX;
  const int64_t gi = tile_i * kPY + ty, gj = tile_j * kPX + tx;
  const bool active = gi < nH && gj < nW;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi * s0, qx = gx0 + gj * s0;
  const int64_t py0 = gy0 + tile_i * kPY * s0, px0 = gx0 + tile_j * kPX * s0;
  const int half = ws / 2;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const scalar_t* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;

  acc_t qr[CMAX];
  {
    const scalar_t* qp = qdata + b * video + ((t * H + reflect(qy, H)) * W + reflect(qx, W)) * C + c0;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) qr[c] = (active && c < Ch) ? static_cast<acc_t>(qp[c]) : acc_t(0);
  }
  TopK<acc_t, int, KMAX> top;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    int gy = 0, gx = 0;  // offset of the window's first candidate from the query
    if (active) window_start(centres + ((b * Q + q) * nt + f) * 2, half, s1, qy, qx, &gy, &gx);
    int lo[2], hi[2];
    block_extent(active, ty * s0 + gy, tx * s0 + gx, gmin, gmax, lo, hi);
    const int ylo = lo[0], xlo = lo[1];
    const int RH = hi[0] + (ws - 1) * s1 - ylo + 1, RW = hi[1] + (ws - 1) * s1 - xlo + 1;
    if (ylo == INT_MAX) continue;  // no active thread in this tile (uniform across the block)
    const bool staged = static_cast<int64_t>(RH) * RW <= capacity;
    if (staged) {
      // a warp per staged row (stage_pixels)
      stage_pixels<CMAX, kPixBatch>(S, kv, s, H, W, C, c0, Ch, py0 + ylo, px0 + xlo, RH, RW,
                                    kPixPitch<acc_t, CMAX>, threadIdx.x >> 5, kPY * kPX / 32,
                                    threadIdx.x & 31);
      __syncthreads();
    }
    if (active && staged) {
      constexpr int CP = kPixPitch<acc_t, CMAX>;
      const int id0 = static_cast<int>(f) * ws * ws;
      for (int ii = 0; ii < ws; ++ii) {
        const int dy = gy + ii * s1;
        const acc_t* row = S + ((ty * s0 + dy - ylo) * RW + (tx * s0 + gx - xlo)) * CP;
        const bool self_row = exclude_self && s == t && dy == 0;
        int jj = 0;
        for (; jj + kPixCands <= ws; jj += kPixCands) {
          acc_t d[kPixCands];
          pix_dists<kPixCands, CMAX>(qr, row + jj * s1 * CP, s1 * CP, l2, d);
#pragma unroll
          for (int n = 0; n < kPixCands; ++n)
            if (!(self_row && gx + (jj + n) * s1 == 0)) top.insert(d[n], id0 + ii * ws + jj + n, K, l2);
        }
        for (; jj < ws; ++jj) {
          acc_t d[1];
          pix_dists<1, CMAX>(qr, row + jj * s1 * CP, 0, l2, d);
          if (!(self_row && gx + jj * s1 == 0)) top.insert(d[0], id0 + ii * ws + jj, K, l2);
        }
      }
    } else if (active) {
      for (int ii = 0; ii < ws; ++ii) {
        const int dy = gy + ii * s1;
        for (int jj = 0; jj < ws; ++jj) {
          const int dx = gx + jj * s1;
          if (exclude_self && s == t && dy == 0 && dx == 0) continue;
          // in the staged path's order of additions (two partial sums; there the channels
          // past Ch add zeros)
          acc_t part[2] = {0, 0};
          const scalar_t* kp =
              kv + ((s * H + reflect(qy + dy, H)) * W + reflect(qx + dx, W)) * C + c0;
#pragma unroll
          for (int c = 0; c < CMAX; ++c) {
            if (c < Ch) {
              const acc_t kval = static_cast<acc_t>(kp[c]);
              if (l2) {
                const acc_t e2 = qr[c] - kval;
                part[c & 1] += e2 * e2;
              } else {
                part[c & 1] += qr[c] * kval;
              }
            }
          }
          const acc_t d = part[0] + part[1];
          top.insert(d, (static_cast<int>(f) * ws + ii) * ws + jj, K, l2);
        }
      }
    }
    if (staged) __syncthreads();  // S is rewritten for the next frame
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, l2);
}

}  // namespace

// Host side of topk_pix_kernel. The staging capacity covers the windows of a tile when the
// centres move together (no flow, or a flow constant over the tile) plus a margin of 8 pixels
// each way for flows that vary within it, within the device's shared memory per block (at most
// 200 KiB).
std::tuple<at::Tensor, at::Tensor> search_topk_pix_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                const at::Tensor& centres, const at::Tensor& frames,
                                at::IntArrayRef grid, int64_t stride0, int64_t nheads, int64_t k,
                                bool l2, bool exclude_self, int64_t ws) {
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = grid[3] * grid[4] * grid[5], nt = frames.size(1), s1 = grid[6];
  auto ids = at::empty({B, nheads, Q, k}, frames.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  const int64_t Ch = C / nheads;
  const bool dbl = queries.scalar_type() == at::kDouble;
  const int64_t acc_bytes = dbl ? 8 : 4;
  const int64_t cmax = channel_capacity(Ch, 4);  // dispatch_channels<4>'s
  const int64_t pitch = cmax + (dbl ? 1 : 4);  // kPixPitch
  const int64_t span = (ws - 1) * s1 + 1;
  int64_t margin = 8;
  auto cap = [&](int64_t m) {
    return ((kPY - 1) * stride0 + span + m) * ((kPX - 1) * stride0 + span + m);
  };
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t kSmem = std::min<int64_t>(200 * 1024, int64_t(optin) - 1024);
  auto bytes = [&](int64_t c) { return c * pitch * acc_bytes; };
  while (margin > 0 && bytes(cap(margin)) > kSmem) margin /= 2;
  // a capacity of 0 (huge windows) reads every candidate from global memory
  const int64_t capacity = bytes(cap(margin)) <= kSmem ? cap(margin) : 0;
  const size_t smem = size_t(bytes(capacity));
  const auto frm = frames.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks = tile_blocks(grid, kPY, kPX, B * nheads);
  TORCH_CHECK(nt * ws * ws < INT_MAX, "search window too large");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_pix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    dispatch_channels<4>(Ch, [&](auto cmax) {
      constexpr int CM = decltype(cmax)::value;
      auto kern = topk_pix_kernel<scalar_t, acc_t, 16, CM>;
      TORCH_CHECK((kPixPitch<acc_t, CM>) == pitch, "search_topk_pix_cuda: pitch mismatch");
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      kern<<<blocks, kPY * kPX, smem, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), cen.data_ptr<acc_t>(),
          frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws), int(s1), grid[0], grid[1], grid[2],
          grid[4], grid[5], int(stride0), nheads, int(k), l2, exclude_self, int(capacity),
          ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dists, ids};
}

}  // namespace stnls::search_cuda
