// search_topk_box on the CPU (at::parallel_for over tiles of queries): whole-pixel search
// grids with the queries on a regular grid, by box sums.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/mirror.h"
#include "../../include/topk.h"
#include "box.h"

namespace stnls::search_cpu {
namespace {

// Whole-pixel search grids (integer centres and stride1) with the queries on a regular grid:
// the algorithm of the CUDA kernel (csrc/cuda/search/box.cu, topk_box_kernel). For a tile of
// queries and one offset (dy, dx) between query and candidate, every query's patch distance
// is a box sum of one difference image, each video mirrored on its own absolute coordinates;
// so a candidate costs O(C) instead of O(ps^2 C). Offsets are visited in ascending (dy, dx)
// order, so each query sees its candidates in ascending id order (ties keep the first).
// With strided queries (stride0 > dilation, or stride0 > ps) some rows and columns of the
// tile lie in no query's patch: the difference image and its row sums skip them, so the work
// is that of the queries' own patch pixels, never more than every pixel's.
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
      std::vector<int64_t> urow, vcol;  // the rows and columns of D some query's patch covers
      std::vector<char> used(std::max(DH, DW));
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
        for (auto [n, len, list] : {std::tuple{ny, dh, &urow}, std::tuple{nx, dw, &vcol}}) {
          std::fill(used.begin(), used.begin() + len, 0);
          for (int64_t i = 0; i < n; ++i)
            for (int64_t a = 0; a < ps; ++a) used[i * s0 + dilation * a] = 1;
          list->clear();
          for (int64_t u = 0; u < len; ++u)
            if (used[u]) list->push_back(u);
        }
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
            for (const int64_t u : urow) ryk[u] = stnls::reflect(py0 - dilation * r + u + dy, H);
            for (int64_t dx = xlo; dx <= xhi; ++dx) {
              for (const int64_t v : vcol) rxk[v] = stnls::reflect(px0 - dilation * r + v + dx, W);
              // 1. the difference image over the tile and its halo
              difference_image(qv, kv, t, s, T, H, W, C, c0, Ch, pt, l2, urow, vcol, ryq.data(),
                               rxq.data(), ryk.data(), rxk.data(), DW, D.data());
              // 2. sums along rows, 3. along columns, then each query's top-k
              for (const int64_t u : urow)
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
}  // namespace stnls::search_cpu

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("search_topk_box", &stnls::search_cpu::search_topk_box_cpu);
}
