// The single-pixel search on the matrix units (see common.cuh), chosen by box.cu where
// NAPARI_STNLS_CUDA_PIX_TC=1: float32 videos, ps = pt = 1, dense grids (stride0 = stride1 = 1),
// k <= 16, at most 64 channels a head. It returns topk_pix_kernel's bits (pix.cu):
//
// 1. Scores on the matrix units. A block takes 8 x 8 queries of one frame; each of its 4 warps
//    takes 2 rows of them, one 16-row tile of `mma.sync.m16n8k8` in TF32. For each search frame
//    the pixels the block's windows reach are staged in shared memory (channels padded to CP
//    with zeros), with their float32 squared norms; the warp multiplies its 16 queries by 8
//    staged pixels at a time along every row its windows reach. The products go through a
//    shared tile to lanes 0-15, one query each, which keep the M = 2k best candidates of their
//    window by score: q.k for products, |k|^2 - 2 q.k for L2 (|q|^2 is the same for all).
// 2. The float32 re-ranking. Each query's M kept candidates get their float32 distance, added
//    in topk_pix_kernel's order (pix_exact below), and the k best of those by (distance, id)
//    are its answer where a bound proves that no candidate left out can reach them: every
//    score is within a bound of its exact value that the norms give (TF32 inputs rounded to
//    nearest, relative error 2^-11; products exact in float32; sums of magnitudes with
//    gamma_n = n u / (1 - n u), u = 2^-23, twice float32's unit, since the matrix units'
//    adds are not specified as rounded to nearest), and every float32 distance within
//    gamma of its exact value. benchmarks/bench_tc_tolerance.py derives the bound and
//    measures how often it holds (every query on noisy features with M = 2k).
// 3. The fallback. Queries the bound leaves unproven, blocks whose windows spread past the
//    staging buffer (flows that vary within the tile) and inputs that are not finite are
//    flagged, and topk_pix_redo_kernel searches them again in float32, reading the keys from
//    global memory in topk_pix_kernel's order.
#include <cfloat>

#include "common.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

constexpr int kTcY = 8, kTcX = 8;       // queries a block
constexpr int kTcWarps = 4;             // 2 rows of 8 queries each: one m16 tile
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcNB = 4;                // n-tiles (8 pixels each) scored between two list passes
constexpr int kTcSP = kTcNB * 8 + 1;    // pitch of a warp's score tile (odd: the owners' reads)
constexpr int kTcBatch = 8;             // staging loads in flight a lane

// staged pixels, channels padded to CP, CP + 4 floats apart: the 8 pixels x 4 channels of a B
// fragment fall on 32 distinct banks for every CP in {8, 16, 32, 64}
template <int CP>
constexpr int kTcPitch = CP + 4;

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// c += a b on a 16 x 8 x 8 TF32 tile (fragments in the PTX ISA's layout for m16n8k8: lane
// (g, t) = (lane / 4, lane % 4) holds a = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4];
// b = B[t][g], B[t+4][g]; c = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1])
__device__ __forceinline__ void mma_tf32(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The float32 distance of topk_pix_kernel between the query qp and the key kp (Ch channels):
// two partial sums over even and odd channels, then their sum (the channels it pads with
// zeros add exact zeros)
__device__ __forceinline__ float pix_exact(const float* __restrict__ qp,
                                           const float* __restrict__ kp, int Ch, bool l2) {
  float part[2] = {0.f, 0.f};
  for (int c = 0; c < Ch; ++c) {
    const float qv = __ldg(qp + c), kv = __ldg(kp + c);
    if (l2) {
      const float e = qv - kv;
      part[c & 1] += e * e;
    } else {
      part[c & 1] += qv * kv;
    }
  }
  return part[0] + part[1];
}

// gamma_n = n u / (1 - n u) for u = 2^-24 (float32 rounding to nearest)
__device__ __forceinline__ double gamma32(int n) {
  const double nu = n * 0x1p-24;
  return nu / (1 - nu);
}

// Where the query grid's query q of (b, head) searches frame f: the frame s and the offset
// (gy, gx) of its window's first candidate from the query (tile.cuh's window_start)
struct Window {
  int64_t s;
  int gy, gx;
};

__device__ __forceinline__ Window window_of(const float* centres, const int64_t* frames,
                                            int64_t b, int64_t Q, int64_t q, int64_t q_first,
                                            int64_t nt, int64_t f, int half, int64_t qy,
                                            int64_t qx) {
  Window w;
  w.s = frames[q_first * nt + f];
  window_start(centres + ((b * Q + q) * nt + f) * 2, half, 1, qy, qx, &w.gy, &w.gx);
  return w;
}

// The key pixel of candidate (ii, jj) of window w, channels of head c0
__device__ __forceinline__ const float* key_at(const float* kv, const Window& w, int64_t H,
                                               int64_t W, int64_t C, int64_t c0, int64_t qy,
                                               int64_t qx, int ii, int jj) {
  return kv + ((w.s * H + reflect(qy + w.gy + ii, H)) * W + reflect(qx + w.gx + jj, W)) * C + c0;
}

template <int CP>
__global__ void __launch_bounds__(kTcThreads, 2)
    topk_pix_tc_kernel(const float* __restrict__ qdata, const float* __restrict__ kdata,
                       const float* __restrict__ centres, const int64_t* __restrict__ frames,
                       int64_t T, int64_t H, int64_t W, int64_t C, int64_t Q, int64_t nt, int ws,
                       int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW, int64_t nh,
                       int K, int M, bool l2, bool exclude_self, int capacity,
                       int64_t* __restrict__ out, float* __restrict__ dout,
                       uint8_t* __restrict__ redo) {
  constexpr int P = kTcPitch<CP>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* S = reinterpret_cast<float*>(smem_raw);  // capacity x P staged values
  float* KN = S + capacity * P;                    // capacity squared norms
  __shared__ float ST[kTcWarps][16 * kTcSP];       // each warp's scores
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + kTcX - 1) / kTcX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int half = ws / 2;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const float* qv = qdata + b * video;
  const float* kv = kdata + b * video;
  const int64_t t = gt0 + tr, q_first = tr * nH * nW;
  const int64_t py0 = gy0 + tile_i * kTcY, px0 = gx0 + tile_j * kTcX;

  // lane m < 16 owns query m of the warp's tile: row 2 warp + m / 8, column m % 8
  const int m = lane & 15;
  const int ty = 2 * warp + (m >> 3), tx = m & 7;
  const int64_t gi = tile_i * kTcY + ty, gj = tile_j * kTcX + tx;
  const bool valid = gi < nH && gj < nW;
  const bool owner = lane < 16 && valid;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t qy = gy0 + gi, qx = gx0 + gj;

  // the A fragments: the warp's 16 queries (rows g and g + 8) in TF32, zeros past Ch
  uint32_t a[CP / 8][4];
  {
    auto qval = [&](int r, int c) -> float {
      const int rty = 2 * warp + (r >> 3), rtx = r & 7;
      const int64_t ri = tile_i * kTcY + rty, rj = tile_j * kTcX + rtx;
      if (c >= Ch || ri >= nH || rj >= nW) return 0.f;
      return qv[((t * H + reflect(gy0 + ri, H)) * W + reflect(gx0 + rj, W)) * C + c0 + c];
    };
#pragma unroll
    for (int kc = 0; kc < CP / 8; ++kc) {
      a[kc][0] = to_tf32(qval(g, kc * 8 + tq));
      a[kc][1] = to_tf32(qval(g + 8, kc * 8 + tq));
      a[kc][2] = to_tf32(qval(g, kc * 8 + tq + 4));
      a[kc][3] = to_tf32(qval(g + 8, kc * 8 + tq + 4));
    }
  }
  const float* qp = qv + ((t * H + reflect(qy, H)) * W + reflect(qx, W)) * C + c0;
  double qn2 = 0;  // |q|^2
  if (owner)
    for (int c = 0; c < Ch; ++c) {
      const double x = __ldg(qp + c);
      qn2 += x * x;
    }

  TopK<float, int, 32> top;  // the M best by score
  float kmax2 = 0.f;         // the largest squared key norm the query met
  bool bad = !(qn2 <= DBL_MAX);  // a query or key norm that is not finite
  bool overflow = false;     // (uniform over the block) a frame's windows past the capacity
  for (int64_t f = 0; f < nt; ++f) {
    Window w{0, 0, 0};
    if (owner) w = window_of(centres, frames, b, Q, q, q_first, nt, f, half, qy, qx);
    int lo[2], hi[2];
    block_extent(owner, ty + w.gy, tx + w.gx, gmin, gmax, lo, hi);
    const int ylo = lo[0], xlo = lo[1];
    if (ylo == INT_MAX) break;  // no valid query in the block: the same for every frame
    const int RH = hi[0] + ws - 1 - ylo + 1, RW = hi[1] + ws - 1 - xlo + 1;
    if (static_cast<int64_t>(RH) * RW > capacity) {
      overflow = true;
      break;
    }
    const int64_t s = frames[q_first * nt + f];
    stage_pixels<CP, kTcBatch>(S, kv, s, H, W, C, c0, Ch, py0 + ylo, px0 + xlo, RH, RW, P, warp,
                               kTcWarps, lane);
    __syncthreads();
    for (int p = threadIdx.x; p < RH * RW; p += kTcThreads) {
      float n2 = 0.f;
      for (int c = 0; c < Ch; ++c) {
        const float x = S[p * P + c];
        n2 += x * x;
      }
      KN[p] = n2;
    }
    __syncthreads();
    // the rows and columns of staged pixels the warp's windows reach
    const int wy = ty + w.gy - ylo, wx = tx + w.gx - xlo;  // the owner's window in S
    int by0 = owner ? wy : INT_MAX, bx0 = owner ? wx : INT_MAX;
    int by1 = owner ? wy + ws - 1 : INT_MIN, bx1 = owner ? wx + ws - 1 : INT_MIN;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      by0 = min(by0, __shfl_xor_sync(0xffffffffu, by0, o));
      bx0 = min(bx0, __shfl_xor_sync(0xffffffffu, bx0, o));
      by1 = max(by1, __shfl_xor_sync(0xffffffffu, by1, o));
      bx1 = max(bx1, __shfl_xor_sync(0xffffffffu, bx1, o));
    }
    const bool self_frame = exclude_self && s == t;
    const int id0 = static_cast<int>(f) * ws * ws;
    float* st = ST[warp];
    for (int y = by0; y <= by1; ++y) {  // by0 > by1 where the warp has no valid query
      const bool row_in = owner && static_cast<unsigned>(y - wy) < static_cast<unsigned>(ws);
      for (int x0 = bx0; x0 <= bx1; x0 += 8 * kTcNB) {
        const int nx = min(8 * kTcNB, bx1 - x0 + 1);  // columns of this pass
#pragma unroll
        for (int nb = 0; nb < kTcNB; ++nb) {
          if (nb * 8 >= nx) break;  // (uniform over the warp)
          const int xs = min(x0 + nb * 8 + g, RW - 1);  // past the box: read, never used
          const float* kp = S + (y * RW + xs) * P;
          float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int kc = 0; kc < CP / 8; ++kc)
            mma_tf32(c, a[kc], to_tf32(kp[kc * 8 + tq]), to_tf32(kp[kc * 8 + tq + 4]));
          st[g * kTcSP + nb * 8 + 2 * tq] = c[0];
          st[g * kTcSP + nb * 8 + 2 * tq + 1] = c[1];
          st[(g + 8) * kTcSP + nb * 8 + 2 * tq] = c[2];
          st[(g + 8) * kTcSP + nb * 8 + 2 * tq + 1] = c[3];
        }
        __syncwarp();
        if (row_in) {
          const int ii = y - wy;
          const bool self_row = self_frame && ii + w.gy == 0;
          for (int n = 0; n < nx; ++n) {
            const int jj = x0 + n - wx;
            if (static_cast<unsigned>(jj) >= static_cast<unsigned>(ws)) continue;
            if (self_row && jj + w.gx == 0) continue;
            const float dot = st[m * kTcSP + n];
            const float kn = KN[y * RW + x0 + n];
            kmax2 = fmaxf(kmax2, kn);
            bad |= !(kn <= FLT_MAX);
            top.insert(l2 ? kn - 2.f * dot : dot, id0 + ii * ws + jj, M, l2);
          }
        }
        __syncwarp();  // st is rewritten
      }
    }
    __syncthreads();  // S and KN are rewritten for the next frame
  }
  if (!owner) return;
  const int64_t row = bh * Q + q;
  if (overflow || bad) {
    redo[row] = 1;
    return;
  }
  // the float32 distances of the M kept, and their k best
  TopK<float, int, 16> fin;
  for (int e = 0; e < top.n; ++e) {
    const int id = top.id[e], f = id / (ws * ws), ii = (id / ws) % ws, jj = id % ws;
    const Window w = window_of(centres, frames, b, Q, q, q_first, nt, f, half, qy, qx);
    const float d = pix_exact(qp, key_at(kv, w, H, W, C, c0, qy, qx, ii, jj), Ch, l2);
    bad |= !(fabsf(d) <= FLT_MAX);  // (products that overflow: their order would matter)
    fin.insert(d, id, K, l2);
  }
  if (bad) {
    redo[row] = 1;
    return;
  }
  bool proven = top.n < M;  // every candidate was kept
  if (!proven && fin.n >= K) {
    // bound on |score - exact| over every candidate, from |q| and the largest |k|
    const double ut = 0x1p-11;  // TF32 rounding to nearest
    const double g_mma = gamma32(2 * (CP + 8));  // the matrix units' sums, u = 2^-23
    const double eps_dot = 2 * ut + ut * ut + 1.1 * g_mma * (1 + ut) * (1 + ut);
    const double k2 = double(kmax2) / (1 - gamma32(Ch + 1)) * (1 + 1e-12);
    const double S2 = sqrt(qn2) * sqrt(k2) * (1 + 1e-12);  // >= |q| |k| for every key
    const double bar = top.worst_d, dk = fin.d[K - 1];
    // values flushed to zero (the build flushes float32 denormals): each term off by at most
    // 2^-126 times a factor of at most |q| + |k|, and sums that underflow
    const double tiny = (Ch + 8) * 0x1p-122 * (sqrt(qn2) + sqrt(k2) + 1);
    if (l2) {
      // score = fl(fl(|k|^2) - 2 dot): the norm's sum, twice the product's error, the
      // subtraction's rounding
      const double err =
          gamma32(Ch + 1) * k2 + 2 * eps_dot * S2 + 0x1p-23 * (k2 + 2 * S2) + 3 * tiny;
      // a candidate left out: exact distance >= |q|^2 + bar - err, float32 one >= that
      // times (1 - gamma), which must be past the k-th kept
      proven = (qn2 + bar - err) * (1 - gamma32(Ch + 4)) - tiny > dk;
    } else {
      // a candidate left out: exact product <= bar + eps_dot S2, float32 one within
      // gamma_(Ch+2) S2 of that
      proven = bar + (eps_dot + gamma32(Ch + 2)) * S2 + 3 * tiny < dk;
    }
  }
  if (!proven) {
    redo[row] = 1;
    return;
  }
  fin.write(dout + row * K, out + row * K, K, l2);
}

// The queries topk_pix_tc_kernel flagged, one thread each: every candidate of the window read
// from global memory and added in topk_pix_kernel's order.
__global__ void topk_pix_redo_kernel(const float* __restrict__ qdata, const float* __restrict__ kdata,
                                     const float* __restrict__ centres,
                                     const int64_t* __restrict__ frames, int64_t T, int64_t H,
                                     int64_t W, int64_t C, int64_t Q, int64_t nt, int ws,
                                     int64_t gt0, int64_t gy0, int64_t gx0, int64_t nH, int64_t nW,
                                     int64_t nh, int K, bool l2, bool exclude_self,
                                     const uint8_t* __restrict__ redo, int64_t* __restrict__ out,
                                     float* __restrict__ dout) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, bh = blockIdx.y;
  const int64_t row = bh * Q + q;
  if (q >= Q || !redo[row]) return;
  const int64_t b = bh / nh, h = bh % nh;
  const int64_t tr = q / (nH * nW), gi = (q / nW) % nH, gj = q % nW;
  const int64_t t = gt0 + tr, qy = gy0 + gi, qx = gx0 + gj, q_first = tr * nH * nW;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const float* kv = kdata + b * video;
  const float* qp = qdata + b * video + ((t * H + reflect(qy, H)) * W + reflect(qx, W)) * C + c0;
  TopK<float, int, 16> top;
  for (int64_t f = 0; f < nt; ++f) {
    const Window w = window_of(centres, frames, b, Q, q, q_first, nt, f, ws / 2, qy, qx);
    for (int ii = 0; ii < ws; ++ii) {
      for (int jj = 0; jj < ws; ++jj) {
        if (exclude_self && w.s == t && w.gy + ii == 0 && w.gx + jj == 0) continue;
        const float d = pix_exact(qp, key_at(kv, w, H, W, C, c0, qy, qx, ii, jj), Ch, l2);
        top.insert(d, (static_cast<int>(f) * ws + ii) * ws + jj, K, l2);
      }
    }
  }
  top.write(dout + row * K, out + row * K, K, l2);
}

}  // namespace

// The staging capacity (pixels) of topk_pix_tc_kernel for Ch channels a head and windows of
// ws: the tile's windows with a margin for flows that vary within it, shrunk until two blocks
// fit an SM, at least the windows of a tile with one flow; 0 where even that leaves no room
// for one block.
int64_t pix_tc_capacity(int64_t Ch, int64_t ws) {
  const int64_t cp = channel_capacity(Ch, 8);  // dispatch_channels<8>'s
  const int64_t per_pixel = (cp + 4 + 1) * 4;  // kTcPitch values and a norm
  constexpr int64_t kStatic = (kTcWarps * 16 * kTcSP + 4) * 4;
  constexpr int64_t kTwoBlocks = 227 * 1024 / 2 - 1024 - kStatic;
  constexpr int64_t kOneBlock = 227 * 1024 - 1024 - kStatic;
  auto cap = [&](int64_t mg) { return (kTcY - 1 + ws + mg) * (kTcX - 1 + ws + mg); };
  int64_t margin = 8;
  while (margin > 0 && cap(margin) * per_pixel > kTwoBlocks) margin /= 2;
  return cap(margin) * per_pixel <= kOneBlock ? cap(margin) : 0;
}

int pix_tc_mode(const at::Tensor& queries, int64_t stride0, int64_t s1, int64_t nheads,
                int64_t k, int64_t nt, int64_t ws) {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_PIX_TC");  // read on every call, for timing
  const int mode = !e ? 0 : std::string(e) == "1" ? 1 : std::string(e) == "2" ? 2 : 0;
  const int64_t Ch = queries.size(4) / nheads;
  const bool fits = queries.scalar_type() == at::kFloat && stride0 == 1 && s1 == 1 && k >= 1 &&
                    k <= 16 && Ch <= 64 && nt * ws * ws < INT_MAX && pix_tc_capacity(Ch, ws) > 0;
  return fits ? mode : 0;
}

// Host side of topk_pix_tc_kernel and topk_pix_redo_kernel (the latter launched over every
// query, each thread returning at once where its query is proven; mode 2, for the tests,
// leaves the flagged queries out instead, as NaN distances and ids 0, to show which were).
std::tuple<at::Tensor, at::Tensor> search_topk_pix_tc_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& centres,
    const at::Tensor& frames, at::IntArrayRef grid, int64_t nheads, int64_t k, bool l2,
    bool exclude_self, int64_t ws, int mode) {
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = grid[3] * grid[4] * grid[5], nt = frames.size(1);
  auto ids = at::empty({B, nheads, Q, k}, frames.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options());
  if (ids.numel() == 0) return {dists, ids};
  auto redo = at::zeros({B * nheads * Q}, queries.options().dtype(at::kByte));
  const int64_t Ch = C / nheads;
  const int64_t cp = channel_capacity(Ch, 8);  // dispatch_channels<8>'s
  const int64_t capacity = pix_tc_capacity(Ch, ws);
  TORCH_CHECK(capacity > 0, "search_topk_pix_tc_cuda: windows too large to stage");
  const size_t smem = size_t(capacity * (cp + 4 + 1) * 4);  // kTcPitch values and a norm
  const auto frm = frames.contiguous();
  const auto cen = centres.to(at::kFloat).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks = tile_blocks(grid, kTcY, kTcX, B * nheads);
  const float* qd = queries.data_ptr<float>();
  const float* kd = keys.data_ptr<float>();
  dispatch_channels<8>(Ch, [&](auto cpv) {
    constexpr int CP = decltype(cpv)::value;
    auto kern = topk_pix_tc_kernel<CP>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    kern<<<blocks, kTcThreads, smem, stream>>>(
        qd, kd, cen.data_ptr<float>(), frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws),
        grid[0], grid[1], grid[2], grid[4], grid[5], nheads, int(k), int(2 * k), l2,
        exclude_self, int(capacity), ids.data_ptr<int64_t>(), dists.data_ptr<float>(),
        redo.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (mode == 2) {
    const auto left = redo.view({B, nheads, Q, 1}).to(at::kBool);
    dists.masked_fill_(left, NAN);
    ids.masked_fill_(left, 0);
    return {dists, ids};
  }
  const dim3 rblocks(static_cast<unsigned>((Q + 255) / 256), static_cast<unsigned>(B * nheads));
  topk_pix_redo_kernel<<<rblocks, 256, 0, stream>>>(
      qd, kd, cen.data_ptr<float>(), frm.data_ptr<int64_t>(), T, H, W, C, Q, nt, int(ws),
      grid[0], grid[1], grid[2], grid[4], grid[5], nheads, int(k), l2, exclude_self,
      redo.data_ptr<uint8_t>(), ids.data_ptr<int64_t>(), dists.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dists, ids};
}

}  // namespace stnls::search_cuda
