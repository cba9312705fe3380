// refine_topk on the CPU (OpenMP through at::parallel_for over (batch, head, query)): the
// candidates of a query's K_in windows are streamed, a position already held by an earlier
// window is skipped, each patch distance is computed once, and the k best are kept in a
// small list sorted by (distance, t, y, x) (csrc/include/refine.h).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/patch_loc.h"
#include "../../include/refine.h"
#include "../../include/topk.h"
#include "patch.h"

namespace stnls::search_cpu {

std::tuple<at::Tensor, at::Tensor> refine_topk_cpu(const at::Tensor& queries, const at::Tensor& keys,
                                                   const at::Tensor& coords, const at::Tensor& centres,
                                                   int64_t wr, int64_t ps, int64_t pt, int64_t dilation,
                                                   int64_t k, bool l2, bool exclude_self) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, dilation);
  TORCH_CHECK(keys.sizes() == queries.sizes(), "keys: expected the shape of queries");
  TORCH_CHECK(keys.scalar_type() == queries.scalar_type(), "keys: expected the dtype of queries");
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  TORCH_CHECK(coords.scalar_type() == at::kLong && coords.dim() == 2 && coords.size(1) == 3,
              "coords: expected (Q, 3) int64");
  const int64_t Q = coords.size(0);
  TORCH_CHECK(centres.dim() == 5 && centres.size(0) == B && centres.size(2) == Q &&
                  centres.size(4) == 3,
              "centres: expected (B, nheads, Q, K_in, 3), got ", stnls::shape_str(centres.sizes()));
  TORCH_CHECK(centres.scalar_type() == stnls::acc_type(queries),
              "centres: expected the accumulation dtype ", stnls::acc_type(queries), ", got ",
              centres.scalar_type());
  const int64_t nheads = centres.size(1), K_in = centres.size(3);
  TORCH_CHECK(nheads >= 1 && C % nheads == 0, "centres: its nheads (axis 1) must divide C");
  TORCH_CHECK(wr >= 1 && wr % 2 == 1, "wr: expected an odd window side, got ", wr);
  TORCH_CHECK(k >= 1 && k <= K_in * wr * wr, "k: expected 1 <= k <= K_in*wr*wr, got ", k);
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options().dtype(stnls::acc_type(queries)));
  if (ids.numel() == 0) return {dists, ids};
  const int64_t Ch = C / nheads;
  const auto crd = coords.contiguous();
  const auto cen = centres.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "refine_topk_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qdata = queries.data_ptr<scalar_t>();
    const scalar_t* kdata = keys.data_ptr<scalar_t>();
    const int64_t* cdata = crd.data_ptr<int64_t>();
    const acc_t* cpos = cen.data_ptr<acc_t>();
    int64_t* out = ids.data_ptr<int64_t>();
    acc_t* dout = dists.data_ptr<acc_t>();
    const int64_t video = T * H * W * C, psz = pt * ps * ps * Ch;
    const int r = static_cast<int>(wr / 2);
    at::parallel_for(0, B * nheads * Q, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> qbuf(psz), bd(k), bp(3 * k);
      std::vector<int64_t> bi(k);
      PatchLoc<acc_t> loc;
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / (nheads * Q), h = (n / Q) % nheads, q = n % Q;
        const int64_t t = cdata[q * 3], qy = cdata[q * 3 + 1], qx = cdata[q * 3 + 2];
        const scalar_t* kv = kdata + b * video;
        loc.set(t, acc_t(qy), acc_t(qx), T, H, W, ps, pt, dilation, false);
        load_query(qdata + b * video, loc, C, h * Ch, Ch, ps, pt, qbuf.data());
        const acc_t* c = cpos + n * K_in * 3;
        int cnt = 0;
        for (int64_t j = 0; j < K_in; ++j) {
          const acc_t ct = c[j * 3], cy = c[j * 3 + 1], cx = c[j * 3 + 2];
          const int64_t s = static_cast<int64_t>(std::llround(static_cast<double>(ct)));
          for (int64_t i = 0; i < wr; ++i)
            for (int64_t jj = 0; jj < wr; ++jj) {
              const acc_t p[3] = {ct, cy + acc_t(i - r), cx + acc_t(jj - r)};
              if (exclude_self && s == t && std::abs(p[1] - acc_t(qy)) < acc_t(1e-4) &&
                  std::abs(p[2] - acc_t(qx)) < acc_t(1e-4))
                continue;
              if (stnls::seen_before(c, j, r, p[0], p[1], p[2])) continue;
              loc.set(s, p[1], p[2], T, H, W, ps, pt, dilation, false);
              const acc_t d = patch_distance(kv, loc, qbuf.data(), C, h * Ch, Ch, ps, pt, l2);
              stnls::refine_insert(bd.data(), bp.data(), bi.data(), cnt, int(k), d, p,
                                   (j * wr + i) * wr + jj, l2);
            }
        }
        stnls::topk_write(bd.data(), bi.data(), cnt, int(k), l2, dout + n * k, out + n * k);
      }
    });
  });
  return {dists, ids};
}

}  // namespace stnls::search_cpu

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("refine_topk", &stnls::search_cpu::refine_topk_cpu);
}
