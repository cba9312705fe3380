// search_dists and search_dists_backward on the CPU (at::parallel_for), patches read through
// PatchLoc; the backward gives the bits of a serial loop for any number of threads.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/patch_loc.h"
#include "patch.h"

namespace stnls::search_cpu {
namespace {

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
    // positions: int32, int64, float or double (what search and refine pass)
    stnls::dispatch_pos(pos.scalar_type(), [&](auto pos_tag) {
      using scalar_t = decltype(pos_tag);
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
    // positions: int32, int64, float or double (what search and refine pass)
    stnls::dispatch_pos(pos.scalar_type(), [&](auto pos_tag) {
      using scalar_t = decltype(pos_tag);
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

}  // namespace
}  // namespace stnls::search_cpu

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("search_dists", &stnls::search_cpu::search_dists_cpu);
  m.impl("search_dists_backward", &stnls::search_cpu::search_dists_backward_cpu);
}
