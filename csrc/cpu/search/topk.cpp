// search_topk on the CPU (OpenMP through at::parallel_for over queries): every candidate of a
// query is streamed, its patch distance computed once, and the k best kept in a small sorted
// list; nothing is materialised beyond the output.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/mirror.h"
#include "../../include/positions.h"
#include "../../include/topk.h"
#include "patch.h"

namespace stnls::search_cpu {
namespace {

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

#ifdef STNLS_CPU_AVX2
template <typename scalar_t, typename acc_t>
__attribute__((target("avx2"))) void topk_queries_avx2(const TopkArgs<scalar_t, acc_t>& args,
                                                       int64_t begin, int64_t end) {
  topk_queries(args, begin, end);
}
#endif


}  // namespace

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

// search_centres on the CPU: one task per run of queries (stnls::chain_centres).
at::Tensor search_centres_cpu(const at::Tensor& coords, const at::Tensor& frames,
                              const at::Tensor& fflow, const at::Tensor& bflow, int64_t T,
                              int64_t H, int64_t W, bool round, double r) {
  stnls::check_centres_args(coords, frames, fflow, bflow, T, H, W);
  const int64_t B = fflow.size(0), Q = coords.size(0), nt = frames.size(1);
  auto out = at::empty({B, Q, nt, 2}, fflow.options());
  if (out.numel() == 0) return out;
  const auto crd = coords.contiguous(), frm = frames.contiguous();
  const auto ff = fflow.contiguous(), bf = bflow.contiguous();
  AT_DISPATCH_FLOATING_TYPES(ff.scalar_type(), "search_centres_cpu", [&] {
    const int64_t* cp = crd.data_ptr<int64_t>();
    const int64_t* fp = frm.data_ptr<int64_t>();
    const scalar_t* fw = ff.data_ptr<scalar_t>();
    const scalar_t* bw = bf.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const auto rr = static_cast<scalar_t>(r);
    const int64_t video = T * H * W * 2;
    at::parallel_for(0, B * Q, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t q = e % Q, b = e / Q;
        stnls::chain_centres(cp + q * 3, fp + q * nt, nt, fw + b * video, bw + b * video, T, H, W,
                             round, rr, op + e * nt * 2);
      }
    });
  });
  return out;
}

// search_positions(_int) on the CPU: one pass over the ids (stnls::float_position, or
// stnls::int_position for whole-pixel int32 positions).
at::Tensor positions_cpu(const at::Tensor& ids, const at::Tensor& centres, const at::Tensor& frames,
                         int64_t ws, double stride1, bool whole) {
  stnls::check_positions_args(ids, centres, frames, ws, stride1);
  const int64_t B = ids.size(0), nh = ids.size(1), Q = ids.size(2), K = ids.size(3);
  const int64_t nt = frames.size(1);
  auto kpos = at::empty({B, nh, Q, K, 3}, whole ? ids.options().dtype(at::kInt) : centres.options());
  if (kpos.numel() == 0) return kpos;
  const auto id = ids.contiguous();
  const auto frm = frames.contiguous();
  const auto cen = centres.contiguous();
  AT_DISPATCH_FLOATING_TYPES(cen.scalar_type(), "search_positions_cpu", [&] {
    const int64_t* ip = id.data_ptr<int64_t>();
    const int64_t* fp = frm.data_ptr<int64_t>();
    const scalar_t* cp = cen.data_ptr<scalar_t>();
    int32_t* oi = whole ? kpos.data_ptr<int32_t>() : nullptr;
    scalar_t* of = whole ? nullptr : kpos.data_ptr<scalar_t>();
    at::parallel_for(0, B * nh * Q, 256, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t q = n % Q, b = n / (Q * nh);
        const scalar_t* c = cp + (b * Q + q) * nt * 2;
        for (int64_t r = 0; r < K; ++r) {
          const int64_t e = n * K + r;
          if (whole)
            stnls::int_position(ip[e], c, fp + q * nt, ws, static_cast<int64_t>(stride1), oi + e * 3);
          else
            stnls::float_position(ip[e], c, fp + q * nt, ws, static_cast<scalar_t>(stride1),
                                  of + e * 3);
        }
      }
    });
  });
  return kpos;
}

at::Tensor search_positions_cpu(const at::Tensor& ids, const at::Tensor& centres,
                                const at::Tensor& frames, int64_t ws, double stride1) {
  return positions_cpu(ids, centres, frames, ws, stride1, false);
}

at::Tensor search_positions_int_cpu(const at::Tensor& ids, const at::Tensor& centres,
                                    const at::Tensor& frames, int64_t ws, int64_t stride1) {
  return positions_cpu(ids, centres, frames, ws, static_cast<double>(stride1), true);
}

}  // namespace stnls::search_cpu

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("search_topk", &stnls::search_cpu::search_topk_cpu);
  m.impl("search_positions_int", &stnls::search_cpu::search_positions_int_cpu);
  m.impl("search_positions", &stnls::search_cpu::search_positions_cpu);
  m.impl("search_centres", &stnls::search_cpu::search_centres_cpu);
}
