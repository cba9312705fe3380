// CUDA kernels of the search. Nothing but the output is materialised: candidates are streamed
// and each query keeps its k best in small sorted lists.
// - topk_window_kernel (integer search-grid spacing, with or without flow): one warp per
//   query; the window is interpolated once into shared memory per frame.
// - topk_kernel (any spacing): one thread per query reads every candidate's taps.
// - topk_box_kernel (whole-pixel grids of queries): box sums shared by a tile of queries;
//   topk_stage_kernel stages the tile's pixels in shared memory, and topk_slide_kernel (float
//   accumulation, ps 3/5/7, 1 or 3 frames x channels) keeps them in registers;
//   topk_pix_kernel takes single-pixel patches.
//
// Patch values are read with the arithmetic of csrc/include/patch_loc.h (mirroring, x-then-y
// bilinear interpolation). Each top-k kernel returns the distances it selected by, summed in
// its own fixed order; search_dists returns those (its `given`) and differentiates them.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../include/checks.h"
#include "../include/dispatch.h"
#include "../include/mirror.h"
#include "../include/topk.h"

namespace {

using stnls::reflect;

constexpr int kThreads = 128;

template <typename acc_t>
struct Pos {
  int64_t t, y0, x0;
  acc_t fy, fx;
  bool sy, sx;
};

template <typename acc_t>
__device__ __forceinline__ acc_t floor_acc(acc_t v) {
  const acc_t t = static_cast<acc_t>(static_cast<int64_t>(v));
  return t > v ? t - acc_t(1) : t;
}

template <typename acc_t>
__device__ __forceinline__ Pos<acc_t> make_pos(int64_t t, acc_t y, acc_t x, bool need_both) {
  Pos<acc_t> p;
  const acc_t y0 = floor_acc(y), x0 = floor_acc(x);
  p.t = t;
  p.y0 = static_cast<int64_t>(y0);
  p.x0 = static_cast<int64_t>(x0);
  p.fy = y - y0;
  p.fx = x - x0;
  p.sy = need_both || p.fy != acc_t(0);
  p.sx = need_both || p.fx != acc_t(0);
  return p;
}

// Flat (frame*H + row)*W bases and columns of patch pixel (dt, a, b) for both corners.
struct Px {
  int64_t r0, r1, c0, c1;
};

template <typename acc_t>
__device__ __forceinline__ Px locate(const Pos<acc_t>& p, int dt, int a, int b, int64_t T, int64_t H,
                                     int64_t W, int ps, int dil) {
  const int r = ps / 2;
  const int64_t f = reflect(p.t + dt, T) * H;
  Px o;
  o.r0 = (f + reflect(p.y0 + dil * (a - r), H)) * W;
  o.r1 = (f + reflect(p.y0 + 1 + dil * (a - r), H)) * W;
  o.c0 = reflect(p.x0 + dil * (b - r), W);
  o.c1 = reflect(p.x0 + 1 + dil * (b - r), W);
  return o;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t value(const scalar_t* v, int64_t C, const Pos<acc_t>& p, const Px& o,
                                       int64_t ch) {
  const acc_t v00 = static_cast<acc_t>(v[(o.r0 + o.c0) * C + ch]);
  acc_t r0 = v00;
  if (p.sx) {
    const acc_t v01 = static_cast<acc_t>(v[(o.r0 + o.c1) * C + ch]);
    r0 = (acc_t(1) - p.fx) * v00 + p.fx * v01;
  }
  if (!p.sy) return r0;
  const acc_t v10 = static_cast<acc_t>(v[(o.r1 + o.c0) * C + ch]);
  acc_t r1 = v10;
  if (p.sx) {
    const acc_t v11 = static_cast<acc_t>(v[(o.r1 + o.c1) * C + ch]);
    r1 = (acc_t(1) - p.fx) * v10 + p.fx * v11;
  }
  return (acc_t(1) - p.fy) * r0 + p.fy * r1;
}

template <typename scalar_t, typename acc_t>
__device__ acc_t patch_distance(const scalar_t* qv, const Pos<acc_t>& qp, const scalar_t* kv,
                                const Pos<acc_t>& kp, int64_t T, int64_t H, int64_t W, int64_t C,
                                int64_t c0, int64_t Ch, int ps, int pt, int dil, bool l2) {
  acc_t d = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b) {
        const Px qo = locate(qp, dt, a, b, T, H, W, ps, dil);
        const Px ko = locate(kp, dt, a, b, T, H, W, ps, dil);
        for (int64_t c = 0; c < Ch; ++c) {
          const acc_t q = value(qv, C, qp, qo, c0 + c);
          const acc_t k = value(kv, C, kp, ko, c0 + c);
          if (l2) {
            const acc_t e = q - k;
            d += e * e;
          } else {
            d += q * k;
          }
        }
      }
  return d;
}

// The k best candidates of one query: a sorted list of capacity K (stnls::topk_insert's
// insertion) whose entries order by (distance, id), so that it does not depend on the order
// candidates arrive in. Where they arrive in ascending id order, as in every kernel but the
// staged one, that is the "ties keep the first" rule of stnls::topk_insert. (An unrolled list
// of KMAX entries that never touches local memory was measured slower on the H200: it
// inserts more often, and the list's reads hit L1.)
template <typename acc_t, typename id_t, int KM>
struct TopK {
  acc_t d[KM];
  id_t id[KM];
  int n = 0;
  acc_t worst_d = acc_t(0);  // d[K-1], id[K-1] once the list is full, kept in registers: most
  id_t worst_id = 0;         // candidates are rejected against them with no memory access

  __device__ __forceinline__ bool before(acc_t v, id_t vi, acc_t e, id_t ei, bool l2) const {
    return stnls::better(v, e, l2) || (v == e && vi < ei);
  }

  __device__ __forceinline__ void insert(acc_t v, id_t vi, int K, bool l2) {
    int pos;
    if (n < K) {
      pos = n++;
    } else if (before(v, vi, worst_d, worst_id, l2)) {
      pos = K - 1;
    } else {
      return;
    }
    while (pos > 0 && before(v, vi, d[pos - 1], id[pos - 1], l2)) {
      d[pos] = d[pos - 1];
      id[pos] = id[pos - 1];
      --pos;
    }
    d[pos] = v;
    id[pos] = vi;
    if (n == K) {
      worst_d = d[K - 1];
      worst_id = id[K - 1];
    }
  }

  // dout[0..K), out[0..K): the distances and ids (see stnls::topk_write)
  __device__ __forceinline__ void write(acc_t* dout, int64_t* out, int K, bool l2) const {
    stnls::topk_write(d, id, n, K, l2, dout, out);
  }
};

template <typename scalar_t, typename acc_t, int KMAX>
__global__ void topk_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                            const int64_t* __restrict__ coords, const acc_t* __restrict__ centres,
                            const int64_t* __restrict__ frames, const acc_t* __restrict__ offs,
                            int64_t B, int64_t T, int64_t H, int64_t W, int64_t C, int64_t Q,
                            int64_t nt, int64_t ws, int ps, int pt, int dil, int64_t nh, int K,
                            bool l2, bool exclude_self, int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q) return;
  const int64_t q = n % Q, h = (n / Q) % nh, b = n / (Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C;
  const int64_t t = coords[q * 3], qy = coords[q * 3 + 1], qx = coords[q * 3 + 2];
  const Pos<acc_t> qp = make_pos<acc_t>(t, acc_t(qy), acc_t(qx), false);
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  TopK<acc_t, int64_t, KMAX> top;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q * nt + f];
    const acc_t cy = centres[((b * Q + q) * nt + f) * 2];
    const acc_t cx = centres[((b * Q + q) * nt + f) * 2 + 1];
    for (int64_t i = 0; i < ws; ++i) {
      const acc_t y = cy + offs[i];
      for (int64_t j = 0; j < ws; ++j) {
        const acc_t x = cx + offs[j];
        if (exclude_self && s == t && fabs(static_cast<double>(y - acc_t(qy))) < 1e-4 &&
            fabs(static_cast<double>(x - acc_t(qx))) < 1e-4)
          continue;
        const Pos<acc_t> kp = make_pos<acc_t>(s, y, x, false);
        const acc_t d = patch_distance(qv, qp, kv, kp, T, H, W, C, h * Ch, Ch, ps, pt, dil, l2);
        top.insert(d, (f * ws + i) * ws + j, K, l2);
      }
    }
  }
  top.write(dout + n * K, out + n * K, K, l2);
}

// acc += the per-pixel term of the distance between values x and y
template <typename acc_t>
__device__ __forceinline__ void term(acc_t& acc, acc_t x, acc_t y, bool l2) {
  if (l2) {
    const acc_t e = x - y;
    acc += e * e;
  } else {
    acc += x * y;
  }
}

// Integer search-grid spacing (the usual case, flows or not): every candidate of one query
// and frame shares the centre's fractional part, so the window they cover is read and
// interpolated once (as PatchLoc::value does, x then y, like the CPU window path) into shared
// memory, and each distance is computed from there. One warp per (batch, head, query): the
// lanes share out the candidates, a few neighbours of one window row each per step. For k <= 32
// the warp keeps one list (WarpTopK); for larger k each lane keeps its own and the warp merges
// the 32 sorted lists at the end. Both order entries by (distance, id), so ties keep the
// smaller id as everywhere else, and both give the same k.
constexpr int kWinCands = 4;  // candidates of one window row per lane and step (or 7, below)
constexpr int kSlideMax = 7;  // the largest patch of the sliding path

template <typename acc_t>
__device__ __forceinline__ bool better_entry(acc_t d1, int64_t i1, acc_t d2, int64_t i2, bool l2) {
  if (i1 == LLONG_MAX) return false;  // an empty entry loses to every real one
  if (i2 == LLONG_MAX) return true;
  if (d1 != d2) return l2 ? d1 < d2 : d1 > d2;
  return i1 < i2;
}

// The k best candidates of one warp, spread over its lanes: lane j < K holds entry j of a list
// sorted by (distance, id) (better_entry; LLONG_MAX ids are empty), and every lane holds
// entry K - 1, the bar a candidate must pass. Lanes offer their candidates together: a
// ballot finds those that pass the bar, and the warp inserts them one at a time (a shuffle
// moves the entries behind the new one down a lane). With one list per warp instead of one
// per lane, a candidate is tested against the k best of everything the warp has seen, so few
// are inserted, and the list never touches local memory. The result is the k best by
// (distance, id) whatever the order of the offers.
template <typename acc_t>
struct WarpTopK {
  static constexpr unsigned kAll = 0xffffffffu;
  acc_t d = acc_t(0), bar_d = acc_t(0);
  int64_t id = LLONG_MAX, bar_id = LLONG_MAX;

  __device__ __forceinline__ void offer(bool has, acc_t cd, int64_t cid, int lane, int K,
                                        bool l2) {
    unsigned m = __ballot_sync(kAll, has && better_entry(cd, cid, bar_d, bar_id, l2));
    while (m) {
      const int src = __ffs(m) - 1;
      const acc_t vd = __shfl_sync(kAll, cd, src);
      const int64_t vid = __shfl_sync(kAll, cid, src);
      const int pos = __popc(__ballot_sync(kAll, lane < K && better_entry(d, id, vd, vid, l2)));
      const acc_t ud = __shfl_up_sync(kAll, d, 1);
      const int64_t uid = __shfl_up_sync(kAll, id, 1);
      if (lane == pos) {
        d = vd;
        id = vid;
      } else if (lane > pos) {
        d = ud;
        id = uid;
      }
      bar_d = __shfl_sync(kAll, d, K - 1);
      bar_id = __shfl_sync(kAll, id, K - 1);
      if (lane == src) has = false;
      m = __ballot_sync(kAll, has && better_entry(cd, cid, bar_d, bar_id, l2));
    }
  }

  // lanes j < K write entry j (an empty one as id 0 and the worst distance)
  __device__ __forceinline__ void write(acc_t* dout, int64_t* out, int lane, int K,
                                        bool l2) const {
    if (lane >= K) return;
    const bool empty = id == LLONG_MAX;
    out[lane] = empty ? 0 : id;
    dout[lane] = empty ? (l2 ? acc_t(INFINITY) : acc_t(-INFINITY)) : d;
  }
};

// WL: the warp keeps one list (WarpTopK, k <= 32) instead of one per lane merged at the end;
// NC: candidates of one window row per lane and step.
template <typename scalar_t, typename acc_t, int KMAX, bool WL = (KMAX <= 32),
          int NC = kWinCands>
__global__ void __launch_bounds__(128, 5) topk_window_kernel(const scalar_t* __restrict__ qdata,
                                   const scalar_t* __restrict__ kdata,
                                   const int64_t* __restrict__ coords,
                                   const acc_t* __restrict__ centres,
                                   const int64_t* __restrict__ frames, acc_t off0, int step,
                                   int64_t B, int64_t T, int64_t H, int64_t W, int64_t C,
                                   int64_t Q, int64_t nt, int ws, int ps, int pt, int dil,
                                   int64_t nh, int K, bool l2, bool exclude_self, int L,
                                   int LP, int64_t* __restrict__ out, acc_t* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (n >= B * nh * Q) return;  // uniform over the warp: only __syncwarp below
  const int64_t Ch = C / nh;
  const int qsz = pt * ps * ps * static_cast<int>(Ch), wsz = pt * static_cast<int>(Ch) * L * LP;
  acc_t* qs = reinterpret_cast<acc_t*>(smem_raw) + static_cast<int64_t>(warp) * (qsz + wsz);
  // (pt, Ch, L, LP): consecutive lanes read consecutive columns; rows LP >= L values apart
  acc_t* win = qs + qsz;
  const int64_t q = n % Q, h = (n / Q) % nh, b = n / (Q * nh);
  const int64_t video = T * H * W * C, c0 = h * Ch;
  const int64_t t = coords[q * 3], qy = coords[q * 3 + 1], qx = coords[q * 3 + 2];
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  const int r = ps / 2;
  const bool slide = step == 1 && dil == 1 && ps <= kSlideMax;
  // the query patch, (pt, ps, ps, Ch); on the sliding path (pt, ps, Ch, ps), so that the ps
  // values of one patch row and channel lie next to each other
  for (int e = lane; e < qsz; e += 32) {
    int c, bb;
    if (slide) {
      bb = e % ps;
      c = (e / ps) % Ch;
    } else {
      c = e % Ch;
      bb = (e / Ch) % ps;
    }
    const int a = (e / Ch / ps) % ps, dt = e / Ch / ps / ps;
    const int64_t y = reflect(qy + dil * (a - r), H), x = reflect(qx + dil * (bb - r), W);
    qs[e] = static_cast<acc_t>(qv[((reflect(t + dt, T) * H + y) * W + x) * C + c0 + c]);
  }
  // columns L .. LP of every window row (the host pads them on the sliding path, LP >= L + NC
  // - 1): read only for candidates past a row's end, which are dropped
  if (LP > L)
    for (int e = lane; e < pt * Ch * L * (LP - L); e += 32)
      win[(e / (LP - L)) * LP + L + e % (LP - L)] = acc_t(0);
  static_assert(!WL || KMAX <= 32, "a warp list holds at most 32 entries");
  TopK<acc_t, int64_t, WL ? 1 : KMAX> top;
  WarpTopK<acc_t> wtop;
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t s = frames[q * nt + f];
    const acc_t cy = centres[((b * Q + q) * nt + f) * 2];
    const acc_t cx = centres[((b * Q + q) * nt + f) * 2 + 1];
    const acc_t by = cy + off0 - acc_t(dil * r), bx = cx + off0 - acc_t(dil * r);
    const acc_t fby = floor_acc(by), fbx = floor_acc(bx);
    const int64_t y0 = static_cast<int64_t>(fby), x0 = static_cast<int64_t>(fbx);
    const acc_t fy = by - fby, fx = bx - fbx;
    const bool sy = fy != acc_t(0), sx = fx != acc_t(0);
    __syncwarp();  // every lane is done with the previous frame's window
    // A lane per column of the window: its two mirrored key columns are found once, then it
    // walks the rows (two mirrored key rows each) and the channels, with no index division.
    for (int col = lane; col < L; col += 32) {
      const int64_t k0 = reflect(x0 + col, W) * C + c0, k1 = reflect(x0 + col + 1, W) * C + c0;
      for (int dt = 0; dt < pt; ++dt) {
        const int64_t fr = reflect(s + dt, T) * H;
        acc_t* wd = win + static_cast<int64_t>(dt) * Ch * L * LP + col;
        for (int row = 0; row < L; ++row) {
          const int64_t r0 = (fr + reflect(y0 + row, H)) * W * C;
          const int64_t r1 = sy ? (fr + reflect(y0 + row + 1, H)) * W * C : r0;
          for (int c = 0; c < Ch; ++c) {
            const acc_t v00 = static_cast<acc_t>(kv[r0 + k0 + c]);
            acc_t v = v00;
            if (sx) v = (acc_t(1) - fx) * v00 + fx * static_cast<acc_t>(kv[r0 + k1 + c]);
            if (sy) {
              const acc_t v10 = static_cast<acc_t>(kv[r1 + k0 + c]);
              acc_t w = v10;
              if (sx) w = (acc_t(1) - fx) * v10 + fx * static_cast<acc_t>(kv[r1 + k1 + c]);
              v = (acc_t(1) - fy) * v + fy * w;
            }
            wd[(static_cast<int64_t>(c) * L + row) * LP] = v;
          }
        }
      }
    }
    __syncwarp();
    // Each lane takes NC neighbouring candidates of one window row at a time: every
    // query value it loads feeds NC multiply-adds (candidates past the row's end read
    // its last column and are dropped). Each distance adds in the order (dt, a, c, bb) on the
    // sliding path (unit spacing and dilation, ps <= kSlideMax), else (dt, a, bb, c).
    // Every lane goes round the loop the same number of times (the warp list's ballots).
    const int groups = (ws + NC - 1) / NC, items = ws * groups;
    for (int m0 = 0; m0 < items; m0 += 32) {
      const int m = m0 + lane;
      const bool live = m < items;
      const int i = live ? m / groups : 0, j0 = live ? (m - i * groups) * NC : 0;
      int col[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) col[n] = min(j0 + n, ws - 1) * step;
      acc_t d[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) d[n] = acc_t(0);
      if (live && slide) {
        // one channel of a patch row at a time: the ps + NC - 1 window values the
        // candidates' rows cover are loaded once, at constant offsets from one address (past
        // the row's last column, from its padding: only dropped candidates read them), and
        // slid over
        for (int dt = 0; dt < pt; ++dt)
          for (int a = 0; a < ps; ++a) {
            const acc_t* wr = win + (dt * Ch * L + i + a) * LP;
            const acc_t* qa = qs + (dt * ps + a) * ps * Ch;
            for (int c = 0; c < Ch; ++c) {
              acc_t w[kSlideMax + NC - 1];
              const acc_t* wc = wr + c * L * LP + j0;
#pragma unroll
              for (int x = 0; x < kSlideMax + NC - 1; ++x)
                if (x < ps + NC - 1) w[x] = wc[x];
              const acc_t* qc = qa + c * ps;
#pragma unroll
              for (int bb = 0; bb < kSlideMax; ++bb)
                if (bb < ps) {
                  const acc_t qv_ = qc[bb];
#pragma unroll
                  for (int n = 0; n < NC; ++n) term<acc_t>(d[n], qv_, w[bb + n], l2);
                }
            }
          }
      } else if (live) {
        const acc_t* qp = qs;
        for (int dt = 0; dt < pt; ++dt)
          for (int a = 0; a < ps; ++a) {
            const acc_t* wr = win + (dt * Ch * L + i * step + a * dil) * LP;
            for (int bb = 0; bb < ps; ++bb)
              for (int c = 0; c < Ch; ++c, ++qp) {
                const acc_t qv_ = *qp;
                const acc_t* wc = wr + c * L * LP + bb * dil;
#pragma unroll
                for (int n = 0; n < NC; ++n) term<acc_t>(d[n], qv_, wc[col[n]], l2);
              }
          }
      }
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        const int j = j0 + n;
        bool has = live && j < ws;
        if (has && exclude_self && s == t) {
          const acc_t y = cy + (off0 + acc_t(i * step)), x = cx + (off0 + acc_t(j * step));
          has = !(fabs(static_cast<double>(y - acc_t(qy))) < 1e-4 &&
                  fabs(static_cast<double>(x - acc_t(qx))) < 1e-4);
        }
        const int64_t id = (f * ws + i) * ws + j;
        if constexpr (WL)
          wtop.offer(has, d[n], id, lane, K, l2);
        else if (has)
          top.insert(d[n], id, K, l2);
      }
    }
  }
  if constexpr (WL) {
    wtop.write(dout + n * K, out + n * K, lane, K, l2);
  } else {
    // Merge the lanes' sorted lists: K rounds of a warp-wide arg-best over the list heads.
    int head = 0;
    for (int rank = 0; rank < K; ++rank) {
      acc_t d = acc_t(0);
      int64_t id = LLONG_MAX;
      if (head < top.n) {
        d = top.d[head];
        id = top.id[head];
      }
      acc_t best = d;
      int64_t best_id = id;
      for (int o = 16; o > 0; o >>= 1) {
        const acc_t od = __shfl_xor_sync(0xffffffffu, best, o);
        const int64_t oid = __shfl_xor_sync(0xffffffffu, best_id, o);
        if (better_entry(od, oid, best, best_id, l2)) {
          best = od;
          best_id = oid;
        }
      }
      if (id != LLONG_MAX && best_id == id) ++head;  // ids are unique: only the owner advances
      if (lane == 0) {
        out[n * K + rank] = best_id == LLONG_MAX ? 0 : best_id;
        dout[n * K + rank] = best_id == LLONG_MAX ? (l2 ? acc_t(INFINITY) : acc_t(-INFINITY)) : best;
      }
    }
  }
}

// queries and keys: channels-last videos (checks.h) on one CUDA device
void check_videos(const at::Tensor& queries, const at::Tensor& keys) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  TORCH_CHECK(queries.is_cuda(), "queries: expected a CUDA tensor");
  stnls::check_device(keys, queries, "keys");
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Row pitch of the window kernel's shared window on the sliding path. On one load, lane m
// reads row m / g at column (m % g) * nc (g = ceil(ws / nc) lane groups per row), at the same
// offset for every lane. The pitch leaves at least nc - 1 columns past each row, so that loads
// need no clamp, and of the 8 pitches from there it takes the one whose 32 lanes fall into
// the fewest same-bank groups of a load (the first of the best): a pitch of 32 would put a
// whole column of rows into one bank.
int64_t window_pitch(int64_t L, int64_t ws, int nc) {
  const int64_t g = (ws + nc - 1) / nc, items = ws * g;
  int64_t best = 0, best_cost = LLONG_MAX;
  for (int64_t p = L + nc - 1; p < L + nc - 1 + 8; ++p) {
    int64_t cost = 0;  // summed over the warp's steps: the most distinct words in one bank
    for (int64_t m0 = 0; m0 < items; m0 += 32) {
      int64_t words[32], nw = 0;
      for (int64_t m = m0; m < std::min(items, m0 + 32); ++m) {
        const int64_t w = (m / g) * p + (m % g) * nc;
        bool seen = false;
        for (int64_t u = 0; u < nw; ++u) seen = seen || words[u] == w;
        if (!seen) words[nw++] = w;
      }
      int per_bank[32] = {0};
      int worst = 0;
      for (int64_t u = 0; u < nw; ++u) worst = std::max(worst, ++per_bank[words[u] % 32]);
      cost += worst;
    }
    if (cost < best_cost) {
      best = p;
      best_cost = cost;
    }
  }
  return best;
}

std::tuple<at::Tensor, at::Tensor> search_topk_cuda(const at::Tensor& queries, const at::Tensor& keys,
                            const at::Tensor& coords, const at::Tensor& centres,
                            const at::Tensor& frames, const at::Tensor& offsets, int64_t ps,
                            int64_t pt, int64_t dilation, int64_t nheads, int64_t k, bool l2,
                            bool exclude_self) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(k >= 1 && k <= 128, "k: the compiled CUDA search takes k <= 128, got ", k);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = coords.size(0), nt = frames.size(1), ws = offsets.size(0);
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  const int64_t n = B * nheads * Q;
  if (n == 0) return {dists, ids};
  const auto crd = coords.contiguous();
  const auto frm = frames.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  // The offsets are ws numbers, read on the host (callers pass them on the CPU; a CUDA tensor
  // costs one copy). A uniform integer spacing selects the shared-window kernel.
  const auto off_host = offsets.to(at::kCPU, at::kDouble).contiguous();
  const double* oh = off_host.data_ptr<double>();
  bool window = true;
  const double step_d = ws > 1 ? oh[1] - oh[0] : 1.0;
  for (int64_t i = 1; i < ws; ++i)
    if (oh[i] - oh[i - 1] != step_d) window = false;
  window = window && step_d >= 1.0 && step_d == std::floor(step_d) && step_d < 1 << 20;
  const int step = static_cast<int>(step_d);
  const int64_t L = window ? step * (ws - 1) + dilation * (ps - 1) + 1 : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    // 7 candidates per lane and step where a window row leaves no more unused slots than with
    // 4 (ws = 5, 7, 13, 21, 27, ...): more multiply-adds per shared-memory load
    const bool seven = (ws + 6) / 7 * 7 <= (ws + 3) / 4 * 4 && k <= 32 &&
                       std::is_same<acc_t, float>::value;
    const int64_t LP = step == 1 && dilation == 1 && ps <= kSlideMax
                           ? window_pitch(L, ws, seven ? 7 : kWinCands)
                           : L;
    const int64_t per_warp = (pt * ps * ps + pt * L * LP) * (queries.size(4) / nheads) *
                             static_cast<int64_t>(sizeof(acc_t));
    constexpr int64_t kSmemMax = 200 * 1024;
    if (window && per_warp <= kSmemMax) {
      int warps = 4;
      while (warps > 1 && warps * per_warp > 96 * 1024) --warps;
      const int64_t smem = warps * per_warp;
      const unsigned grid = static_cast<unsigned>((n + warps - 1) / warps);
      auto launch = [&](auto kmax) {
        constexpr int KM = decltype(kmax)::value;
        auto kern = topk_window_kernel<scalar_t, acc_t, KM>;
        if constexpr (KM <= 32 && std::is_same<acc_t, float>::value)
          if (seven) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 7>;
        if (smem > 48 * 1024)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(smem)));
        kern<<<grid, warps * 32, smem, stream>>>(
            queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), crd.data_ptr<int64_t>(),
            cen.data_ptr<acc_t>(), frm.data_ptr<int64_t>(), static_cast<acc_t>(oh[0]), step, B,
            T, H, W, C, Q, nt, int(ws), int(ps), int(pt), int(dilation), nheads, int(k), l2,
            exclude_self, int(L), int(LP), ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
      };
      stnls::dispatch_kmax(k, launch);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const auto off = offsets.to(queries.device(), c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto launch = [&](auto kmax) {
      constexpr int KM = decltype(kmax)::value;
      topk_kernel<scalar_t, acc_t, KM><<<blocks_for(n), kThreads, 0, stream>>>(
          queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), crd.data_ptr<int64_t>(),
          cen.data_ptr<acc_t>(), frm.data_ptr<int64_t>(), off.data_ptr<acc_t>(), B, T, H, W, C,
          Q, nt, ws, int(ps), int(pt), int(dilation), nheads, int(k), l2, exclude_self,
          ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
    };
    stnls::dispatch_kmax(k, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dists, ids};
}

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
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
constexpr int kSY = 16, kSX = 16, kSW = 8;  // tile of kSY x kSX queries, kSW warps
constexpr int kRP = 18;  // pitch of the row sums: the two half-warps of step 3 on other banks
static_assert(kSX == 16 && kSY == 16, "steps 2 and 3 give each half-warp half of the tile");

__host__ __device__ __forceinline__ int odd_pitch(int w) { return w | 1; }

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

// ---------------------------------------------------------------------------------------------
// Whole-pixel grids, sliding (topk_slide_kernel): ps 3, 5 or 7, stride0 = stride1 = dilation
// = 1, float accumulation, k <= 16, 1 or 3 frames x channels per head (workload A). The box sums
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

  const int64_t bh = blockIdx.z, b = bh / nh, h = bh % nh;
  const int64_t tr = blockIdx.y;
  const int64_t tiles_x = (nW + TX - 1) / TX;
  const int64_t tile_i = blockIdx.x / tiles_x, tile_j = blockIdx.x % tiles_x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int tid = threadIdx.x;
  // the threads that keep the tile's top-k lists: OW lanes of every warp (the lists' work is
  // spread evenly over the warps, which meet at every round's barrier)
  constexpr int OW = (N + kSlideWarps - 1) / kSlideWarps;
  static_assert(OW <= 32, "owners per warp");
  const int qi = warp * OW + lane;  // this thread's query in the tile
  const int64_t gi = tile_i * TY + qi / TX, gj = tile_j * TX + qi % TX;
  const bool active = lane < OW && qi < N && gi < nH && gj < nW;
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
  {
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
    int cy = ny, cx = nx;
    while (PCN * (EY + cy - 1) * odd_pitch(32 + cx - 1) > kcap) {
      if (cy > 1)
        cy = (cy + 1) / 2;
      else
        cx = (cx + 1) / 2;
    }
    for (int ya = ylo; ya <= yhi; ya += cy) {
      const int my = min(cy, yhi - ya + 1);
      for (int xa = xlo; xa <= xhi; xa += cx) {
        const int mx = min(cx, xhi - xa + 1);
        const int KH = EY + my - 1, KW = 32 + mx - 1, KP = odd_pitch(KW), KA = KH * KP;
        // Every warp has passed a round barrier after its last read of Ks.
        for (int e = tid; e < PCN * KH * KW; e += blockDim.x) {
          const int pc = e / (KH * KW), pix = e - pc * (KH * KW), u = pix / KW, v = pix - u * KW;
          const int dt = pc / Ch, c = pc - dt * Ch;
          const int64_t fr = reflect(s + dt, T);
          Ks[pc * KA + u * KP + v] = static_cast<float>(
              kv[((fr * H + reflect(oy0 + ya + u, H)) * W + reflect(ox0 + xa + v, W)) * C + c0 +
                 c]);
        }
        __syncthreads();  // Ks is staged
        // items: one dx and kSlideRows dy each, one per warp per kSlideRows rounds
        const int nitems = mx * ((my + kSlideRows - 1) / kSlideRows);
        for (int ib = 0; ib < nitems; ib += kSlideWarps) {
          const int it = ib + warp;
          const bool has = it < nitems;  // uniform across the warp
          const int ix = has ? it % mx : 0, iy0 = has ? (it / mx) * kSlideRows : 0;
          const float* kc = Ks + lane + ix;
          float Kr[PCN][EY];
#pragma unroll
          for (int pc = 0; pc < PCN; ++pc)
#pragma unroll
            for (int u = 0; u < EY; ++u) Kr[pc][u] = kc[pc * KA + min(iy0 + u, KH - 1) * KP];
#pragma unroll
          for (int st = 0; st < kSlideRows; ++st) {
            if (st > 0) {  // slide the key column down one row (renaming once unrolled)
              const int row = min(iy0 + st + EY - 1, KH - 1);
#pragma unroll
              for (int pc = 0; pc < PCN; ++pc) {
#pragma unroll
                for (int u = 0; u < EY - 1; ++u) Kr[pc][u] = Kr[pc][u + 1];
                Kr[pc][EY - 1] = kc[pc * KA + row * KP];
              }
            }
            const bool valid = has && iy0 + st < my;
            if (valid) {
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
              float* Dw = Ds + (parity * kSlideWarps + warp) * N;
#pragma unroll
              for (int i = 0; i < TY; ++i) {
                const float d = slide_box_lanes<PS>(v[i]);
                if (lane < TX) Dw[i * TX + lane] = d;
              }
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

// ---------------------------------------------------------------------------------------------
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
      // a warp per staged row, lanes over (pixel, channel): coalesced reads, conflict-free
      // stores, kPixBatch loads in flight before their stores
      constexpr int CP = kPixPitch<acc_t, CMAX>;
      const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_el = RW * CMAX;
      for (int u = warp; u < RH; u += kPY * kPX / 32) {
        const int64_t yrow = (s * H + reflect(py0 + ylo + u, H)) * W;
        acc_t* srow = S + u * RW * CP;
        for (int e0 = lane; e0 < n_el; e0 += 32 * kPixBatch) {
          acc_t buf[kPixBatch];
#pragma unroll
          for (int j = 0; j < kPixBatch; ++j) {
            const int e = e0 + 32 * j, v = e / CMAX, c = e % CMAX;
            buf[j] = acc_t(0);
            if (e < n_el && c < Ch)
              buf[j] = static_cast<acc_t>(kv[(yrow + reflect(px0 + xlo + v, W)) * C + c0 + c]);
          }
#pragma unroll
          for (int j = 0; j < kPixBatch; ++j) {
            const int e = e0 + 32 * j;
            if (e < n_el) srow[(e / CMAX) * CP + e % CMAX] = buf[j];
          }
        }
      }
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

// Launch grid of the tiled kernels: (tiles of ty x tx queries of a grid frame, grid frames,
// batch x heads), for the query grid (t0, y0, x0, T_r, nH, nW, ...).
dim3 tile_blocks(at::IntArrayRef grid, int64_t ty, int64_t tx, int64_t bh) {
  TORCH_CHECK(grid[3] <= 65535 && bh <= 65535, "too many frames or batch x heads");
  const int64_t tiles = ((grid[4] + ty - 1) / ty) * ((grid[5] + tx - 1) / tx);
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(grid[3]),
              static_cast<unsigned>(bh));
}

template <typename F>
void dispatch_cmax(int64_t ch, F&& f) {
  if (ch <= 4) {
    f(std::integral_constant<int, 4>{});
  } else if (ch <= 8) {
    f(std::integral_constant<int, 8>{});
  } else if (ch <= 16) {
    f(std::integral_constant<int, 16>{});
  } else if (ch <= 32) {
    f(std::integral_constant<int, 32>{});
  } else {
    f(std::integral_constant<int, 64>{});
  }
}

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
  const int64_t cmax = Ch <= 4 ? 4 : Ch <= 8 ? 8 : Ch <= 16 ? 16 : Ch <= 32 ? 32 : 64;  // dispatch_cmax
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
    dispatch_cmax(Ch, [&](auto cmax) {
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

// Host side of topk_slide_kernel: float accumulation (not float64), k <= 16, ps 3, 5 or 7,
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
  TORCH_CHECK(k <= 16 && (ps == 3 || ps == 5 || ps == 7) && (PC == 1 || PC == 3) &&
                  (st == at::kFloat || st == at::kHalf || st == at::kBFloat16),
              "search_topk_slide_cuda: unsupported case");
  auto ids = at::empty({B, nheads, Q, k}, frames.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(at::kFloat));
  if (ids.numel() == 0) return {dists, ids};
  const auto frm = frames.contiguous();
  const auto cen = centres.to(at::kFloat).contiguous();
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
      auto kern = topk_slide_kernel<scalar_t, 16, PCN, PS>;
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
    auto with_ps = [&](auto pcn) {
      if (ps == 3)
        launch(pcn, std::integral_constant<int, 3>{});
      else if (ps == 5)
        launch(pcn, std::integral_constant<int, 5>{});
      else
        launch(pcn, std::integral_constant<int, 7>{});
    };
    if (PC == 3)
      with_ps(std::integral_constant<int, 3>{});
    else
      with_ps(std::integral_constant<int, 1>{});
  };
  if (queries.scalar_type() == at::kFloat)
    run(float{});
  else if (queries.scalar_type() == at::kHalf)
    run(at::Half{});
  else
    run(at::BFloat16{});
  return {dists, ids};
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
  if (pix_on && ps == 1 && pt == 1 && k <= 16 && s1 >= 1 && queries.size(4) / nheads <= 64)
    return search_topk_pix_cuda(queries, keys, centres, frames, grid, stride0, nheads, k, l2,
                                exclude_self, ws);
  if (nt * ws * ws >= INT_MAX || s1 < 1)  // ids past int, or a sub-pixel grid
    return search_topk_cuda(queries, keys, coords, centres, frames, offsets, ps, pt, dilation,
                            nheads, k, l2, exclude_self);
  // NAPARI_STNLS_CUDA_SLIDE=0 turns the sliding kernel off (to time it against the staged one)
  static const bool slide_on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CUDA_SLIDE");
    return !(e && std::string(e) == "0");
  }();
  const int64_t PCh = pt * (queries.size(4) / nheads);
  if (slide_on && k <= 16 && s1 == 1 && stride0 == 1 && dilation == 1 &&
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

template <typename acc_t, typename pos_t>
__device__ __forceinline__ Pos<acc_t> load_pos(const pos_t* p, bool need_both) {
  const int64_t t = static_cast<int64_t>(llround(static_cast<double>(p[0])));
  return make_pos<acc_t>(t, static_cast<acc_t>(p[1]), static_cast<acc_t>(p[2]), need_both);
}

template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void dists_kernel(const scalar_t* __restrict__ qdata, const scalar_t* __restrict__ kdata,
                             const int64_t* __restrict__ coords, const pos_t* __restrict__ kpos,
                             int64_t B, int64_t T, int64_t H, int64_t W, int64_t C, int64_t nh,
                             int64_t Q, int64_t K, int ps, int pt, int dil, bool l2,
                             acc_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q * K) return;
  const int64_t q = (n / K) % Q, h = (n / (K * Q)) % nh, b = n / (K * Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C;
  const Pos<acc_t> qp =
      make_pos<acc_t>(coords[q * 3], acc_t(coords[q * 3 + 1]), acc_t(coords[q * 3 + 2]), false);
  const Pos<acc_t> kp = load_pos<acc_t>(kpos + n * 3, false);
  out[n] = patch_distance(qdata + b * video, qp, kdata + b * video, kp, T, H, W, C, h * Ch, Ch, ps,
                          pt, dil, l2);
}

at::Tensor search_dists_cuda(const at::Tensor& queries, const at::Tensor& keys,
                             const at::Tensor& coords, const at::Tensor& kpos, int64_t ps,
                             int64_t pt, int64_t dilation, bool l2,
                             const std::optional<at::Tensor>& given) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  const c10::cuda::CUDAGuard guard(queries.device());
  if (given.has_value()) return stnls::given_dists(*given, queries, kpos);
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3);
  const auto acc_type = stnls::acc_type(queries);
  auto dists = at::empty({B, nh, Q, K}, queries.options().dtype(acc_type));
  const int64_t n = dists.numel();
  if (n == 0) return dists;
  const auto crd = coords.contiguous();
  const auto pos = kpos.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_dists_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_cuda_pos", [&] {
      dists_kernel<video_t, acc_t, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          queries.data_ptr<video_t>(), keys.data_ptr<video_t>(), crd.data_ptr<int64_t>(),
          pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K, int(ps), int(pt), int(dilation), l2,
          dists.data_ptr<acc_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dists;
}

// One thread per (b, h, q, r): gradients of grad[n] * dist w.r.t. the query and key values
// (atomic adds into float32/float64 buffers) and the key position.
template <typename scalar_t, typename acc_t, typename pos_t>
__global__ void dists_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ qdata,
                                      const scalar_t* __restrict__ kdata,
                                      const int64_t* __restrict__ coords,
                                      const pos_t* __restrict__ kpos, int64_t B, int64_t T, int64_t H,
                                      int64_t W, int64_t C, int64_t nh, int64_t Q, int64_t K, int ps,
                                      int pt, int dil, bool l2, bool need_q, bool need_k,
                                      bool need_pos, acc_t* __restrict__ gq, acc_t* __restrict__ gk,
                                      pos_t* __restrict__ gpos) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * nh * Q * K) return;
  const int64_t q = (n / K) % Q, h = (n / (K * Q)) % nh, b = n / (K * Q * nh);
  const int64_t Ch = C / nh, video = T * H * W * C, c0 = h * Ch;
  const acc_t g = grad[n];
  const Pos<acc_t> qp =
      make_pos<acc_t>(coords[q * 3], acc_t(coords[q * 3 + 1]), acc_t(coords[q * 3 + 2]), false);
  const Pos<acc_t> kp = load_pos<acc_t>(kpos + n * 3, need_pos);
  const scalar_t* qv = qdata + b * video;
  const scalar_t* kv = kdata + b * video;
  acc_t* gqb = gq + b * video;
  acc_t* gkb = gk + b * video;
  acc_t gy = 0, gx = 0;
  const acc_t wy0 = kp.sy ? acc_t(1) - kp.fy : acc_t(1), wx0 = kp.sx ? acc_t(1) - kp.fx : acc_t(1);
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int bb = 0; bb < ps; ++bb) {
        const Px qo = locate(qp, dt, a, bb, T, H, W, ps, dil);
        const Px ko = locate(kp, dt, a, bb, T, H, W, ps, dil);
        for (int64_t c = c0; c < c0 + Ch; ++c) {
          const acc_t qvl = value(qv, C, qp, qo, c);
          const acc_t kvl = value(kv, C, kp, ko, c);
          const acc_t dq = l2 ? acc_t(2) * (qvl - kvl) : kvl;
          const acc_t dk = l2 ? -dq : qvl;
          if (need_q) gpuAtomicAdd(&gqb[(qo.r0 + qo.c0) * C + c], g * dq);
          if (need_k) {
            const acc_t gv = g * dk;
            gpuAtomicAdd(&gkb[(ko.r0 + ko.c0) * C + c], gv * wy0 * wx0);
            if (kp.sx) gpuAtomicAdd(&gkb[(ko.r0 + ko.c1) * C + c], gv * wy0 * kp.fx);
            if (kp.sy) {
              gpuAtomicAdd(&gkb[(ko.r1 + ko.c0) * C + c], gv * kp.fy * wx0);
              if (kp.sx) gpuAtomicAdd(&gkb[(ko.r1 + ko.c1) * C + c], gv * kp.fy * kp.fx);
            }
          }
          if (need_pos) {
            const acc_t v00 = static_cast<acc_t>(kv[(ko.r0 + ko.c0) * C + c]);
            const acc_t v01 = static_cast<acc_t>(kv[(ko.r0 + ko.c1) * C + c]);
            const acc_t v10 = static_cast<acc_t>(kv[(ko.r1 + ko.c0) * C + c]);
            const acc_t v11 = static_cast<acc_t>(kv[(ko.r1 + ko.c1) * C + c]);
            gy += g * dk * ((acc_t(1) - kp.fx) * (v10 - v00) + kp.fx * (v11 - v01));
            gx += g * dk * ((acc_t(1) - kp.fy) * (v01 - v00) + kp.fy * (v11 - v10));
          }
        }
      }
  if (need_pos) {
    gpos[n * 3 + 1] = static_cast<pos_t>(gy);
    gpos[n * 3 + 2] = static_cast<pos_t>(gx);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> search_dists_backward_cuda(
    const at::Tensor& grad, const at::Tensor& queries, const at::Tensor& keys,
    const at::Tensor& coords, const at::Tensor& kpos, int64_t ps, int64_t pt, int64_t dilation,
    bool l2, std::array<bool, 3> needs) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3);
  const auto acc_type = stnls::acc_type(queries);
  auto gq = at::zeros(queries.sizes(), queries.options().dtype(acc_type));
  auto gk = at::zeros(keys.sizes(), keys.options().dtype(acc_type));
  const bool sub = kpos.is_floating_point();
  auto gpos = at::zeros(kpos.sizes(), kpos.options().dtype(sub ? kpos.scalar_type() : acc_type));
  const int64_t n = B * nh * Q * K;
  if (n > 0) {
    const auto crd = coords.contiguous();
    const auto pos = kpos.contiguous();
    const auto g = grad.to(acc_type).contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                    "search_dists_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_backward_cuda_pos", [&] {
        dists_backward_kernel<video_t, acc_t, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
            g.data_ptr<acc_t>(), queries.data_ptr<video_t>(), keys.data_ptr<video_t>(),
            crd.data_ptr<int64_t>(), pos.data_ptr<scalar_t>(), B, T, H, W, C, nh, Q, K, int(ps),
            int(pt), int(dilation), l2, needs[0], needs[1], needs[2] && sub,
            gq.data_ptr<acc_t>(), gk.data_ptr<acc_t>(),
            sub ? gpos.data_ptr<scalar_t>() : nullptr);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gq.to(queries.scalar_type()), gk.to(keys.scalar_type()), gpos};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("search_topk", &search_topk_cuda);
  m.impl("search_topk_box", &search_topk_box_cuda);
  m.impl("search_dists", &search_dists_cuda);
  m.impl("search_dists_backward", &search_dists_backward_cuda);
}
