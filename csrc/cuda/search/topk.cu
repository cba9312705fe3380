// search_topk on CUDA (see common.cuh): topk_window_kernel for an integer search-grid
// spacing (with or without flow), topk_kernel for any spacing.
#include <torch/library.h>

#include <type_traits>

#include "../../include/positions.h"
#include "common.cuh"
#include "patch.cuh"

namespace stnls::search_cuda {
namespace {

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

// WL: the warp keeps one list (WarpTopK, k <= 32) instead of one per lane merged at the end;
// NC: candidates of one window row per lane and step.
// PSK: the patch side as a constant (0: ps as passed), so that the sliding path's loops over a
// patch row unroll with no tests.
template <typename scalar_t, typename acc_t, int KMAX, bool WL = (KMAX <= 32),
          int NC = kWinCands, int PSK = 0>
__global__ void __launch_bounds__(128, 5) topk_window_kernel(const scalar_t* __restrict__ qdata,
                                   const scalar_t* __restrict__ kdata,
                                   const int64_t* __restrict__ coords,
                                   const acc_t* __restrict__ centres,
                                   const int64_t* __restrict__ frames, acc_t off0, int step,
                                   int64_t B, int64_t T, int64_t H, int64_t W, int64_t C,
                                   int64_t Q, int64_t nt, int ws, int ps_arg, int pt, int dil,
                                   int64_t nh, int K, bool l2, bool exclude_self, int L,
                                   int LP, int lc, int64_t* __restrict__ out,
                                   acc_t* __restrict__ dout) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ps = PSK > 0 ? PSK : ps_arg;
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
    // (Lanes sharing out the window's pixels instead, so that every lane works when L < 32,
    // were 3-20% slower on an H100 for ws 11 and 21, and 4% faster for ws 7.) Windows of at
    // most 16 columns (lc = 4) take two lanes a column, each every other row: the same values.
    const int rows0 = lane >> lc, rstep = 32 >> lc;
    for (int col = lane & ((1 << lc) - 1); col < L; col += 1 << lc) {
      const int64_t k0 = reflect(x0 + col, W) * C + c0, k1 = reflect(x0 + col + 1, W) * C + c0;
      for (int dt = 0; dt < pt; ++dt) {
        const int64_t fr = reflect(s + dt, T) * H;
        acc_t* wd = win + static_cast<int64_t>(dt) * Ch * L * LP + col;
        for (int row = rows0; row < L; row += rstep) {
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

// The list capacities of the per-query kernels: dispatch_kmax's, and 256 for larger k (the
// groups of nl_bayes's second step: k = 160), where each lane keeps its own list.
constexpr int64_t kMaxK = 256;
template <typename F>
void dispatch_k(int64_t k, F&& f) {
  if (k > 128)
    f(std::integral_constant<int, 256>{});
  else
    stnls::dispatch_kmax(k, f);
}

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

// Warp instructions per (query, frame, patch row and channel) of the sliding path with nc
// candidates per lane and step: passes over the window's items times each lane's ps + nc - 1
// loads and ps * nc multiply-adds.
int64_t window_nc_cost(int64_t ws, int64_t ps, int nc) {
  const int64_t items = ws * ((ws + nc - 1) / nc);
  return (items + 31) / 32 * (ps + nc - 1 + ps * nc);
}

// Candidates per lane and step on the sliding path (float, k <= 32): the one of 4, 3, 6 and 7
// with the least window_nc_cost (4 among equals, then the first). On an H100 (ps 7, 540p, 5
// frames, a smooth sub-pixel flow) the cost's choice of 4, 6 and 7 was the fastest of those
// three for ws 7, 11 and 21 (13% and 14% faster than the former choices 7 and 4 for ws 7 and
// 11); 3, added later, is the cost's choice for ws 9 (27 lanes x 3 candidates, all used,
// against 27 x 4 with 81 of 108 used): 96.7 against 102.8 ms with ps passed, 86.4 against
// 91.8 with ps constant; ws 7 takes it too by the cost (not timed). The sums' order does not
// depend on it: the same bits. NAPARI_STNLS_CUDA_WINNC=3|4|6|7 forces one (read on every
// call, for timing).
int window_nc(int64_t ws, int64_t ps) {
  if (const char* e = std::getenv("NAPARI_STNLS_CUDA_WINNC"); e && *e) {
    const int v = std::atoi(e);
    if (v == 3 || v == 4 || v == 6 || v == 7) return v;
  }
  int best = kWinCands;
  for (const int nc : {3, 6, 7})
    if (window_nc_cost(ws, ps, nc) < window_nc_cost(ws, ps, best)) best = nc;
  return best;
}

// Whether the window kernel's sliding path takes the patch side as a constant where it is 7
// (nl_means' patches): NAPARI_STNLS_CUDA_WINPS (read on every call, for timing) 0 or 1, else
// kWinPsConst. H100, nl_means' search at 540p: 91.8 against 102.8 ms (4 candidates a lane),
// 86.4 against 96.7 (3), the same bits; spills 44 -> 20 bytes.
constexpr bool kWinPsConst = true;

bool window_ps_const() {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_WINPS");
  return e && *e ? e[0] == '1' : kWinPsConst;
}

// log2 of the lanes that interpolate one row of the window: 16 (two lanes a column, every
// other row each) for windows of at most 16 columns (ws 9 with ps 7: 15) where
// NAPARI_STNLS_CUDA_WINSPLIT (read on every call, for timing) is 1 or, unset, kWinSplit is
// true; else 32. On an H100, nl_means' 540p search (ws 9, ps 7, k 24, a smooth flow) took
// 128 ms with the split against 145 ms, with the same distances and neighbours.
constexpr bool kWinSplit = true;

int window_lanes_log2(int64_t L) {
  const char* e = std::getenv("NAPARI_STNLS_CUDA_WINSPLIT");
  const bool split = e && *e ? e[0] == '1' : kWinSplit;
  return split && L <= 16 ? 4 : 5;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> search_topk_cuda(const at::Tensor& queries, const at::Tensor& keys,
                            const at::Tensor& coords, const at::Tensor& centres,
                            const at::Tensor& frames, const at::Tensor& offsets, int64_t ps,
                            int64_t pt, int64_t dilation, int64_t nheads, int64_t k, bool l2,
                            bool exclude_self) {
  check_videos(queries, keys);
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(k >= 1 && k <= kMaxK, "k: the compiled CUDA search takes k <= ", kMaxK, ", got ", k);
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
    const bool sliding = step == 1 && dilation == 1 && ps <= kSlideMax;
    // candidates of a window row per lane and step (NC): 4, or 6 or 7 where they take fewer
    // instructions per query and frame (window_nc; float, k <= 32, the sliding path)
    const int nc = sliding && k <= 32 && std::is_same<acc_t, float>::value
                       ? window_nc(int(ws), int(ps))
                       : kWinCands;
    const int64_t LP = sliding ? window_pitch(L, ws, nc) : L;
    const int64_t per_warp = (pt * ps * ps + pt * L * LP) * (queries.size(4) / nheads) *
                             static_cast<int64_t>(sizeof(acc_t));
    constexpr int64_t kSmemMax = 200 * 1024;
    if (window && per_warp <= kSmemMax) {
      int warps = 4;
      while (warps > 1 && warps * per_warp > 96 * 1024) --warps;
      const int64_t smem = warps * per_warp;
      const unsigned grid = static_cast<unsigned>((n + warps - 1) / warps);
      const int lc = window_lanes_log2(L);
      auto launch = [&](auto kmax) {
        constexpr int KM = decltype(kmax)::value;
        auto kern = topk_window_kernel<scalar_t, acc_t, KM>;
        if constexpr (KM <= 32 && std::is_same<acc_t, float>::value) {
          if (nc == 3) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 3>;
          if (nc == 6) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 6>;
          if (nc == 7) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 7>;
          if (sliding && ps == 7 && window_ps_const()) {
            if (nc == 3) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 3, 7>;
            if (nc == 4) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 4, 7>;
            if (nc == 6) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 6, 7>;
            if (nc == 7) kern = topk_window_kernel<scalar_t, acc_t, KM, true, 7, 7>;
          }
        }
        if (smem > 48 * 1024)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(smem)));
        kern<<<grid, warps * 32, smem, stream>>>(
            queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), crd.data_ptr<int64_t>(),
            cen.data_ptr<acc_t>(), frm.data_ptr<int64_t>(), static_cast<acc_t>(oh[0]), step, B,
            T, H, W, C, Q, nt, int(ws), int(ps), int(pt), int(dilation), nheads, int(k), l2,
            exclude_self, int(L), int(LP), lc, ids.data_ptr<int64_t>(), dists.data_ptr<acc_t>());
      };
      dispatch_k(k, launch);
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
    dispatch_k(k, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dists, ids};
}

namespace {

// One thread per (batch, head, query, neighbour): its id's position, whole-pixel int32
// (out_t int32_t, s1 an integer) or float (out_t acc_t).
template <typename acc_t, typename out_t, typename s1_t>
__global__ void positions_kernel(const int64_t* __restrict__ ids, const acc_t* __restrict__ centres,
                                 const int64_t* __restrict__ frames, int64_t n, int64_t Q,
                                 int64_t nh, int64_t K, int64_t nt, int64_t ws, s1_t s1,
                                 out_t* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int64_t q = (e / K) % Q, b = e / (K * Q * nh);
  const acc_t* c = centres + (b * Q + q) * nt * 2;
  if constexpr (std::is_same<out_t, int32_t>::value)
    stnls::int_position(ids[e], c, frames + q * nt, ws, s1, out + e * 3);
  else
    stnls::float_position(ids[e], c, frames + q * nt, ws, s1, out + e * 3);
}

// search_positions(_int): int32 positions where whole, else in the centres' dtype.
at::Tensor positions_cuda(const at::Tensor& ids, const at::Tensor& centres, const at::Tensor& frames,
                          int64_t ws, double stride1, bool whole) {
  stnls::check_positions_args(ids, centres, frames, ws, stride1);
  TORCH_CHECK(ids.is_cuda(), "ids: expected a CUDA tensor");
  const c10::cuda::CUDAGuard guard(ids.device());
  const int64_t B = ids.size(0), nh = ids.size(1), Q = ids.size(2), K = ids.size(3);
  auto kpos = at::empty({B, nh, Q, K, 3}, whole ? ids.options().dtype(at::kInt) : centres.options());
  const int64_t n = ids.numel();
  if (n == 0) return kpos;
  const auto id = ids.contiguous();
  const auto frm = frames.contiguous();
  const auto cen = centres.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(cen.scalar_type(), "search_positions_cuda", [&] {
    auto launch = [&](auto s1, auto* out) {
      positions_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
          id.data_ptr<int64_t>(), cen.data_ptr<scalar_t>(), frm.data_ptr<int64_t>(), n, Q, nh, K,
          frames.size(1), ws, s1, out);
    };
    if (whole) launch(static_cast<int64_t>(stride1), kpos.data_ptr<int32_t>());
    else launch(static_cast<scalar_t>(stride1), kpos.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return kpos;
}

// One thread per (batch, query): its window centres along the flows (search_centres).
template <typename acc_t>
__global__ void centres_kernel(const int64_t* __restrict__ coords, const int64_t* __restrict__ frames,
                               const acc_t* __restrict__ fflow, const acc_t* __restrict__ bflow,
                               int64_t B, int64_t Q, int64_t nt, int64_t T, int64_t H, int64_t W,
                               bool round, acc_t r, acc_t* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= B * Q) return;
  const int64_t q = e % Q, b = e / Q, video = T * H * W * 2;
  stnls::chain_centres(coords + q * 3, frames + q * nt, nt, fflow + b * video, bflow + b * video,
                       T, H, W, round, r, out + e * nt * 2);
}

}  // namespace

at::Tensor search_centres_cuda(const at::Tensor& coords, const at::Tensor& frames,
                               const at::Tensor& fflow, const at::Tensor& bflow, int64_t T,
                               int64_t H, int64_t W, bool round, double r) {
  stnls::check_centres_args(coords, frames, fflow, bflow, T, H, W);
  TORCH_CHECK(coords.is_cuda(), "coords: expected a CUDA tensor");
  const c10::cuda::CUDAGuard guard(coords.device());
  const int64_t B = fflow.size(0), Q = coords.size(0), nt = frames.size(1);
  auto out = at::empty({B, Q, nt, 2}, fflow.options());
  if (out.numel() == 0) return out;
  const auto crd = coords.contiguous(), frm = frames.contiguous();
  const auto ff = fflow.contiguous(), bf = bflow.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ff.scalar_type(), "search_centres_cuda", [&] {
    centres_kernel<scalar_t><<<blocks_for(B * Q), kThreads, 0, stream>>>(
        crd.data_ptr<int64_t>(), frm.data_ptr<int64_t>(), ff.data_ptr<scalar_t>(),
        bf.data_ptr<scalar_t>(), B, Q, nt, T, H, W, round, static_cast<scalar_t>(r),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor search_positions_cuda(const at::Tensor& ids, const at::Tensor& centres,
                                 const at::Tensor& frames, int64_t ws, double stride1) {
  return positions_cuda(ids, centres, frames, ws, stride1, false);
}

at::Tensor search_positions_int_cuda(const at::Tensor& ids, const at::Tensor& centres,
                                     const at::Tensor& frames, int64_t ws, int64_t stride1) {
  return positions_cuda(ids, centres, frames, ws, static_cast<double>(stride1), true);
}

}  // namespace stnls::search_cuda

TORCH_LIBRARY_IMPL(napari_stnls, CUDA, m) {
  m.impl("search_topk", &stnls::search_cuda::search_topk_cuda);
  m.impl("search_positions_int", &stnls::search_cuda::search_positions_int_cuda);
  m.impl("search_positions", &stnls::search_cuda::search_positions_cuda);
  m.impl("search_centres", &stnls::search_cuda::search_centres_cuda);
}
