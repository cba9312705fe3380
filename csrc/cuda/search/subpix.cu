// search_topk_subpix on CUDA (see common.cuh): sub-pixel search windows (a flow) on a dense
// query grid, with the whole-pixel box sums of box.cu and the key-only pair sums of
// napari_stnls/ops/_subpixel.py.
//
// Every candidate of one query and frame shares the fractional part (fy, fx) of the window's
// origin, so its L2 distance is sum_c w_c M_c - sum_{c<c'} w_c w_c' S_cc': M_c the
// whole-pixel distances at its four corners, S_cc' the patch sums of squared differences
// between the key's corner patches (the `pairs` maps). A tile of queries computes the M of
// every whole-pixel offset its windows (grown by one row and column) reach with box sums
// shared by the tile (O(C) per offset and query instead of O(ps^2 C)) and keeps them in
// shared memory (all (ws+1)^2 per query, or two rows of them: ROLL), then each thread
// combines its query's candidates and keeps its top k. Ids and the candidates' order are the
// window kernel's.
#include <torch/library.h>

#include "common.cuh"
#include "patch.cuh"
#include "slide.cuh"
#include "tile.cuh"

namespace stnls::search_cuda {
namespace {

constexpr int kUX = 16;  // tile columns; rows: the host's choice (16, 8, 4 or 2)

// A query's window in one frame: its centre (cy, cx), the whole-pixel origin (y0, x0) of its
// candidates (the first one's floor) with its offset (oy, ox) from the query, and the
// fractional part (fy, fx) every candidate shares
struct Origin {
  float cy = 0.f, cx = 0.f, fy = 0.f, fx = 0.f;
  int64_t y0 = 0, x0 = 0;
  int oy = 0, ox = 0;
};

__device__ __forceinline__ Origin origin(const float* c, float off0, int64_t qy, int64_t qx) {
  Origin o;
  o.cy = c[0];
  o.cx = c[1];
  const float by = floor_acc(o.cy + off0), bx = floor_acc(o.cx + off0);
  o.fy = (o.cy + off0) - by;
  o.fx = (o.cx + off0) - bx;
  o.y0 = static_cast<int64_t>(by);
  o.x0 = static_cast<int64_t>(bx);
  o.oy = static_cast<int>(o.y0 - qy);
  o.ox = static_cast<int>(o.x0 - qx);
  return o;
}

// The candidates of window row i of one query and frame: from the whole-pixel distances of
// rows i (m0) and i + 1 (m1) of the (ws+1)-wide offsets (a value every `stride` floats), the
// key's pair sums S and the bilinear weights; into the thread's list.
template <int KMAX>
__device__ __forceinline__ void combine_row(
    TopK<float, int, KMAX>& top, const float* m0, const float* m1, int stride, int i, int ws,
    int64_t f, int64_t s, int64_t t, int64_t y0, int64_t x0, float cy, float cx, float off0,
    float fy, float fx, const float* S, int64_t plane, int64_t HE, int64_t WE, int margin,
    int64_t qy, int64_t qx, const float* qv, const float* kv, int64_t T, int64_t H, int64_t W,
    int64_t C, int64_t c0, int64_t Ch, int ps, int pt, int K, bool exclude_self) {
  const float w00 = (1.f - fy) * (1.f - fx), w01 = (1.f - fy) * fx;
  const float w10 = fy * (1.f - fx), w11 = fy * fx;
  const float y = cy + (off0 + static_cast<float>(i));
  const int64_t ye = y0 + i + margin;
  for (int j = 0; j < ws; ++j) {
    const float x = cx + (off0 + static_cast<float>(j));
    if (exclude_self && s == t && fabsf(y - static_cast<float>(qy)) < 1e-4f &&
        fabsf(x - static_cast<float>(qx)) < 1e-4f)
      continue;
    const int64_t xe = x0 + j + margin;
    float d;
    if (ye >= 0 && ye + 1 < HE && xe >= 0 && xe + 1 < WE) {
      const int64_t p = ye * WE + xe;
      d = w00 * m0[j * stride] + w01 * m0[(j + 1) * stride] + w10 * m1[j * stride] +
          w11 * m1[(j + 1) * stride] -
          (w00 * w01 * S[p] + w10 * w11 * S[p + WE] + w00 * w10 * S[plane + p] +
           w01 * w11 * S[plane + p + 1] + w00 * w11 * S[2 * plane + p] +
           w01 * w10 * S[3 * plane + p + 1]);
      d = fmaxf(d, 0.f);  // rounding of the difference, where the patches are equal
    } else {  // past the maps (windows are clamped into the frame: defensive): read directly
      const Pos<float> qp = make_pos<float>(t, static_cast<float>(qy), static_cast<float>(qx), false);
      d = patch_distance(qv, qp, kv, make_pos<float>(s, y, x, false), T, H, W, C, c0, Ch, ps, pt,
                         1, true);
    }
    top.insert(d, static_cast<int>((f * ws + i) * ws + j), K, true);
  }
}

// ROLL: each query keeps two rows of its (ws+1)^2 whole-pixel distances and combines window
// row i as soon as offset row i + 1 is done (any ws); else all of them, combined at the end
// of the frame.
template <int KMAX, bool ROLL>
__global__ void __launch_bounds__(256)
    topk_subpix_kernel(const float* __restrict__ qdata, const float* __restrict__ kdata,
                       const float* __restrict__ centres, const int64_t* __restrict__ frames,
                       const float* __restrict__ pairs, int64_t T, int64_t H, int64_t W,
                       int64_t C, int64_t Q, int64_t nt, int ws, int64_t gt0, int64_t gy0,
                       int64_t gx0, int64_t nH, int64_t nW, int uy, int ps, int pt, int64_t nh,
                       int margin, int K, bool exclude_self, int DH, int DW,
                       int64_t* __restrict__ out, float* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nthr = uy * kUX, G = ws + 1, rows = ROLL ? 2 : G;
  // (rows * G, nthr): a column per query; with ROLL offset row ii in row ii % 2
  float* Ms = reinterpret_cast<float*>(smem_raw);
  float* D = Ms + static_cast<int64_t>(rows) * G * nthr;  // DH x DW
  float* R = D + DH * DW;                                 // DH x kUX
  __shared__ int gmin[2], gmax[2];

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + kUX - 1) / kUX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int ty = threadIdx.x / kUX, tx = threadIdx.x % kUX;
  const int64_t gi = tile_i * uy + ty, gj = tile_j * kUX + tx;
  const bool active = gi < nH && gj < nW;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi, qx = gx0 + gj;
  const int64_t py0 = gy0 + tile_i * uy, px0 = gx0 + tile_j * kUX;
  const int r = ps / 2, half = ws / 2;
  const float off0 = static_cast<float>(-half);
  const int64_t Ch = C / nh, c0 = h * Ch, video = T * H * W * C;
  const float* qv = qdata + b * video;
  const float* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;
  const int64_t HE = H + 2 * margin, WE = W + 2 * margin, plane = HE * WE;
  float* Mq = Ms + threadIdx.x;

  TopK<float, int, KMAX> top;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    const float* S = pairs + (bh * T + s) * 4 * plane;
    const Origin o = active ? origin(centres + ((b * Q + q) * nt + f) * 2, off0, qy, qx) : Origin{};
    const float cy = o.cy, cx = o.cx, fy = o.fy, fx = o.fx;
    const int64_t y0 = o.y0, x0 = o.x0;
    const int oy = o.oy, ox = o.ox;
    int lo[2], hi[2];
    block_extent(active, oy, ox, gmin, gmax, lo, hi);
    if (lo[0] > hi[0]) continue;  // no active thread in this tile (uniform across the block)
    // 1. the whole-pixel distance of every offset (dy, dx) some window of the tile (and its
    // next row and column) holds, by box sums shared by the tile
    for (int dy = lo[0]; dy <= hi[0] + ws; ++dy) {
      for (int dx = lo[1]; dx <= hi[1] + ws; ++dx) {
        for (int e = threadIdx.x; e < DH * DW; e += nthr) {
          const int u = e / DW, v = e % DW;
          const int64_t yq = py0 - r + u, xq = px0 - r + v;
          const int64_t ryq = reflect(yq, H), rxq = reflect(xq, W);
          const int64_t ryk = reflect(yq + dy, H), rxk = reflect(xq + dx, W);
          float acc = 0.f;
          for (int dt = 0; dt < pt; ++dt) {
            const int64_t fq = reflect(t + dt, T), fk = reflect(s + dt, T);
            const float* a = qv + ((fq * H + ryq) * W + rxq) * C + c0;
            const float* bb = kv + ((fk * H + ryk) * W + rxk) * C + c0;
            for (int64_t c = 0; c < Ch; ++c) {
              const float e2 = a[c] - bb[c];
              acc += e2 * e2;
            }
          }
          D[e] = acc;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < DH * kUX; e += nthr) {
          const float* row = D + (e / kUX) * DW + e % kUX;
          float acc = 0.f;
          for (int bx = 0; bx < ps; ++bx) acc += row[bx];
          R[e] = acc;
        }
        __syncthreads();
        if (active) {
          const int ii = dy - oy, jj = dx - ox;
          if (ii >= 0 && jj >= 0 && ii <= ws && jj <= ws) {
            float d = 0.f;
            for (int a = 0; a < ps; ++a) d += R[(ty + a) * kUX + tx];
            Mq[((ROLL ? (ii & 1) : ii) * G + jj) * nthr] = d;  // only this thread reads it
          }
        }
        __syncthreads();  // D and R are rewritten for the next offset
      }
      if (ROLL && active) {  // offset row ii is complete: window row ii - 1 can be combined
        const int ii = dy - oy;
        if (ii >= 1 && ii <= ws)
          combine_row<KMAX>(top, Mq + ((ii - 1) & 1) * G * nthr, Mq + (ii & 1) * G * nthr, nthr,
                            ii - 1, ws, f, s, t, y0, x0, cy, cx, off0, fy, fx, S, plane, HE, WE,
                            margin, qy, qx, qv, kv, T, H, W, C, c0, Ch, ps, pt, K, exclude_self);
      }
    }
    if (!ROLL && active)  // 2. each candidate from its corners' distances and the pair sums
      for (int i = 0; i < ws; ++i)
        combine_row<KMAX>(top, Mq + i * G * nthr, Mq + (i + 1) * G * nthr, nthr, i, ws, f, s, t,
                          y0, x0, cy, cx, off0, fy, fx, S, plane, HE, WE, margin, qy, qx, qv, kv,
                          T, H, W, C, c0, Ch, ps, pt, K, exclude_self);
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, true);
}

// The same search with the whole-pixel distances of the sliding kernel (slide.cu): ps 3, 5 or
// 7, 1 or 3 frames x channels per head, k <= 32. Its warps sweep every whole-pixel offset the
// tile's windows (grown by a row and a column) reach, a column of the tile's distances per
// lane and step as in topk_slide_kernel; each lane writes the distance of each of its queries
// straight into the query's (ws+1)^2 grid in shared memory (no hand-over, no barrier per
// step), and once the frame's offsets are done each query's thread combines its candidates
// with the pair sums (combine_row). Every distance is summed in the sliding kernel's fixed
// association, so batches change no bit.
template <int KM, int PCN, int PS>
__global__ void __launch_bounds__(kSlideWarps * 32, 2)
    topk_subpix_slide_kernel(const float* __restrict__ qdata, const float* __restrict__ kdata,
                             const float* __restrict__ centres, const int64_t* __restrict__ frames,
                             const float* __restrict__ pairs, int64_t T, int64_t H, int64_t W,
                             int64_t C, int64_t Q, int64_t nt, int ws, int64_t gt0, int64_t gy0,
                             int64_t gx0, int64_t nH, int64_t nW, int pt, int64_t nh, int margin,
                             int K, bool exclude_self, int kcap, int64_t* __restrict__ out,
                             float* __restrict__ dout) {
  using Tile = SlideTile<PS, PCN>;
  constexpr int TX = Tile::kTX, TY = Tile::kTY, EY = Tile::kEY, N = Tile::kN, r = PS / 2;
  extern __shared__ __align__(16) unsigned char subslide_smem[];
  const int G = ws + 1;
  float* Ms = reinterpret_cast<float*>(subslide_smem);  // G x G x N: Ms[(ii * G + jj) * N + qi]
  float* Ks = Ms + G * G * N;                             // PCN x KH x KP key pixels, <= kcap
  int* Os = reinterpret_cast<int*>(Ks + kcap);            // 2 x N: each query's grid origin
  __shared__ int gmin[2], gmax[2];

  // each query's thread combines its candidates and keeps its list
  const SlideBlock sb = slide_block<TX, TY>(nH, nW, nh);
  const int64_t bh = sb.bh, b = sb.b, h = sb.h, tr = sb.tr, tile_i = sb.tile_i,
                tile_j = sb.tile_j, gi = sb.gi, gj = sb.gj;
  const int warp = sb.warp, lane = sb.lane, qi = sb.qi;
  const bool owner = sb.owner, active = sb.active;
  const int64_t q = (tr * nH + gi) * nW + gj;
  const int64_t t = gt0 + tr;
  const int64_t qy = gy0 + gi, qx = gx0 + gj;
  const int half = ws / 2;
  const float off0 = static_cast<float>(-half);
  const int64_t oy0 = gy0 + tile_i * TY - r, ox0 = gx0 + tile_j * TX - r;
  const int Ch = static_cast<int>(C / nh);
  const int64_t c0 = h * Ch, video = T * H * W * C;
  const float* qv = qdata + b * video;
  const float* kv = kdata + b * video;
  const int64_t q_first = tr * nH * nW;
  const int64_t HE = H + 2 * margin, WE = W + 2 * margin, plane = HE * WE;

  float Qr[PCN][EY];
  slide_queries<float, PCN, EY>(Qr, qv, t, T, H, W, C, c0, Ch, oy0, ox0, lane);

  TopK<float, int, KM> top;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q_first * nt + f];
    const Origin o = active ? origin(centres + ((b * Q + q) * nt + f) * 2, off0, qy, qx) : Origin{};
    const float cy = o.cy, cx = o.cx, fy = o.fy, fx = o.fx;
    const int64_t y0 = o.y0, x0 = o.x0;
    const int oy = o.oy, ox = o.ox;
    // (every lane read Os last before the barrier that ended the previous frame's sweep; an
    // inactive query's origin is far from every offset)
    if (owner) {
      Os[qi] = active ? oy : (1 << 28);
      Os[N + qi] = ox;
    }
    int lo[2], hi[2];
    block_extent(active, oy, ox, gmin, gmax, lo, hi);  // (its barriers publish Os)
    const int ylo = lo[0], yhi = hi[0] + ws;
    const int xlo = lo[1], xhi = hi[1] + ws;
    if (ylo > yhi) continue;  // no active thread in this tile (uniform across the block)
    int cy_ = 0, cx_ = 0;
    slide_runs<PCN, EY>(yhi - ylo + 1, xhi - xlo + 1, kcap, &cy_, &cx_);
    for (int ya = ylo; ya <= yhi; ya += cy_) {
      const int my = min(cy_, yhi - ya + 1);
      for (int xa = xlo; xa <= xhi; xa += cx_) {
        const int mx = min(cx_, xhi - xa + 1);
        const int KH = EY + my - 1, KW = 32 + mx - 1, KP = odd_pitch(KW), KA = KH * KP;
        slide_stage<float, PCN>(Ks, kv, s, T, H, W, C, c0, Ch, oy0, ya, ox0, xa, KH, KW, KP, KA);
        __syncthreads();  // Ks is staged
        const int nitems = mx * ((my + kSlideRows - 1) / kSlideRows);
        for (int it = warp; it < nitems; it += kSlideWarps) {  // uniform across the warp
          const int ix = it % mx, iy0 = (it / mx) * kSlideRows;
          const float* kc = Ks + lane + ix;
          float Kr[PCN][EY];
          slide_load<PCN, EY>(Kr, kc, KA, KP, KH, iy0);
#pragma unroll
          for (int st = 0; st < kSlideRows; ++st) {
            if (st > 0) slide_down<PCN, EY>(Kr, kc, KA, KP, min(iy0 + st + EY - 1, KH - 1));
            if (iy0 + st < my) {
              const int dy = ya + iy0 + st, dx = xa + ix;
              slide_dists<PS, PCN, TY, EY>(Qr, Kr, true, [&](int i, float d) {
                const int qq = i * TX + lane;
                if (lane >= TX) return;
                const int ii = dy - Os[qq], jj = dx - Os[N + qq];
                if (static_cast<unsigned>(ii) <= static_cast<unsigned>(ws) &&
                    static_cast<unsigned>(jj) <= static_cast<unsigned>(ws))
                  Ms[(ii * G + jj) * N + qq] = d;
              });
            }
          }
        }
        __syncthreads();  // Ks may be restaged; after the last run, every M is written
      }
    }
    if (active) {
      const float* S = pairs + (bh * T + s) * 4 * plane;
      for (int i = 0; i < ws; ++i)
        combine_row<KM>(top, Ms + i * G * N + qi, Ms + (i + 1) * G * N + qi, N, i, ws, f, s, t,
                        y0, x0, cy, cx, off0, fy, fx, S, plane, HE, WE, margin, qy, qx, qv, kv,
                        T, H, W, C, c0, Ch, PS, pt, K, exclude_self);
    }
  }
  if (active) top.write(dout + (bh * Q + q) * K, out + (bh * Q + q) * K, K, true);
}

// topk_subpix_slide_kernel's tile and key-pixel capacity, and its shared memory in bytes
constexpr int kSubSlideKcap = 8 * 1024;  // floats of key pixels (a run of offsets)
template <int PS, int PCN>
constexpr int64_t subpix_slide_smem(int64_t ws) {
  using Tile = SlideTile<PS, PCN>;
  return 4 * ((ws + 1) * (ws + 1) * Tile::kN + kSubSlideKcap + 2 * Tile::kN);
}

int64_t subpix_slide_smem(int64_t ws, int64_t ps, int64_t PC) {
  int64_t smem = 0;
  dispatch_slide(PC, ps, [&](auto pcn, auto psn) {
    smem = subpix_slide_smem<decltype(psn)::value, decltype(pcn)::value>(ws);
  });
  return smem;
}

// Whether the sliding variant takes a call: ps 3, 5 or 7, 1 or 3 frames x channels per head,
// k <= 32, each query's (ws+1)^2 grid within shared memory (ws <= 9 at most for three
// channels); NAPARI_STNLS_CUDA_SUBPIX_SLIDE=0 (read on every call, for timing) never.
bool subpix_slide(const at::Tensor& queries, int64_t ws, int64_t ps, int64_t pt, int64_t nheads,
                  int64_t k) {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_SUBPIX_SLIDE");
  if (e && std::string(e) == "0") return false;
  const int64_t PC = pt * (queries.size(4) / nheads);
  return k <= 32 && (ps == 3 || ps == 5 || ps == 7) && (PC == 1 || PC == 3) &&
         subpix_slide_smem(ws, ps, PC) <= 112 * 1024;
}

// Launches topk_subpix_slide_kernel into ids and dists (contiguous inputs, checked)
void subpix_slide_launch(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& cen,
                         const at::Tensor& frm, const at::Tensor& prs, at::Tensor& ids,
                         at::Tensor& dists, at::IntArrayRef grid, int64_t ws, int64_t ps,
                         int64_t pt, int64_t nheads, int64_t k, int64_t margin,
                         bool exclude_self) {
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = ids.size(2), nt = frm.size(1), PC = pt * (C / nheads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto pcn, auto psn) {
    constexpr int PS = decltype(psn)::value, PCN = decltype(pcn)::value;
    using Tile = SlideTile<PS, PCN>;
    auto kern = k <= 16 ? topk_subpix_slide_kernel<16, PCN, PS> : topk_subpix_slide_kernel<32, PCN, PS>;
    const int smem = static_cast<int>(subpix_slide_smem<PS, PCN>(ws));
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const dim3 blocks = tile_blocks(grid, Tile::kTY, Tile::kTX, B * nheads);
    kern<<<blocks, kSlideWarps * 32, smem, stream>>>(
        queries.data_ptr<float>(), keys.data_ptr<float>(), cen.data_ptr<float>(),
        frm.data_ptr<int64_t>(), prs.data_ptr<float>(), T, H, W, C, Q, nt, int(ws), grid[0],
        grid[1], grid[2], grid[4], grid[5], int(pt), nheads, int(margin), int(k), exclude_self,
        kSubSlideKcap, ids.data_ptr<int64_t>(), dists.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  dispatch_slide(PC, ps, launch);
}

// The tile (16 x 16 queries) and whether it rolls: two rows of each query's (ws+1)^2
// distances (the default: measured on an H100, it was faster for ws 9, 11 and 21 than all of
// them, which take 110 KiB for ws 9 and leave fewer blocks an SM), or all of them with
// NAPARI_STNLS_CUDA_SUBPIX_ROLL=0 (read on every call, for timing).
int subpix_tile(int64_t ws, int64_t ps, bool* roll, int64_t* smem) {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_SUBPIX_ROLL");
  const int64_t DH = 16 + ps - 1, DW = kUX + ps - 1, nthr = 16 * kUX;
  const int64_t fixed = 4 * (DH * DW + DH * kUX);
  *roll = !(e && std::string(e) == "0");
  *smem = 4 * (*roll ? 2 : ws + 1) * (ws + 1) * nthr + fixed;
  return 16;
}

std::tuple<at::Tensor, at::Tensor> search_topk_subpix_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& coords,
    const at::Tensor& centres, const at::Tensor& frames, const at::Tensor& pairs,
    at::IntArrayRef grid, int64_t ws, int64_t ps, int64_t pt, int64_t nheads, int64_t k,
    int64_t margin, bool exclude_self) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, 1);
  TORCH_CHECK(queries.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat,
              "search_topk_subpix: expected float32 videos");
  TORCH_CHECK(k >= 1 && k <= 64, "k: search_topk_subpix takes k <= 64, got ", k);
  TORCH_CHECK(grid.size() == 6, "grid: expected (t0, y0, x0, T_r, nH, nW)");
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = coords.size(0), nt = frames.size(1);
  TORCH_CHECK(grid[3] * grid[4] * grid[5] == Q, "grid: does not match the number of queries");
  TORCH_CHECK(nheads >= 1 && C % nheads == 0, "nheads: expected a divisor of the channels");
  TORCH_CHECK(pairs.scalar_type() == at::kFloat && pairs.is_cuda() && pairs.dim() == 6 &&
                  pairs.size(0) == B && pairs.size(1) == nheads && pairs.size(2) == T &&
                  pairs.size(3) == 4 && pairs.size(4) == H + 2 * margin &&
                  pairs.size(5) == W + 2 * margin,
              "pairs: expected float32 (B, nheads, T, 4, H + 2 margin, W + 2 margin) on the videos' device");
  TORCH_CHECK(centres.scalar_type() == at::kFloat && centres.dim() == 4 && centres.size(0) == B &&
                  centres.size(1) == Q && centres.size(2) == nt && centres.size(3) == 2,
              "centres: expected float32 (B, Q, nt, 2)");
  const c10::cuda::CUDAGuard guard(queries.device());
  const bool slide = subpix_slide(queries, ws, ps, pt, nheads, k);
  int64_t smem = 0;
  bool roll = false;
  const int uy = subpix_tile(ws, ps, &roll, &smem);
  TORCH_CHECK(slide || smem <= 200 * 1024,
              "ws: search_topk_subpix's tile does not fit shared memory for ws = ", ws);
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options());
  if (ids.numel() == 0) return {dists, ids};
  const auto frm = frames.contiguous();
  const auto cen = centres.contiguous();
  const auto prs = pairs.contiguous();
  if (slide) {
    subpix_slide_launch(queries, keys, cen, frm, prs, ids, dists, grid, ws, ps, pt, nheads, k,
                        margin, exclude_self);
    return {dists, ids};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks = tile_blocks(grid, uy, kUX, B * nheads);
  const int DH = int(uy + ps - 1), DW = int(kUX + ps - 1);
  auto launch = [&](auto kmax) {
    constexpr int KM = decltype(kmax)::value;
    if constexpr (KM <= 64) {
      auto kern = roll ? topk_subpix_kernel<KM, true> : topk_subpix_kernel<KM, false>;
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      kern<<<blocks, uy * kUX, smem, stream>>>(
          queries.data_ptr<float>(), keys.data_ptr<float>(), cen.data_ptr<float>(),
          frm.data_ptr<int64_t>(), prs.data_ptr<float>(), T, H, W, C, Q, nt, int(ws), grid[0],
          grid[1], grid[2], grid[4], grid[5], uy, int(ps), int(pt), nheads, int(margin), int(k),
          exclude_self, DH, DW, ids.data_ptr<int64_t>(), dists.data_ptr<float>());
    }
  };
  stnls::dispatch_kmax(k, launch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dists, ids};
}

}  // namespace

}  // namespace stnls::search_cuda

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("search_topk_subpix", &stnls::search_cuda::search_topk_subpix_cuda);
}
