// search_topk_subpix on the CPU (at::parallel_for over tiles of queries): sub-pixel search
// windows (a flow) on a dense query grid, through whole-pixel box sums and the keys' pair
// sums; the algorithm of the CUDA kernel (csrc/cuda/search/subpix.cu, where the identity is
// written out).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../include/checks.h"
#include "../../include/dispatch.h"
#include "../../include/mirror.h"
#include "../../include/patch_loc.h"
#include "../../include/topk.h"
#include "box.h"
#include "patch.h"

namespace stnls::search_cpu {
namespace {

// The distances of the n candidates of one window row from the whole-pixel distances m (this
// row, and the next G further) and the pair sums along (0, 1), (1, 0), (1, 1), (1, -1) at
// their top-left corners (sh: this key row, and the next WE further), bilinear weights w
// (vectorised: each candidate on its own)
template <typename acc_t>
void combine_row(const acc_t* m, const acc_t* sh, const acc_t* sv, const acc_t* sd,
                 const acc_t* sa, int64_t G, int64_t WE, int64_t n, acc_t w00, acc_t w01,
                 acc_t w10, acc_t w11, acc_t* out) {
  const acc_t a0 = w00 * w01, a1 = w10 * w11, a2 = w00 * w10, a3 = w01 * w11, a4 = w00 * w11,
              a5 = w01 * w10;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t d = w00 * m[j] + w01 * m[j + 1] + w10 * m[G + j] + w11 * m[G + j + 1] -
                    (a0 * sh[j] + a1 * sh[WE + j] + a2 * sv[j] + a3 * sv[j + 1] + a4 * sd[j] +
                     a5 * sa[j + 1]);
    out[j] = d > acc_t(0) ? d : acc_t(0);  // rounding, where the patches are equal
  }
}

// The ps x ps box sums of the difference image D (rows of DW) at the tile's ny x nx queries:
// out[ty * TX + tx] sums D over rows ty .. ty+ps-1 and columns tx .. tx+ps-1, in the order
// of box.cpp (each row's ps columns, then the ps rows); R holds the row sums.
template <typename acc_t>
void box_sums(const acc_t* D, acc_t* R, acc_t* out, int64_t DW, int64_t TX, int64_t ny,
              int64_t nx, int64_t ps) {
  for (int64_t u = 0; u < ny + ps - 1; ++u) {
    const acc_t* row = D + u * DW;
    acc_t* Ru = R + u * TX;
#pragma omp simd
    for (int64_t jx = 0; jx < nx; ++jx) {
      acc_t acc = 0;
      for (int64_t bx = 0; bx < ps; ++bx) acc += row[jx + bx];
      Ru[jx] = acc;
    }
  }
  for (int64_t ty = 0; ty < ny; ++ty) {
    acc_t* o = out + ty * TX;
#pragma omp simd
    for (int64_t tx = 0; tx < nx; ++tx) {
      acc_t acc = 0;
      for (int64_t a = 0; a < ps; ++a) acc += R[(ty + a) * TX + tx];
      o[tx] = acc;
    }
  }
}

// The arguments of the tile loop (subpix_tiles)
template <typename scalar_t>
struct SubpixArgs {
  const scalar_t *qdata, *kdata, *centre, *pdata;
  const int64_t* fdata;
  int64_t* out;
  scalar_t* dout;
  int64_t T, H, W, C, Q, nt, ws, ps, pt, nheads, k, margin, gt0, gy0, gx0, nTr, nH, nW;
  bool exclude_self;
};

// Tiles begin .. end of 32 x 32 queries (task = ((bh * nTr + tr) * tiles_y + i) * tiles_x + j).
// Compiled twice, like the window path (topk.cpp): for the baseline instruction set and AVX2.
template <typename scalar_t>
void subpix_tiles(const SubpixArgs<scalar_t>& A, int64_t begin, int64_t end) {
  using acc_t = scalar_t;
  constexpr int64_t TY = 32, TX = 32;
  const int64_t T = A.T, H = A.H, W = A.W, C = A.C, Q = A.Q, nt = A.nt, ws = A.ws, ps = A.ps,
                pt = A.pt, nheads = A.nheads, k = A.k, margin = A.margin, gt0 = A.gt0,
                gy0 = A.gy0, gx0 = A.gx0, nTr = A.nTr, nH = A.nH, nW = A.nW;
  const bool exclude_self = A.exclude_self;
  const scalar_t *qdata = A.qdata, *kdata = A.kdata;
  const acc_t *centre = A.centre, *pdata = A.pdata;
  const int64_t* fdata = A.fdata;
  int64_t* out = A.out;
  acc_t* dout = A.dout;
  const int64_t tiles_y = (nH + TY - 1) / TY, tiles_x = (nW + TX - 1) / TX;
  const int64_t r = ps / 2, half = ws / 2, Ch = C / nheads, G = ws + 1, G2 = G * G;
  const int64_t DH = TY + ps - 1, DW = TX + ps - 1;
  const int64_t HE = H + 2 * margin, WE = W + 2 * margin, plane = HE * WE;
  const int64_t video = T * H * W * C;
  const acc_t off0 = static_cast<acc_t>(-half);
    std::vector<acc_t> D(DH * DW), R(DH * TX), col(TY * TX), M(TY * TX * G2), bd(TY * TX * k);
    std::vector<int64_t> bi(TY * TX * k), ryq(DH), rxq(DW), ryk(DH), rxk(DW);
    std::vector<int> cnt(TY * TX);
    std::vector<int64_t> gy(TY * TX), gx(TY * TX), urow, vcol;
    std::vector<acc_t> query(pt * ps * ps * Ch), row_d(ws);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile_j = task % tiles_x, tile_i = (task / tiles_x) % tiles_y;
      const int64_t tr = (task / (tiles_x * tiles_y)) % nTr;
      const int64_t bh = task / (tiles_x * tiles_y * nTr), b = bh / nheads, h = bh % nheads;
      const int64_t t = gt0 + tr, c0 = h * Ch, q_first = tr * nH * nW;
      const int64_t py0 = gy0 + tile_i * TY, px0 = gx0 + tile_j * TX;
      const int64_t ny = std::min(TY, nH - tile_i * TY), nx = std::min(TX, nW - tile_j * TX);
      urow.resize(ny + ps - 1);
      vcol.resize(nx + ps - 1);
      for (size_t u = 0; u < urow.size(); ++u) urow[u] = int64_t(u);
      for (size_t v = 0; v < vcol.size(); ++v) vcol[v] = int64_t(v);
      const scalar_t* qv = qdata + b * video;
      const scalar_t* kv = kdata + b * video;
      for (int64_t u = 0; u < DH; ++u) ryq[u] = stnls::reflect(py0 - r + u, H);
      for (int64_t v = 0; v < DW; ++v) rxq[v] = stnls::reflect(px0 - r + v, W);
      std::fill(cnt.begin(), cnt.end(), 0);
      for (int64_t f = 0; f < nt; ++f) {
        const int64_t s = fdata[q_first * nt + f];
        int64_t ylo = INT64_MAX, yhi = INT64_MIN, xlo = INT64_MAX, xhi = INT64_MIN;
        for (int64_t ty = 0; ty < ny; ++ty)
          for (int64_t tx = 0; tx < nx; ++tx) {
            const int64_t q = (tr * nH + tile_i * TY + ty) * nW + tile_j * TX + tx;
            const acc_t* c = centre + ((b * Q + q) * nt + f) * 2;
            const int64_t n = ty * TX + tx;
            gy[n] = static_cast<int64_t>(std::floor(c[0] + off0)) - (py0 + ty);
            gx[n] = static_cast<int64_t>(std::floor(c[1] + off0)) - (px0 + tx);
            ylo = std::min(ylo, gy[n]);
            yhi = std::max(yhi, gy[n] + ws);
            xlo = std::min(xlo, gx[n]);
            xhi = std::max(xhi, gx[n] + ws);
          }
        // 1. the whole-pixel distance of every offset some window (and its next row and
        // column) holds, by box sums over the tile
        for (int64_t dy = ylo; dy <= yhi; ++dy) {
          for (const int64_t u : urow) ryk[u] = stnls::reflect(py0 - r + u + dy, H);
          for (int64_t dx = xlo; dx <= xhi; ++dx) {
            for (const int64_t v : vcol) rxk[v] = stnls::reflect(px0 - r + v + dx, W);
            difference_image(qv, kv, t, s, T, H, W, C, c0, Ch, pt, true, urow, vcol,
                             ryq.data(), rxq.data(), ryk.data(), rxk.data(), DW, D.data());
            box_sums(D.data(), R.data(), col.data(), DW, TX, ny, nx, ps);
            for (int64_t ty = 0; ty < ny; ++ty)
              for (int64_t tx = 0; tx < nx; ++tx) {
                const int64_t n = ty * TX + tx;
                const int64_t ii = dy - gy[n], jj = dx - gx[n];
                if (ii >= 0 && jj >= 0 && ii <= ws && jj <= ws) M[n * G2 + ii * G + jj] = col[n];
              }
          }
        }
        // 2. each candidate from its corners' distances and the key's pair sums
        const acc_t* S = pdata + (bh * T + s) * 4 * plane;
        for (int64_t ty = 0; ty < ny; ++ty)
          for (int64_t tx = 0; tx < nx; ++tx) {
            const int64_t n = ty * TX + tx;
            const int64_t qy = py0 + ty, qx = px0 + tx;
            const int64_t q = (tr * nH + tile_i * TY + ty) * nW + tile_j * TX + tx;
            const acc_t* c = centre + ((b * Q + q) * nt + f) * 2;
            const int64_t y0 = qy + gy[n], x0 = qx + gx[n];
            const acc_t fy = (c[0] + off0) - static_cast<acc_t>(y0);
            const acc_t fx = (c[1] + off0) - static_cast<acc_t>(x0);
            const acc_t w00 = (1 - fy) * (1 - fx), w01 = (1 - fy) * fx;
            const acc_t w10 = fy * (1 - fx), w11 = fy * fx;
            bool loaded = false;
            for (int64_t i = 0; i < ws; ++i) {
              const acc_t y = c[0] + (off0 + static_cast<acc_t>(i));
              const int64_t ye = y0 + i + margin, xe = x0 + margin;
              acc_t* dr = row_d.data();
              if (ye >= 0 && ye + 1 < HE && xe >= 0 && xe + ws < WE) {
                // the row's candidates at once (vectorised), then the list
                const acc_t* m = M.data() + n * G2 + i * G;
                const acc_t* sh = S + ye * WE + xe;
                combine_row(m, sh, sh + plane, sh + 2 * plane, sh + 3 * plane, G, WE, ws,
                            w00, w01, w10, w11, dr);
              } else {  // past the maps (windows are clamped into the frame: defensive)
                PatchLoc<acc_t> loc;
                if (!loaded) {
                  loc.set(t, acc_t(qy), acc_t(qx), T, H, W, int(ps), int(pt), 1, false);
                  load_query(qv, loc, C, c0, Ch, int(ps), int(pt), query.data());
                  loaded = true;
                }
                for (int64_t j = 0; j < ws; ++j) {
                  loc.set(s, y, c[1] + (off0 + static_cast<acc_t>(j)), T, H, W, int(ps), int(pt),
                          1, false);
                  dr[j] = patch_distance(kv, loc, query.data(), C, c0, Ch, int(ps), int(pt), true);
                }
              }
              for (int64_t j = 0; j < ws; ++j) {
                const acc_t x = c[1] + (off0 + static_cast<acc_t>(j));
                if (exclude_self && s == t && std::fabs(double(y) - double(qy)) < 1e-4 &&
                    std::fabs(double(x) - double(qx)) < 1e-4)
                  continue;
                stnls::topk_insert(bd.data() + n * k, bi.data() + n * k, cnt[n], int(k), dr[j],
                                   (f * ws + i) * ws + j, true);
              }
            }
          }
      }
      for (int64_t ty = 0; ty < ny; ++ty)
        for (int64_t tx = 0; tx < nx; ++tx) {
          const int64_t n = ty * TX + tx;
          const int64_t q = (tr * nH + tile_i * TY + ty) * nW + tile_j * TX + tx;
          stnls::topk_write(bd.data() + n * k, bi.data() + n * k, cnt[n], int(k), true,
                            dout + (bh * Q + q) * k, out + (bh * Q + q) * k);
        }
    }
}

template <typename scalar_t>
void subpix_tiles_base(const SubpixArgs<scalar_t>& A, int64_t begin, int64_t end) {
  subpix_tiles(A, begin, end);
}

#ifdef STNLS_CPU_AVX2
template <typename scalar_t>
__attribute__((target("avx2"))) void subpix_tiles_avx2(const SubpixArgs<scalar_t>& A,
                                                       int64_t begin, int64_t end) {
  subpix_tiles(A, begin, end);
}
#endif

std::tuple<at::Tensor, at::Tensor> search_topk_subpix_cpu(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& coords,
    const at::Tensor& centres, const at::Tensor& frames, const at::Tensor& pairs,
    at::IntArrayRef grid, int64_t ws, int64_t ps, int64_t pt, int64_t nheads, int64_t k,
    int64_t margin, bool exclude_self) {
  stnls::check_video(queries, "queries");
  stnls::check_video(keys, "keys");
  stnls::check_patch_args(ps, pt, 1);
  TORCH_CHECK(queries.scalar_type() == keys.scalar_type() &&
                  (queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble),
              "search_topk_subpix: expected float32 or float64 videos of one dtype");
  TORCH_CHECK(grid.size() == 6, "grid: expected (t0, y0, x0, T_r, nH, nW)");
  const int64_t B = queries.size(0), T = queries.size(1), H = queries.size(2),
                W = queries.size(3), C = queries.size(4);
  const int64_t Q = coords.size(0), nt = frames.size(1);
  const int64_t gt0 = grid[0], gy0 = grid[1], gx0 = grid[2], nTr = grid[3], nH = grid[4],
                nW = grid[5];
  TORCH_CHECK(nTr * nH * nW == Q, "grid: does not match the number of queries");
  TORCH_CHECK(nheads >= 1 && C % nheads == 0, "nheads: expected a divisor of the channels");
  TORCH_CHECK(k >= 1 && ws >= 1 && margin >= 1, "k, ws, margin: expected positive numbers");
  TORCH_CHECK(pairs.scalar_type() == queries.scalar_type() && pairs.dim() == 6 &&
                  pairs.size(0) == B && pairs.size(1) == nheads && pairs.size(2) == T &&
                  pairs.size(3) == 4 && pairs.size(4) == H + 2 * margin &&
                  pairs.size(5) == W + 2 * margin,
              "pairs: expected (B, nheads, T, 4, H + 2 margin, W + 2 margin) in the videos' dtype");
  TORCH_CHECK(centres.scalar_type() == queries.scalar_type() && centres.dim() == 4 &&
                  centres.size(0) == B && centres.size(1) == Q && centres.size(2) == nt &&
                  centres.size(3) == 2,
              "centres: expected (B, Q, nt, 2) in the videos' dtype");
  auto ids = at::empty({B, nheads, Q, k}, coords.options());
  auto dists = at::empty({B, nheads, Q, k}, queries.options());
  if (ids.numel() == 0) return {dists, ids};
  const int64_t tiles_y = (nH + 31) / 32, tiles_x = (nW + 31) / 32;  // subpix_tiles' tiles
  const auto frm = frames.contiguous();
  const auto cen = centres.contiguous();
  const auto prs = pairs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "search_topk_subpix_cpu", [&] {
    const SubpixArgs<scalar_t> A{queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                                 cen.data_ptr<scalar_t>(), prs.data_ptr<scalar_t>(),
                                 frm.data_ptr<int64_t>(), ids.data_ptr<int64_t>(),
                                 dists.data_ptr<scalar_t>(), T, H, W, C, Q, nt, ws, ps, pt,
                                 nheads, k, margin, gt0, gy0, gx0, nTr, nH, nW, exclude_self};
    const bool avx2 = use_avx2();
    at::parallel_for(0, B * nheads * nTr * tiles_y * tiles_x, 1, [&](int64_t begin, int64_t end) {
#ifdef STNLS_CPU_AVX2
      if (avx2) return subpix_tiles_avx2(A, begin, end);
#endif
      subpix_tiles_base(A, begin, end);
    });
  });
  return {dists, ids};
}

}  // namespace
}  // namespace stnls::search_cpu

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("search_topk_subpix", &stnls::search_cpu::search_topk_subpix_cpu);
}
