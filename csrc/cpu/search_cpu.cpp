// CPU kernels of the search (OpenMP through at::parallel_for over queries).
//
// search_topk streams every candidate of a query, computes its patch distance once and keeps
// the k best in a small sorted list: nothing is materialised beyond the output.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../include/checks.h"
#include "../include/dispatch.h"
#include "../include/mirror.h"
#include "../include/patch_loc.h"
#include "../include/topk.h"

namespace {

using stnls::PatchLoc;

// The query patch of head h at integer (t, y, x), in (pt, ps, ps, Ch) order.
template <typename scalar_t, typename acc_t>
void load_query(const scalar_t* qv, PatchLoc<acc_t>& loc, int64_t C, int64_t c0, int64_t Ch,
                int ps, int pt, acc_t* out) {
  int64_t n = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b)
        for (int64_t c = 0; c < Ch; ++c) out[n++] = loc.value(qv, C, dt, a, b, c0 + c);
}

template <typename scalar_t, typename acc_t>
acc_t patch_distance(const scalar_t* kv, const PatchLoc<acc_t>& loc, const acc_t* q, int64_t C,
                     int64_t c0, int64_t Ch, int ps, int pt, bool l2) {
  acc_t d = 0;
  int64_t n = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a)
      for (int b = 0; b < ps; ++b)
        for (int64_t c = 0; c < Ch; ++c, ++n) {
          const acc_t v = loc.value(kv, C, dt, a, b, c0 + c);
          if (l2) {
            const acc_t e = q[n] - v;
            d += e * e;
          } else {
            d += q[n] * v;
          }
        }
  return d;
}

// The distance term of n contiguous values (a pixel's channels, in the box path's difference
// image): sum of squared differences (l2) or of products. Vectorised (a fixed order of
// partial sums: deterministic); this matters for many-channel features (workload B: 64
// channels, one pixel per patch).
template <typename acc_t, typename scalar_t>
inline acc_t distance_run(const scalar_t* x, const scalar_t* y, int64_t n, bool l2) {
  acc_t acc = 0;
  if (l2) {
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < n; ++c) {
      const acc_t e = static_cast<acc_t>(x[c]) - static_cast<acc_t>(y[c]);
      acc += e * e;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < n; ++c) acc += static_cast<acc_t>(x[c]) * static_cast<acc_t>(y[c]);
  }
  return acc;
}

// Window path: the distances of kWinV neighbouring candidates of one window row at once, as
// one vector of kWinV values (GCC/Clang vector extensions: SSE or AVX registers, no
// intrinsics). Term m of the patch is the query value q[m] against the kWinV contiguous
// window values at w + off[m]. Four accumulators keep four chains of additions in flight
// (one chain was bound by the latency of each addition); they are added at the end.
constexpr int kWinV = 8;

template <typename acc_t>
struct WinVec {
  typedef acc_t type __attribute__((vector_size(kWinV * sizeof(acc_t))));
};

template <bool L2, typename acc_t>
__attribute__((always_inline)) inline void window_term(typename WinVec<acc_t>::type& acc, acc_t q,
                                                       const acc_t* w) {
  typename WinVec<acc_t>::type x;
  std::memcpy(&x, w, sizeof(x));
  if constexpr (L2) {
    const auto e = q - x;
    acc += e * e;
  } else {
    acc += q * x;
  }
}

template <bool L2, typename acc_t>
__attribute__((always_inline)) inline typename WinVec<acc_t>::type window_dists(
    const acc_t* q, const acc_t* w, const int64_t* off, int64_t n) {
  typename WinVec<acc_t>::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t m = 0;
  for (; m + 4 <= n; m += 4) {
    window_term<L2>(a0, q[m], w + off[m]);
    window_term<L2>(a1, q[m + 1], w + off[m + 1]);
    window_term<L2>(a2, q[m + 2], w + off[m + 2]);
    window_term<L2>(a3, q[m + 3], w + off[m + 3]);
  }
  for (; m < n; ++m) window_term<L2>(a0, q[m], w + off[m]);
  return (a0 + a1) + (a2 + a3);
}

// Everything search_topk_cpu's loop over queries reads (see topk_queries).
template <typename scalar_t, typename acc_t>
struct TopkArgs {
  bool window;
  int64_t L;
  int64_t step;
  const int64_t* toff;
  int64_t ps;
  int64_t pt;
  int64_t dilation;
  int64_t nheads;
  int64_t psz;
  int64_t k;
  int64_t C;
  int64_t Ch;
  int64_t T;
  int64_t H;
  int64_t W;
  int64_t Q;
  int64_t nt;
  int64_t ws;
  const scalar_t* qdata;
  const scalar_t* kdata;
  const int64_t* cdata;
  const int64_t* fdata;
  const acc_t* centre;
  const acc_t* offs;
  int64_t* out;
  acc_t* dout;
  int64_t video;
  bool l2;
  bool exclude_self;
};

// The queries begin .. end of search_topk_cpu (flat over batch and query). Always inlined into
// the two entry points below, so that it is compiled once for the baseline instruction set
// and once with AVX2 (its 8-wide window vectors then take one instruction instead of two).
// Both give the same bits: no fused multiply-add, and every sum in the same order.
template <typename scalar_t, typename acc_t>
__attribute__((always_inline)) inline void topk_queries(const TopkArgs<scalar_t, acc_t>& args,
                                                        int64_t begin, int64_t end) {
  const auto& [window, L, step, toff, ps, pt, dilation, nheads, psz, k, C, Ch, T, H, W, Q, nt, ws,
      qdata, kdata, cdata, fdata, centre, offs, out, dout, video, l2, exclude_self] = args;
  // the interpolated window, planar (pt, C, L, L), with kWinV values of slack at the end
  // for the dropped candidates past the last column
  std::vector<acc_t> win(window ? pt * C * L * L + kWinV : 0);
  std::vector<int64_t> xc0(window ? L : 0), xc1(window ? L : 0);
  std::vector<acc_t> qbuf(nheads * psz), bd(nheads * k);
  std::vector<int64_t> bi(nheads * k);
  std::vector<int> cnt(nheads);
  PatchLoc<acc_t> loc;
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / Q, q = bq % Q;
    const int64_t t = cdata[q * 3], qy = cdata[q * 3 + 1], qx = cdata[q * 3 + 2];
    const scalar_t* qv = qdata + b * video;
    const scalar_t* kv = kdata + b * video;
    loc.set(t, acc_t(qy), acc_t(qx), T, H, W, ps, pt, dilation, false);
    for (int64_t h = 0; h < nheads; ++h) {
      load_query(qv, loc, C, h * Ch, Ch, ps, pt, qbuf.data() + h * psz);
      cnt[h] = 0;
    }
    for (int64_t f = 0; f < nt; ++f) {
      const int64_t s = fdata[q * nt + f];
      const acc_t cy = centre[((b * Q + q) * nt + f) * 2];
      const acc_t cx = centre[((b * Q + q) * nt + f) * 2 + 1];
      if (window) {
        // All candidates share the centre's fractional part: read the window they cover
        // once, interpolate it once (as PatchLoc::value does, x then y), and compute each
        // distance from it.
        const acc_t by = cy + offs[0] - acc_t(dilation * (ps / 2));
        const acc_t bx = cx + offs[0] - acc_t(dilation * (ps / 2));
        loc.set(s, by, bx, T, H, W, 1, 1, 1, false);
        const int64_t y0 = static_cast<int64_t>(std::floor(by));
        const int64_t x0 = static_cast<int64_t>(std::floor(bx));
        // the mirrored columns (x0 + c and x0 + c + 1) of the window, once per frame
        for (int64_t c = 0; c < L; ++c) {
          xc0[c] = stnls::reflect(x0 + c, W) * C;
          xc1[c] = stnls::reflect(x0 + c + 1, W) * C;
        }
        const acc_t fx = loc.fx, fy = loc.fy;
        for (int64_t dt = 0; dt < pt; ++dt) {
          const int64_t fr = stnls::reflect(s + dt, T) * H;
          for (int64_t r = 0; r < L; ++r) {
            const scalar_t* k0 = kv + (fr + stnls::reflect(y0 + r, H)) * W * C;
            const scalar_t* k1 = kv + (fr + stnls::reflect(y0 + r + 1, H)) * W * C;
            for (int64_t ch = 0; ch < C; ++ch) {
              acc_t* o = win.data() + ((dt * C + ch) * L + r) * L;
              if (!loc.sub_x && !loc.sub_y) {
                for (int64_t c = 0; c < L; ++c) o[c] = static_cast<acc_t>(k0[xc0[c] + ch]);
                continue;
              }
              for (int64_t c = 0; c < L; ++c) {
                const acc_t v00 = static_cast<acc_t>(k0[xc0[c] + ch]);
                acc_t r0v = v00;
                if (loc.sub_x) r0v = (acc_t(1) - fx) * v00 + fx * static_cast<acc_t>(k0[xc1[c] + ch]);
                if (loc.sub_y) {
                  const acc_t v10 = static_cast<acc_t>(k1[xc0[c] + ch]);
                  acc_t r1v = v10;
                  if (loc.sub_x) r1v = (acc_t(1) - fx) * v10 + fx * static_cast<acc_t>(k1[xc1[c] + ch]);
                  r0v = (acc_t(1) - fy) * r0v + fy * r1v;
                }
                o[c] = r0v;
              }
            }
          }
        }
      }
      if (window && step == 1) {
        // kWinV neighbouring candidates of a window row at a time (window_dists), then
        // inserted in ascending id order
        for (int64_t i = 0; i < ws; ++i) {
          const acc_t y = cy + offs[i];
          for (int64_t j0 = 0; j0 < ws; j0 += kWinV) {
            for (int64_t h = 0; h < nheads; ++h) {
              const acc_t* w0 = win.data() + i * L + j0;
              const auto acc =
                  l2 ? window_dists<true>(qbuf.data() + h * psz, w0, toff + h * psz, psz)
                     : window_dists<false>(qbuf.data() + h * psz, w0, toff + h * psz, psz);
              for (int64_t n = 0; n < kWinV && j0 + n < ws; ++n) {
                const acc_t x = cx + offs[j0 + n];
                if (exclude_self && s == t && std::abs(y - acc_t(qy)) < acc_t(1e-4) &&
                    std::abs(x - acc_t(qx)) < acc_t(1e-4))
                  continue;
                stnls::topk_insert(bd.data() + h * k, bi.data() + h * k, cnt[h], int(k), acc[n],
                                   (f * ws + i) * ws + j0 + n, l2);
              }
            }
          }
        }
        continue;
      }
      for (int64_t i = 0; i < ws; ++i) {
        const acc_t y = cy + offs[i];
        for (int64_t j = 0; j < ws; ++j) {
          const acc_t x = cx + offs[j];
          if (exclude_self && s == t && std::abs(y - acc_t(qy)) < acc_t(1e-4) &&
              std::abs(x - acc_t(qx)) < acc_t(1e-4))
            continue;
          const int64_t id = (f * ws + i) * ws + j;
          if (window) {  // a search-grid spacing of step > 1 whole pixels
            for (int64_t h = 0; h < nheads; ++h) {
              const acc_t* qp = qbuf.data() + h * psz;
              acc_t d = 0;
              for (int64_t dt = 0; dt < pt; ++dt)
                for (int64_t a = 0; a < ps; ++a) {
                  const acc_t* row =
                      win.data() + ((dt * C + h * Ch) * L + i * step + a * dilation) * L + j * step;
                  for (int64_t bb = 0; bb < ps; ++bb)
                    for (int64_t ch = 0; ch < Ch; ++ch, ++qp) {
                      const acc_t v = row[ch * L * L + bb * dilation];
                      if (l2) {
                        const acc_t e = *qp - v;
                        d += e * e;
                      } else {
                        d += *qp * v;
                      }
                    }
                }
              stnls::topk_insert(bd.data() + h * k, bi.data() + h * k, cnt[h], int(k), d, id, l2);
            }
            continue;
          }
          loc.set(s, y, x, T, H, W, ps, pt, dilation, false);
          for (int64_t h = 0; h < nheads; ++h) {
            const acc_t d = patch_distance(kv, loc, qbuf.data() + h * psz, C, h * Ch, Ch, ps,
                                           pt, l2);
            stnls::topk_insert(bd.data() + h * k, bi.data() + h * k, cnt[h], int(k), d, id,
                               l2);
          }
        }
      }
    }
    for (int64_t h = 0; h < nheads; ++h) {
      const int64_t o = ((b * nheads + h) * Q + q) * k;
      stnls::topk_write(bd.data() + h * k, bi.data() + h * k, cnt[h], int(k), l2, dout + o, out + o);
    }
  }
}

template <typename scalar_t, typename acc_t>
void topk_queries_base(const TopkArgs<scalar_t, acc_t>& args, int64_t begin, int64_t end) {
  topk_queries(args, begin, end);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STNLS_CPU_AVX2 1
template <typename scalar_t, typename acc_t>
__attribute__((target("avx2"))) void topk_queries_avx2(const TopkArgs<scalar_t, acc_t>& args,
                                                       int64_t begin, int64_t end) {
  topk_queries(args, begin, end);
}
#endif

// AVX2 where the CPU has it, unless NAPARI_STNLS_CPU_AVX2=0 (read once; for timing)
bool use_avx2() {
#ifdef STNLS_CPU_AVX2
  static const bool on = [] {
    const char* e = std::getenv("NAPARI_STNLS_CPU_AVX2");
    return __builtin_cpu_supports("avx2") && !(e && std::string(e) == "0");
  }();
  return on;
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> search_topk_cpu(const at::Tensor& queries, const at::Tensor& keys,
                           const at::Tensor& coords, const at::Tensor& centres,
                           const at::Tensor& frames, const at::Tensor& offsets, int64_t ps,
                           int64_t pt, int64_t dilation, int64_t nheads, int64_t k, bool l2,
                           bool exclude_self) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(keys.sizes() == queries.sizes(), "keys: expected the shape of queries");
  TORCH_CHECK(keys.scalar_type() == queries.scalar_type(), "keys: expected the dtype of queries");
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = coords.size(0), nt = frames.size(1), ws = offsets.size(0);
  TORCH_CHECK(C % nheads == 0, "nheads: must divide C");
  TORCH_CHECK(coords.scalar_type() == at::kLong && coords.dim() == 2 && coords.size(1) == 3,
              "coords: expected (Q, 3) int64");
  TORCH_CHECK(frames.scalar_type() == at::kLong && frames.size(0) == Q,
              "frames: expected (Q, nt) int64");
  TORCH_CHECK(centres.dim() == 4 && centres.size(0) == B && centres.size(1) == Q &&
                  centres.size(2) == nt && centres.size(3) == 2,
              "centres: expected (B, Q, nt, 2)");
  TORCH_CHECK(k >= 1 && k <= nt * ws * ws, "k: expected 1 <= k <= nt*ws*ws");
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  const int64_t Ch = C / nheads;
  const auto crd = coords.contiguous();
  const auto frm = frames.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto off = offsets.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const scalar_t* qdata = queries.data_ptr<scalar_t>();
    const scalar_t* kdata = keys.data_ptr<scalar_t>();
    const int64_t* cdata = crd.data_ptr<int64_t>();
    const int64_t* fdata = frm.data_ptr<int64_t>();
    const acc_t* centre = cen.data_ptr<acc_t>();
    const acc_t* offs = off.data_ptr<acc_t>();
    int64_t* out = ids.data_ptr<int64_t>();
    acc_t* dout = dists.data_ptr<acc_t>();
    const int64_t video = T * H * W * C;
    const int64_t psz = pt * ps * ps * Ch;

    // Integer grid spacing: candidates share the centre's fractional part (window path).
    bool window = true;
    for (int64_t i = 1; i < ws; ++i) {
      const double step_i = static_cast<double>(offs[i] - offs[i - 1]);
      if (step_i != std::floor(step_i) || step_i != static_cast<double>(offs[1] - offs[0]))
        window = false;
    }
    const int64_t step = ws > 1 ? static_cast<int64_t>(offs[1] - offs[0]) : 1;
    const int64_t L = step * (ws - 1) + dilation * (ps - 1) + 1;  // window side
    // Offset in the window of each term (dt, a, bb, c) of each head's patch, from the
    // window position of the candidate (the order of the query buffer)
    std::vector<int64_t> toff(window ? nheads * psz : 0);
    if (window)
      for (int64_t h = 0, m = 0; h < nheads; ++h)
        for (int64_t dt = 0; dt < pt; ++dt)
          for (int64_t a = 0; a < ps; ++a)
            for (int64_t bb = 0; bb < ps; ++bb)
              for (int64_t ch = 0; ch < Ch; ++ch, ++m)
                toff[m] = ((dt * C + h * Ch + ch) * L + a * dilation) * L + bb * dilation;
    const TopkArgs<scalar_t, acc_t> args{window, L, step, toff.data(), ps, pt, dilation, nheads,
                                         psz, k, C, Ch, T, H, W, Q, nt, ws, qdata, kdata, cdata,
                                         fdata, centre, offs, out, dout, video, l2, exclude_self};
    const bool avx2 = use_avx2();
    at::parallel_for(0, B * Q, 1, [&](int64_t begin, int64_t end) {
#ifdef STNLS_CPU_AVX2
      if (avx2) return topk_queries_avx2(args, begin, end);
#endif
      topk_queries_base(args, begin, end);
    });
  });
  return {dists, ids};
}

// Position (t, y, x) of kpos[b, h, q, r] in acc_t.
template <typename acc_t, typename pos_t>
inline void load_pos(const pos_t* p, int64_t* t, acc_t* y, acc_t* x) {
  *t = static_cast<int64_t>(std::llround(static_cast<double>(p[0])));
  *y = static_cast<acc_t>(p[1]);
  *x = static_cast<acc_t>(p[2]);
}

at::Tensor search_dists_cpu(const at::Tensor& queries, const at::Tensor& keys,
                            const at::Tensor& coords, const at::Tensor& kpos, int64_t ps,
                            int64_t pt, int64_t dilation, bool l2,
                            const std::optional<at::Tensor>& given) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, dilation);
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  TORCH_CHECK(kpos.dim() == 5 && kpos.size(0) == B && kpos.size(4) == 3,
              "kpos: expected (B, nheads, Q, k, 3)");
  if (given.has_value()) return stnls::given_dists(*given, queries, kpos);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3), Ch = C / nh;
  auto dists = at::empty({B, nh, Q, K}, queries.options().dtype(stnls::acc_type(queries)));
  if (dists.numel() == 0) return dists;
  const auto crd = coords.contiguous();
  const auto pos = kpos.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_dists_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qdata = queries.data_ptr<scalar_t>();
    const scalar_t* kdata = keys.data_ptr<scalar_t>();
    const int64_t* cdata = crd.data_ptr<int64_t>();
    acc_t* out = dists.data_ptr<acc_t>();
    const int64_t video = T * H * W * C, psz = pt * ps * ps * Ch;
    AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_pos", [&] {
      using pos_t = scalar_t;
      const pos_t* pdata = pos.data_ptr<pos_t>();
      at::parallel_for(0, B * nh * Q, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> qbuf(psz);
        PatchLoc<acc_t> loc;
        for (int64_t n = begin; n < end; ++n) {
          const int64_t b = n / (nh * Q), h = (n / Q) % nh, q = n % Q;
          loc.set(cdata[q * 3], acc_t(cdata[q * 3 + 1]), acc_t(cdata[q * 3 + 2]), T, H, W, ps, pt,
                  dilation, false);
          load_query(qdata + b * video, loc, C, h * Ch, Ch, ps, pt, qbuf.data());
          for (int64_t r = 0; r < K; ++r) {
            int64_t t;
            acc_t y, x;
            load_pos(pdata + (n * K + r) * 3, &t, &y, &x);
            loc.set(t, y, x, T, H, W, ps, pt, dilation, false);
            out[n * K + r] =
                patch_distance(kdata + b * video, loc, qbuf.data(), C, h * Ch, Ch, ps, pt, l2);
          }
        }
      });
    });
  });
  return dists;
}

// PatchLoc::scatter of a patch's Ch-channel values (order dt, a, b, c) restricted to the rows
// whose first pixel index (row * W) lies in [lo, hi): the same terms, in the same order, for
// the pixels of those rows ([0, LLONG_MAX): the whole patch).
template <typename acc_t>
void scatter_rows(acc_t* v, const PatchLoc<acc_t>& loc, const acc_t* vals, int64_t C, int64_t c0,
                  int64_t Ch, int ps, int pt, int64_t lo, int64_t hi) {
  const acc_t wy0 = loc.sub_y ? acc_t(1) - loc.fy : acc_t(1);
  const acc_t wx0 = loc.sub_x ? acc_t(1) - loc.fx : acc_t(1);
  const acc_t fy = loc.fy, fx = loc.fx;
  int64_t m = 0;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a) {
      const int64_t r0 = loc.row0[dt][a], r1 = loc.row1[dt][a];
      const bool in0 = lo <= r0 && r0 < hi, in1 = loc.sub_y && lo <= r1 && r1 < hi;
      if (!in0 && !in1) {
        m += ps * Ch;
        continue;
      }
      for (int b = 0; b < ps; ++b)
        for (int64_t c = 0; c < Ch; ++c, ++m) {
          const acc_t g = vals[m];
          const int64_t ch = c0 + c;
          if (in0) {
            v[(r0 + loc.col0[b]) * C + ch] += g * wy0 * wx0;
            if (loc.sub_x) v[(r0 + loc.col1[b]) * C + ch] += g * wy0 * fx;
          }
          if (in1) {
            v[(r1 + loc.col0[b]) * C + ch] += g * fy * wx0;
            if (loc.sub_x) v[(r1 + loc.col1[b]) * C + ch] += g * fy * fx;
          }
        }
    }
}

// The first and last video rows (flat, frame * H + row) a patch reads.
template <typename acc_t>
std::pair<int64_t, int64_t> patch_rows(const PatchLoc<acc_t>& loc, int ps, int pt, int64_t W) {
  int64_t lo = LLONG_MAX, hi = -1;
  for (int dt = 0; dt < pt; ++dt)
    for (int a = 0; a < ps; ++a) {
      lo = std::min(lo, loc.row0[dt][a]);
      hi = std::max(hi, loc.row0[dt][a]);
      if (loc.sub_y) {
        lo = std::min(lo, loc.row1[dt][a]);
        hi = std::max(hi, loc.row1[dt][a]);
      }
    }
  return {lo / W, hi / W};
}

// The gradients with the bits of a serial loop over (batch, head, query, neighbour, patch
// element), for any number of threads. With more than a quarter as many (batch, head) pairs
// as threads, one task per pair (each writes only its own channels). Otherwise queries go
// in chunks and, for each chunk,
//   (A) one task per query computes the gradient of its query patch, the values to add into
//       each neighbour's patch, and the position gradients (which no other query touches);
//   (B) one task per band of video rows adds the chunk's values that land in its rows, walking
//       them in the serial order, so every pixel sums the same terms in the same order.
// The chunk's buffers hold about 256 K values, so that they stay in the cache from (A) to (B).
// On a 16-core host, 2304 queries with K = 10, ps = 7: 6.4 ms (integer positions) and 9.9 ms
// (sub-pixel) with 16 threads where one task per pair took 17.2 and 34.1 ms; on one thread
// the split costs about twice the work, so it starts at 4 threads per pair.
std::tuple<at::Tensor, at::Tensor, at::Tensor> search_dists_backward_cpu(
    const at::Tensor& grad, const at::Tensor& queries, const at::Tensor& keys,
    const at::Tensor& coords, const at::Tensor& kpos, int64_t ps, int64_t pt, int64_t dilation,
    bool l2, std::array<bool, 3> needs) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, dilation);
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t nh = kpos.size(1), Q = kpos.size(2), K = kpos.size(3), Ch = C / nh;
  const auto acc_type = stnls::acc_type(queries);
  // Gradients accumulate in the accumulation dtype, then are cast to the videos' dtype.
  auto gq = at::zeros(queries.sizes(), queries.options().dtype(acc_type));
  auto gk = at::zeros(keys.sizes(), keys.options().dtype(acc_type));
  auto gpos = at::zeros(kpos.sizes(), kpos.options().dtype(
                                          kpos.is_floating_point() ? kpos.scalar_type() : acc_type));
  const auto crd = coords.contiguous();
  const auto pos = kpos.contiguous();
  const auto g = grad.to(acc_type).contiguous();
  const bool sub = kpos.is_floating_point();
  const int threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_dists_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Loc = PatchLoc<acc_t>;
    const scalar_t* qdata = queries.data_ptr<scalar_t>();
    const scalar_t* kdata = keys.data_ptr<scalar_t>();
    const int64_t* cdata = crd.data_ptr<int64_t>();
    const acc_t* gd = g.data_ptr<acc_t>();
    acc_t* gqd = gq.data_ptr<acc_t>();
    acc_t* gkd = gk.data_ptr<acc_t>();
    const int64_t video = T * H * W * C, psz = pt * ps * ps * Ch;
    auto add = [](acc_t* p, acc_t v) { *p += v; };
    AT_DISPATCH_ALL_TYPES(pos.scalar_type(), "search_dists_backward_pos", [&] {
      using pos_t = scalar_t;
      const pos_t* pdata = pos.data_ptr<pos_t>();
      pos_t* gpd = sub ? gpos.data_ptr<pos_t>() : nullptr;
      auto key_loc = [&](Loc& kl, int64_t n) {
        int64_t t;
        acc_t y, x;
        load_pos(pdata + n * 3, &t, &y, &x);
        kl.set(t, y, x, T, H, W, ps, pt, dilation, sub && needs[2]);
      };
      auto query_loc = [&](Loc& ql, int64_t q) {
        ql.set(cdata[q * 3], acc_t(cdata[q * 3 + 1]), acc_t(cdata[q * 3 + 2]), T, H, W, ps, pt,
               dilation, false);
      };
      // Query q of pair bh: its patch's gradient into gqbuf, its position gradients into
      // gpos, and neighbour r's value for element m to key(r, kl, dt, a, b, c, m, value).
      auto query_terms = [&](int64_t bh, int64_t q, Loc& ql, Loc& kl, acc_t* qbuf, acc_t* gqbuf,
                             auto&& key) {
        const int64_t b = bh / nh, c0 = (bh % nh) * Ch;
        const auto* kv = kdata + b * video;
        query_loc(ql, q);
        load_query(qdata + b * video, ql, C, c0, Ch, ps, pt, qbuf);
        std::fill(gqbuf, gqbuf + psz, acc_t(0));
        for (int64_t r = 0; r < K; ++r) {
          const int64_t n = (bh * Q + q) * K + r;
          const acc_t gr = gd[n];
          key_loc(kl, n);
          acc_t gy = 0, gx = 0;
          int64_t m = 0;
          for (int dt = 0; dt < pt; ++dt)
            for (int a = 0; a < ps; ++a)
              for (int bb = 0; bb < ps; ++bb)
                for (int64_t c = 0; c < Ch; ++c, ++m) {
                  const acc_t v = kl.value(kv, C, dt, a, bb, c0 + c);
                  // d dist / d query value and d dist / d key value
                  const acc_t dq = l2 ? acc_t(2) * (qbuf[m] - v) : v;
                  const acc_t dk = l2 ? -dq : qbuf[m];
                  gqbuf[m] += gr * dq;
                  if (needs[1]) key(r, kl, dt, a, bb, c, m, gr * dk);
                  if (needs[2] && sub) {
                    acc_t vy, vx;
                    kl.grad_pos(kv, C, dt, a, bb, c0 + c, &vy, &vx);
                    gy += gr * dk * vy;
                    gx += gr * dk * vx;
                  }
                }
          if (needs[2] && sub) {
            gpd[n * 3 + 1] = static_cast<pos_t>(gy);
            gpd[n * 3 + 2] = static_cast<pos_t>(gx);
          }
        }
      };
      if (B * nh * 4 > threads) {  // one task per (batch, head)
        at::parallel_for(0, B * nh, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> qbuf(psz), gqbuf(psz);
          Loc ql, kl;
          for (int64_t bh = begin; bh < end; ++bh) {
            const int64_t b = bh / nh, c0 = (bh % nh) * Ch;
            for (int64_t q = 0; q < Q; ++q) {
              query_terms(bh, q, ql, kl, qbuf.data(), gqbuf.data(),
                          [&](int64_t, const Loc& l, int dt, int a, int bb, int64_t c, int64_t,
                              acc_t v) { l.scatter(gkd + b * video, C, dt, a, bb, c0 + c, v, add); });
              if (needs[0])  // every row: the whole query patch
                scatter_rows(gqd + b * video, ql, gqbuf.data(), C, c0, Ch, ps, pt, 0, LLONG_MAX);
            }
          }
        });
        return;
      }
      const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(Q, (int64_t(1) << 18) / ((K + 1) * psz)));
      std::vector<acc_t> qvals(needs[0] ? chunk * psz : 0), kvals(needs[1] ? chunk * K * psz : 0);
      std::vector<int64_t> qspan(chunk * 2), kspan(chunk * K * 2);  // first and last rows read
      for (int64_t bh = 0; bh < B * nh; ++bh) {
        const int64_t b = bh / nh, c0 = (bh % nh) * Ch;
        for (int64_t q0 = 0; q0 < Q; q0 += chunk) {
          const int64_t nq = std::min(chunk, Q - q0);
          // (A) per query: values, position gradients, rows read
          at::parallel_for(0, nq, 1, [&](int64_t begin, int64_t end) {
            std::vector<acc_t> qbuf(psz), scratch(needs[0] ? 0 : psz);
            Loc ql, kl;
            for (int64_t i = begin; i < end; ++i) {
              acc_t* gqbuf = needs[0] ? qvals.data() + i * psz : scratch.data();
              query_terms(bh, q0 + i, ql, kl, qbuf.data(), gqbuf,
                          [&](int64_t r, const Loc& l, int, int, int, int64_t, int64_t m, acc_t v) {
                            if (m == 0) {
                              const auto kr = patch_rows(l, ps, pt, W);
                              kspan[(i * K + r) * 2] = kr.first;
                              kspan[(i * K + r) * 2 + 1] = kr.second;
                            }
                            kvals[(i * K + r) * psz + m] = v;
                          });
              const auto qr = patch_rows(ql, ps, pt, W);
              qspan[i * 2] = qr.first;
              qspan[i * 2 + 1] = qr.second;
            }
          });
          if (!needs[0] && !needs[1]) continue;
          // (B) per band of rows: the chunk's additions into those rows, in the serial order
          int64_t lo = LLONG_MAX, hi = -1;
          for (int64_t i = 0; i < nq; ++i) {
            if (needs[0]) {
              lo = std::min(lo, qspan[i * 2]);
              hi = std::max(hi, qspan[i * 2 + 1]);
            }
            if (needs[1])
              for (int64_t r = 0; r < K; ++r) {
                lo = std::min(lo, kspan[(i * K + r) * 2]);
                hi = std::max(hi, kspan[(i * K + r) * 2 + 1]);
              }
          }
          if (hi < lo) continue;  // nothing to add
          // bands of about equal work: each patch counts on every row of its span
          const int64_t rows = hi - lo + 1;
          std::vector<int64_t> work(rows + 1, 0);
          auto count = [&](const int64_t* span) {
            work[span[0] - lo] += 1;
            work[span[1] - lo + 1] -= 1;
          };
          for (int64_t i = 0; i < nq; ++i) {
            if (needs[0]) count(&qspan[i * 2]);
            if (needs[1])
              for (int64_t r = 0; r < K; ++r) count(&kspan[(i * K + r) * 2]);
          }
          for (int64_t r = 1; r <= rows; ++r) work[r] += work[r - 1];  // per row
          int64_t total = 0;
          for (int64_t r = 0; r < rows; ++r) total += work[r];
          const int64_t nbands = std::min<int64_t>(rows, 4 * threads);
          std::vector<int64_t> edge(nbands + 1, rows);  // band i: rows edge[i] .. edge[i+1]-1
          edge[0] = 0;
          for (int64_t r = 0, acc = 0, band = 1; r < rows && band < nbands; ++r) {
            acc += work[r];
            while (band < nbands && acc * nbands >= total * band) edge[band++] = r + 1;
          }
          std::atomic<int64_t> next{0};  // bands are taken in turn: their work differs
          at::parallel_for(0, std::min<int64_t>(threads, nbands), 1, [&](int64_t, int64_t) {
            Loc loc;
            for (int64_t band; (band = next.fetch_add(1)) < nbands;) {
              const int64_t blo = lo + edge[band], bhi = lo + edge[band + 1];
              if (blo >= bhi) continue;
              for (int64_t i = 0; i < nq; ++i) {
                if (needs[0] && qspan[i * 2 + 1] >= blo && qspan[i * 2] < bhi) {
                  query_loc(loc, q0 + i);
                  scatter_rows(gqd + b * video, loc, qvals.data() + i * psz, C, c0, Ch, ps, pt,
                               blo * W, bhi * W);
                }
                if (!needs[1]) continue;
                for (int64_t r = 0; r < K; ++r) {
                  const int64_t s = (i * K + r) * 2;
                  if (kspan[s + 1] < blo || kspan[s] >= bhi) continue;
                  key_loc(loc, (bh * Q + q0 + i) * K + r);
                  scatter_rows(gkd + b * video, loc, kvals.data() + (i * K + r) * psz, C, c0, Ch,
                               ps, pt, blo * W, bhi * W);
                }
              }
            }
          });
        }
      }
    });
  });
  return {gq.to(queries.scalar_type()), gk.to(keys.scalar_type()), gpos};
}

// Whole-pixel search grids (integer centres and stride1) with the queries on a regular grid:
// the algorithm of the CUDA kernel (csrc/cuda/search_cuda.cu, topk_box_kernel). For a tile of
// queries and one offset (dy, dx) between query and candidate, every query's patch distance
// is a box sum of one difference image, each video mirrored on its own absolute coordinates;
// so a candidate costs O(C) instead of O(ps^2 C). Offsets are visited in ascending (dy, dx)
// order, so each query sees its candidates in ascending id order (ties keep the first).
std::tuple<at::Tensor, at::Tensor> search_topk_box_cpu(const at::Tensor& queries, const at::Tensor& keys,
                               const at::Tensor& coords, const at::Tensor& centres,
                               const at::Tensor& frames, const at::Tensor& offsets,
                               at::IntArrayRef grid, int64_t stride0, int64_t ps, int64_t pt,
                               int64_t dilation, int64_t nheads, int64_t k, bool l2,
                               bool exclude_self) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(grid.size() == 7, "grid: expected (t0, y0, x0, T_r, nH, nW, stride1)");
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = coords.size(0), nt = frames.size(1), ws = offsets.size(0);
  const int64_t gt0 = grid[0], gy0 = grid[1], gx0 = grid[2], nTr = grid[3], nH = grid[4],
                nW = grid[5], s1 = grid[6], s0 = stride0;
  TORCH_CHECK(nTr * nH * nW == Q, "grid: does not match the number of queries");
  TORCH_CHECK(s1 >= 1 && C % nheads == 0, "grid: stride1 must be a positive integer");
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  constexpr int64_t TY = 32, TX = 32;
  const int64_t tiles_y = (nH + TY - 1) / TY, tiles_x = (nW + TX - 1) / TX;
  const int64_t r = ps / 2, half = ws / 2, Ch = C / nheads;
  const int64_t DH = (TY - 1) * s0 + dilation * (ps - 1) + 1;
  const int64_t DW = (TX - 1) * s0 + dilation * (ps - 1) + 1;
  const auto frm = frames.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "search_topk_box_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cen = centres.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const scalar_t* qdata = queries.data_ptr<scalar_t>();
    const scalar_t* kdata = keys.data_ptr<scalar_t>();
    const acc_t* centre = cen.data_ptr<acc_t>();
    const int64_t* fdata = frm.data_ptr<int64_t>();
    int64_t* out = ids.data_ptr<int64_t>();
    acc_t* dout = dists.data_ptr<acc_t>();
    const int64_t video = T * H * W * C;
    at::parallel_for(0, B * nheads * nTr * tiles_y * tiles_x, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> D(DH * DW), R(DH * TX), bd(TY * TX * k);
      std::vector<int64_t> bi(TY * TX * k), ryq(DH), rxq(DW), ryk(DH), rxk(DW);
      std::vector<int> cnt(TY * TX);
      std::vector<int64_t> gy(TY * TX), gx(TY * TX);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t tile_j = task % tiles_x, tile_i = (task / tiles_x) % tiles_y;
        const int64_t tr = (task / (tiles_x * tiles_y)) % nTr;
        const int64_t bh = task / (tiles_x * tiles_y * nTr), b = bh / nheads, h = bh % nheads;
        const int64_t t = gt0 + tr, c0 = h * Ch, q_first = tr * nH * nW;
        const int64_t py0 = gy0 + tile_i * TY * s0, px0 = gx0 + tile_j * TX * s0;
        const int64_t ny = std::min(TY, nH - tile_i * TY), nx = std::min(TX, nW - tile_j * TX);
        // the part of the difference image this tile's queries use (thin regions: a few rows)
        const int64_t dh = (ny - 1) * s0 + dilation * (ps - 1) + 1;
        const int64_t dw = (nx - 1) * s0 + dilation * (ps - 1) + 1;
        const scalar_t* qv = qdata + b * video;
        const scalar_t* kv = kdata + b * video;
        for (int64_t u = 0; u < DH; ++u) ryq[u] = stnls::reflect(py0 - dilation * r + u, H);
        for (int64_t v = 0; v < DW; ++v) rxq[v] = stnls::reflect(px0 - dilation * r + v, W);
        std::fill(cnt.begin(), cnt.end(), 0);
        for (int64_t f = 0; f < nt; ++f) {
          const int64_t s = fdata[q_first * nt + f];
          int64_t ylo = INT64_MAX, yhi = INT64_MIN, xlo = INT64_MAX, xhi = INT64_MIN;
          for (int64_t ty = 0; ty < ny; ++ty)
            for (int64_t tx = 0; tx < nx; ++tx) {
              const int64_t q = (tr * nH + tile_i * TY + ty) * nW + tile_j * TX + tx;
              const acc_t* c = centre + ((b * Q + q) * nt + f) * 2;
              const int64_t n = ty * TX + tx;
              gy[n] = std::llround(static_cast<double>(c[0])) - half * s1 - (py0 + ty * s0);
              gx[n] = std::llround(static_cast<double>(c[1])) - half * s1 - (px0 + tx * s0);
              ylo = std::min(ylo, gy[n]);
              yhi = std::max(yhi, gy[n] + (ws - 1) * s1);
              xlo = std::min(xlo, gx[n]);
              xhi = std::max(xhi, gx[n] + (ws - 1) * s1);
            }
          for (int64_t dy = ylo; dy <= yhi; ++dy) {
            for (int64_t u = 0; u < dh; ++u)
              ryk[u] = stnls::reflect(py0 - dilation * r + u + dy, H);
            for (int64_t dx = xlo; dx <= xhi; ++dx) {
              for (int64_t v = 0; v < dw; ++v)
                rxk[v] = stnls::reflect(px0 - dilation * r + v + dx, W);
              // 1. the difference image over the tile and its halo
              for (int64_t dt = 0; dt < pt; ++dt) {
                const int64_t fq = stnls::reflect(t + dt, T), fk = stnls::reflect(s + dt, T);
                for (int64_t u = 0; u < dh; ++u) {
                  const scalar_t* xr = qv + (fq * H + ryq[u]) * W * C + c0;
                  const scalar_t* yr = kv + (fk * H + ryk[u]) * W * C + c0;
                  acc_t* Du = D.data() + u * DW;
                  if (Ch == 3 && l2) {  // the common case, the same sums as distance_run
                    for (int64_t v = 0; v < dw; ++v) {
                      const scalar_t* x = xr + rxq[v] * C;
                      const scalar_t* y = yr + rxk[v] * C;
                      const acc_t e0 = static_cast<acc_t>(x[0]) - static_cast<acc_t>(y[0]);
                      const acc_t e1 = static_cast<acc_t>(x[1]) - static_cast<acc_t>(y[1]);
                      const acc_t e2 = static_cast<acc_t>(x[2]) - static_cast<acc_t>(y[2]);
                      const acc_t run = ((acc_t(0) + e0 * e0) + e1 * e1) + e2 * e2;
                      Du[v] = dt == 0 ? acc_t(0) + run : Du[v] + run;
                    }
                  } else {
                    for (int64_t v = 0; v < dw; ++v) {
                      const acc_t run = distance_run<acc_t>(xr + rxq[v] * C, yr + rxk[v] * C, Ch, l2);
                      Du[v] = dt == 0 ? acc_t(0) + run : Du[v] + run;
                    }
                  }
                }
              }
              // 2. sums along rows, 3. along columns, then each query's top-k
              for (int64_t u = 0; u < dh; ++u)
                for (int64_t jx = 0; jx < nx; ++jx) {
                  const acc_t* row = D.data() + u * DW + jx * s0;
                  acc_t acc = 0;
                  for (int64_t bx = 0; bx < ps; ++bx) acc += row[dilation * bx];
                  R[u * TX + jx] = acc;
                }
              for (int64_t ty = 0; ty < ny; ++ty)
                for (int64_t tx = 0; tx < nx; ++tx) {
                  const int64_t n = ty * TX + tx;
                  const int64_t ii = dy - gy[n], jj = dx - gx[n];
                  if (ii < 0 || jj < 0 || ii > (ws - 1) * s1 || jj > (ws - 1) * s1 || ii % s1 ||
                      jj % s1 || (exclude_self && s == t && dy == 0 && dx == 0))
                    continue;
                  acc_t d = 0;
                  for (int64_t a = 0; a < ps; ++a) d += R[(ty * s0 + dilation * a) * TX + tx];
                  stnls::topk_insert(bd.data() + n * k, bi.data() + n * k, cnt[n], int(k), d,
                                     (f * ws + ii / s1) * ws + jj / s1, l2);
                }
            }
          }
        }
        for (int64_t ty = 0; ty < ny; ++ty)
          for (int64_t tx = 0; tx < nx; ++tx) {
            const int64_t n = ty * TX + tx;
            const int64_t q = (tr * nH + tile_i * TY + ty) * nW + tile_j * TX + tx;
            stnls::topk_write(bd.data() + n * k, bi.data() + n * k, cnt[n], int(k), l2,
                              dout + (bh * Q + q) * k, out + (bh * Q + q) * k);
          }
      }
    });
  });
  return {dists, ids};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("search_topk", &search_topk_cpu);
  m.impl("search_topk_box", &search_topk_box_cpu);
  m.impl("search_dists", &search_dists_cpu);
  m.impl("search_dists_backward", &search_dists_backward_cpu);
}
