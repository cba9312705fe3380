// CPU kernels of gather / scatter (at::parallel_for).
//
// Reading (gather, the gradient w.r.t. positions, scatter's backward) is parallel over
// patches: each task writes only its own outputs. Writing (scatter, gather's backward w.r.t.
// the video) is parallel over (batch, head, band of rows): a task owns the channels of its
// head in its rows, scans every patch of its (batch, head) and adds only what lands in its
// rows. So there are no races, and every output element receives its contributions in the
// same order (patch, then dt, a, b, then corner) whatever the number of threads: results are
// bit-identical run to run and across thread counts.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "../include/aggregate_grid.h"
#include "../include/checks.h"
#include "../include/dispatch.h"
#include "../include/gather_args.h"
#include "../include/grid.h"
#include "../include/mirror.h"
#include "../include/patch_io.h"

namespace {

using stnls::Corners;
using stnls::GDims;
using stnls::Pos;
using stnls::reflect;

// Flat rows (frame * H + row) and columns of one patch's pixels, for both bilinear corners.
struct Loc {
  int64_t row0[stnls::kMaxPt][stnls::kMaxPs];
  int64_t row1[stnls::kMaxPt][stnls::kMaxPs];
  int64_t col0[stnls::kMaxPs];
  int64_t col1[stnls::kMaxPs];

  template <typename acc_t>
  void set(const Pos<acc_t>& p, const GDims& d) {
    const int r = d.ps / 2;
    for (int b = 0; b < d.ps; ++b) {
      const int64_t x = p.x0 + static_cast<int64_t>(d.dil) * (b - r);
      col0[b] = reflect(x, d.W);
      col1[b] = reflect(x + 1, d.W);
    }
    for (int dt = 0; dt < d.pt; ++dt) {
      const int64_t f = reflect(p.t + dt, d.T) * d.H;
      for (int a = 0; a < d.ps; ++a) {
        const int64_t y = p.y0 + static_cast<int64_t>(d.dil) * (a - r);
        row0[dt][a] = f + reflect(y, d.H);
        row1[dt][a] = f + reflect(y + 1, d.H);
      }
    }
  }

  Corners at(int dt, int a, int b, int64_t W) const {
    const int64_t r0 = row0[dt][a] * W, r1 = row1[dt][a] * W;
    return {r0 + col0[b], r0 + col1[b], r1 + col0[b], r1 + col1[b]};
  }
};


// Where scatter_into reads the values of patch n: a stored patch (B, nh, Q, K, pt, Ch, ps, ps)...
template <typename scalar_t, typename acc_t>
struct StoredPatches {
  const scalar_t* pat;
  int64_t psz = 0;
  int ps = 0;
  int64_t Ch = 0;
  const scalar_t* base = nullptr;
  void start(int64_t n) { base = pat + n * psz; }
  acc_t at(int dt, int a, int bb, int64_t c) const {
    return static_cast<acc_t>(base[((dt * Ch + c) * ps + a) * ps + bb]);
  }
};

// ... or the patch of a channels-last video at position n of inds, read as gather reads it
// (and rounded to the video's dtype as gather stores it), so aggregating without storing
// the patches gives what gather then scatter give.
template <typename video_t, typename acc_t, typename pos_t>
struct VideoPatches {
  const video_t* video;
  const pos_t* inds;
  const GDims* d;
  Loc loc;
  Pos<acc_t> p;
  const video_t* vb = nullptr;
  int64_t c0 = 0;
  void start(int64_t n) {
    const int64_t per_batch = d->nh * d->Q * d->K;
    p = stnls::load_pos<acc_t>(inds + n * 3, false);
    loc.set(p, *d);
    vb = video + (n / per_batch) * d->video();
    c0 = ((n / (d->Q * d->K)) % d->nh) * d->Ch;
  }
  acc_t at(int dt, int a, int bb, int64_t c) const {
    return static_cast<acc_t>(static_cast<video_t>(
        stnls::bilinear(vb, d->C, c0 + c, loc.at(dt, a, bb, d->W), p)));
  }
};

// Adds weight * patch (weights may be null: 1) into out (B, T, H, W, C) and the weights into
// cnt (B, T, H, W, nh) (may be null), both in acc_t; patch n is read from src (a copy per
// task) and written at pos[n]. See the file comment for the scheme.
template <typename acc_t, typename pos_t, typename Src>
void scatter_from(const Src& src0, const pos_t* pos, const acc_t* wts, acc_t* out, acc_t* cnt,
                  const GDims& d) {
  const int64_t nbh = d.B * d.nh, rows = d.T * d.H, QK = d.Q * d.K;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t nb = std::min<int64_t>(rows, std::max<int64_t>(1, (nthreads + nbh - 1) / nbh));
  const int ps = d.ps, pt = d.pt;
  const int64_t C = d.C, Ch = d.Ch, nh = d.nh, W = d.W;
  at::parallel_for(0, nbh * nb, 1, [&](int64_t begin, int64_t end) {
    Loc loc;
    Src src = src0;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / nb, band = task % nb, b = bh / nh, h = bh % nh;
      // pixels of the rows [lo, hi) of this band
      const int64_t lo = band * rows / nb * W, hi = (band + 1) * rows / nb * W;
      acc_t* ob = out + b * d.video();
      acc_t* cb = cnt == nullptr ? nullptr : cnt + b * d.T * d.H * d.W * nh;
      const int64_t c0 = h * Ch;
      for (int64_t qk = 0; qk < QK; ++qk) {
        const int64_t n = bh * QK + qk;
        const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, false);
        loc.set(p, d);
        const acc_t w = wts == nullptr ? acc_t(1) : wts[n];
        bool started = false;  // the source is read only for patches that touch the band
        for (int dt = 0; dt < pt; ++dt)
          for (int a = 0; a < ps; ++a) {
            const int64_t r0 = loc.row0[dt][a] * W, r1 = loc.row1[dt][a] * W;
            const bool in0 = r0 >= lo && r0 < hi;
            const bool in1 = p.sy && r1 >= lo && r1 < hi;
            if (!in0 && !in1) continue;
            if (!started) {
              src.start(n);
              started = true;
            }
            for (int bb = 0; bb < ps; ++bb) {
              const int64_t x0 = loc.col0[bb], x1 = loc.col1[bb];
              for (int64_t c = 0; c < Ch; ++c) {
                acc_t g = src.at(dt, a, bb, c);
                if (wts != nullptr) g = g * w;
                if (in0) {
                  const acc_t g0 = p.wy0 * g;
                  ob[(r0 + x0) * C + c0 + c] += p.wx0 * g0;
                  if (p.sx) ob[(r0 + x1) * C + c0 + c] += p.wx1 * g0;
                }
                if (in1) {
                  const acc_t g1 = p.wy1 * g;
                  ob[(r1 + x0) * C + c0 + c] += p.wx0 * g1;
                  if (p.sx) ob[(r1 + x1) * C + c0 + c] += p.wx1 * g1;
                }
              }
              if (cb != nullptr) {
                if (in0) {
                  const acc_t g0 = p.wy0 * w;
                  cb[(r0 + x0) * nh + h] += p.wx0 * g0;
                  if (p.sx) cb[(r0 + x1) * nh + h] += p.wx1 * g0;
                }
                if (in1) {
                  const acc_t g1 = p.wy1 * w;
                  cb[(r1 + x0) * nh + h] += p.wx0 * g1;
                  if (p.sx) cb[(r1 + x1) * nh + h] += p.wx1 * g1;
                }
              }
            }
          }
      }
    }
  });
}

template <typename scalar_t, typename acc_t, typename pos_t>
void scatter_into(const scalar_t* pat, const pos_t* pos, const acc_t* wts, acc_t* out, acc_t* cnt,
                  const GDims& d) {
  StoredPatches<scalar_t, acc_t> src{pat, d.psz(), d.ps, d.Ch};
  scatter_from<acc_t, pos_t>(src, pos, wts, out, cnt, d);
}

at::Tensor gather_patches_cpu(const at::Tensor& video, const at::Tensor& inds_, int64_t ps,
                              int64_t pt, int64_t dilation) {
  stnls::check_video(video, "video");
  stnls::check_patch_args(ps, pt, dilation);
  const int64_t B = video.size(0);
  const at::Tensor inds = stnls::check_inds(inds_, B);
  const GDims d = stnls::dims_from(video, inds, ps, pt, dilation);
  auto out = at::empty({B, d.nh, d.Q, d.K, pt, d.Ch, ps, ps}, video.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "gather_patches_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    const video_t* v = video.data_ptr<video_t>();
    video_t* o = out.data_ptr<video_t>();
    stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
      using pos_t = decltype(tag);
      const pos_t* pos = inds.data_ptr<pos_t>();
      const int64_t psz = d.psz(), per_batch = d.nh * d.Q * d.K;
      at::parallel_for(0, d.patches(), 16, [&](int64_t begin, int64_t end) {
        Loc loc;
        for (int64_t n = begin; n < end; ++n) {
          const int64_t b = n / per_batch, h = (n / (d.Q * d.K)) % d.nh;
          const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, false);
          loc.set(p, d);
          const video_t* vb = v + b * d.video();
          video_t* on = o + n * psz;
          for (int dt = 0; dt < d.pt; ++dt)
            for (int64_t c = h * d.Ch; c < (h + 1) * d.Ch; ++c)
              for (int a = 0; a < d.ps; ++a)
                for (int bb = 0; bb < d.ps; ++bb)
                  *on++ = static_cast<video_t>(
                      stnls::bilinear(vb, d.C, c, loc.at(dt, a, bb, d.W), p));
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_patches_backward_cpu(
    const at::Tensor& grad, const at::Tensor& video, const at::Tensor& inds_, int64_t ps,
    int64_t pt, int64_t dilation, std::array<bool, 2> needs) {
  stnls::check_video(video, "video");
  stnls::check_patch_args(ps, pt, dilation);
  const int64_t B = video.size(0);
  const at::Tensor inds = stnls::check_inds(inds_, B);
  const GDims d = stnls::dims_from(video, inds, ps, pt, dilation);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({B, d.nh, d.Q, d.K, pt, d.Ch, ps, ps}),
              "grad: expected the shape of the patches, got ", stnls::shape_str(grad.sizes()));
  const auto acc = stnls::acc_type(video.scalar_type());
  const bool sub = inds.is_floating_point();
  auto gv = at::zeros(video.sizes(), video.options().dtype(acc));
  auto gi = at::zeros(inds.sizes(), inds.options().dtype(sub ? inds.scalar_type() : acc));
  const bool need_v = needs[0], need_i = needs[1] && sub;
  if (d.patches() == 0 || (!need_v && !need_i)) return {gv.to(video.scalar_type()), gi};
  const at::Tensor g = grad.to(video.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                  "gather_patches_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using video_t = scalar_t;
    const video_t* v = video.data_ptr<video_t>();
    const video_t* gd = g.data_ptr<video_t>();
    stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
      using pos_t = decltype(tag);
      const pos_t* pos = inds.data_ptr<pos_t>();
      if (need_v)
        scatter_into<video_t, acc_t, pos_t>(gd, pos, nullptr, gv.data_ptr<acc_t>(), nullptr, d);
      if (!need_i) return;
      if constexpr (std::is_floating_point<pos_t>::value) {
        pos_t* gp = gi.data_ptr<pos_t>();
        const int64_t psz = d.psz(), per_batch = d.nh * d.Q * d.K;
        at::parallel_for(0, d.patches(), 16, [&](int64_t begin, int64_t end) {
          Loc loc;
          for (int64_t n = begin; n < end; ++n) {
            const int64_t b = n / per_batch, h = (n / (d.Q * d.K)) % d.nh;
            const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, true);
            loc.set(p, d);
            const video_t* vb = v + b * d.video();
            const video_t* gn = gd + n * psz;
            acc_t gy = 0, gx = 0;
            for (int dt = 0; dt < d.pt; ++dt)
              for (int64_t c = h * d.Ch; c < (h + 1) * d.Ch; ++c)
                for (int a = 0; a < d.ps; ++a)
                  for (int bb = 0; bb < d.ps; ++bb) {
                    acc_t dy, dx;
                    stnls::bilinear_grad(vb, d.C, c, loc.at(dt, a, bb, d.W), p, &dy, &dx);
                    const acc_t gg = static_cast<acc_t>(*gn++);
                    gy += gg * dy;
                    gx += gg * dx;
                  }
            gp[n * 3 + 1] = static_cast<pos_t>(gy);
            gp[n * 3 + 2] = static_cast<pos_t>(gx);
          }
        });
      }
    });
  });
  return {gv.to(video.scalar_type()), gi};
}



std::tuple<at::Tensor, at::Tensor> scatter_patches_cpu(const at::Tensor& patches,
                                                       const at::Tensor& inds_,
                                                       const std::optional<at::Tensor>& weights,
                                                       int64_t T, int64_t H, int64_t W,
                                                       int64_t ps, int64_t pt, int64_t dilation) {
  const at::Tensor inds = stnls::check_inds(inds_, patches.dim() > 0 ? patches.size(0) : 0);
  const GDims d = stnls::scatter_dims(patches, inds, T, H, W, ps, pt, dilation);
  const auto acc = stnls::acc_type(patches.scalar_type());
  auto out = at::zeros({d.B, T, H, W, d.C}, patches.options().dtype(acc));
  auto cnt = at::zeros({d.B, T, H, W, d.nh}, patches.options().dtype(acc));
  const auto w = stnls::weights_acc(weights, d, acc);
  if (d.patches() > 0 && d.C > 0) {
    const at::Tensor pat = patches.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                    "scatter_patches_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using patch_t = scalar_t;
      stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        scatter_into<patch_t, acc_t, pos_t>(
            pat.data_ptr<patch_t>(), inds.data_ptr<pos_t>(),
            w.has_value() ? w->data_ptr<acc_t>() : nullptr, out.data_ptr<acc_t>(),
            cnt.data_ptr<acc_t>(), d);
      });
    });
  }
  return {out.to(patches.scalar_type()), cnt.to(patches.scalar_type())};
}

// scatter(gather(video, inds), at, weights) without storing the patches: patch n is read
// from the video at inds[n] and added, weighted, at at[n]. Same order of additions as the
// scatter kernel, and the values rounded as gather stores them: the same result, bit for bit.
std::tuple<at::Tensor, at::Tensor> aggregate_patches_cpu(const at::Tensor& video,
                                                         const at::Tensor& inds,
                                                         const at::Tensor& at_pos,
                                                         const std::optional<at::Tensor>& weights,
                                                         int64_t ps, int64_t pt, int64_t dilation) {
  auto a = stnls::aggregate_args(video, inds, at_pos, weights, ps, pt, dilation);
  const GDims& d = a.d;
  if (d.patches() > 0 && d.C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                    "aggregate_patches_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      stnls::dispatch_pos(a.inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        VideoPatches<video_t, acc_t, pos_t> src{video.data_ptr<video_t>(),
                                                a.inds.data_ptr<pos_t>(), &d};
        scatter_from<acc_t, pos_t>(src, a.at.data_ptr<pos_t>(),
                                   a.w.has_value() ? a.w->data_ptr<acc_t>() : nullptr,
                                   a.out.data_ptr<acc_t>(), a.cnt.data_ptr<acc_t>(), d);
      });
    });
  }
  return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
}

// n contiguous values of one neighbour's patch row (rows s0 / s1, the next column C values
// on), added (weighted) to o: the values of stnls::bilinear (same operations, same order),
// rounded to the video's dtype, with the bilinear branches taken once for the run. One flat
// loop per case, which the compiler vectorises.
template <typename video_t, typename acc_t, bool WEIGHTED>
inline void grid_flat_span(const video_t* __restrict__ s0, const video_t* __restrict__ s1,
                           const Pos<acc_t>& p, acc_t w, int64_t n, int64_t C,
                           acc_t* __restrict__ o) {
  const acc_t wx0 = p.wx0, wx1 = p.wx1, wy0 = p.wy0, wy1 = p.wy1;
  auto add = [&](int64_t i, acc_t v) {
    const acc_t vr = static_cast<acc_t>(static_cast<video_t>(v));
    o[i] += WEIGHTED ? vr * w : vr;
  };
  if (!p.sx && !p.sy) {
    for (int64_t i = 0; i < n; ++i) add(i, static_cast<acc_t>(s0[i]));
  } else if (!p.sy) {
    for (int64_t i = 0; i < n; ++i)
      add(i, wx0 * static_cast<acc_t>(s0[i]) + wx1 * static_cast<acc_t>(s0[i + C]));
  } else if (!p.sx) {
    for (int64_t i = 0; i < n; ++i)
      add(i, wy0 * static_cast<acc_t>(s0[i]) + wy1 * static_cast<acc_t>(s1[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t r0 = wx0 * static_cast<acc_t>(s0[i]) + wx1 * static_cast<acc_t>(s0[i + C]);
      const acc_t r1 = wx0 * static_cast<acc_t>(s1[i]) + wx1 * static_cast<acc_t>(s1[i + C]);
      add(i, wy0 * r0 + wy1 * r1);
    }
  }
}

// One neighbour's ps patch pixels of one row, added (weighted) to ps contiguous output pixels.
// s0 / s1: the first pixel's channel of the head in the neighbour's top / bottom row; o: the
// first output pixel's. Where the head holds all the channels (Ch == C), the ps pixels'
// channels are one run of ps * C values in the rows and the output alike; otherwise each
// pixel's Ch channels are one.
template <typename video_t, typename acc_t, bool WEIGHTED>
inline void grid_row_span(const video_t* s0, const video_t* s1, const Pos<acc_t>& p, acc_t w,
                          int ps, int64_t C, int64_t Ch, acc_t* o) {
  if (Ch == C) return grid_flat_span<video_t, acc_t, WEIGHTED>(s0, s1, p, w, ps * C, C, o);
  for (int bb = 0; bb < ps; ++bb)
    grid_flat_span<video_t, acc_t, WEIGHTED>(s0 + bb * C, s1 + bb * C, p, w, Ch, C, o + bb * C);
}

// aggregate at the query grid (aggregate_grid.h), by output rows: parallel over (batch, head,
// frame, row) of the pixels the grid's patches reach; each row is written by one task only.
std::tuple<at::Tensor, at::Tensor> aggregate_grid_cpu(const at::Tensor& video,
                                                      const at::Tensor& inds,
                                                      const std::optional<at::Tensor>& weights,
                                                      at::IntArrayRef region, int64_t stride,
                                                      at::IntArrayRef out_box, int64_t ps,
                                                      int64_t pt, int64_t dilation) {
  auto a = stnls::aggregate_grid_args(video, inds, weights, region, stride, out_box, ps, pt,
                                      dilation);
  const GDims& d = a.d;
  const stnls::Box& box = a.maps.box;  // the rows computed: those the grid reaches
  const stnls::Box& ob = a.box;        // the output's pixels (a box holding those)
  const int64_t bt = box.t1 - box.t0, by = box.y1 - box.y0;
  const int64_t oT = ob.t1 - ob.t0, oH = ob.y1 - ob.y0, oW = ob.x1 - ob.x0;
  if (d.C > 0 && d.K > 0 && bt > 0 && by > 0 && box.x1 > box.x0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(),
                                    "aggregate_grid_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using video_t = scalar_t;
      stnls::dispatch_pos(a.inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        const int64_t* tmap = a.maps.all.data();
        const int64_t* ymap = tmap + a.maps.ty;
        const int64_t* te = tmap + d.T + 1;
        const int64_t* ye = ymap + d.H + 1;
        const int64_t nH = a.maps.g.nH, nW = a.maps.g.nW, gx0 = a.maps.g.x0, gs = a.maps.g.stride;
        const int r = d.ps / 2;
        const video_t* vid = video.data_ptr<video_t>();
        const pos_t* pos = a.inds.data_ptr<pos_t>();
        const acc_t* wts = a.w.has_value() ? a.w->data_ptr<acc_t>() : nullptr;
        acc_t* out = a.out.data_ptr<acc_t>();
        acc_t* cnt = a.cnt.data_ptr<acc_t>();
        // Each output row (b, h, t, y) of the box is one task: for the grid queries whose
        // patch rows land on it (the time and row maps), each neighbour's position, frame and
        // rows are worked out once and its ps patch columns added where they land (their
        // mirrored columns). So each pixel sums in the order (frame entry, row entry, grid
        // column, k, b), whatever the number of threads, with no atomics.
        at::parallel_for(0, d.B * d.nh * bt * by, 1, [&](int64_t r0, int64_t r1) {
          for (int64_t rr = r0; rr < r1; ++rr) {
            const int64_t y = box.y0 + rr % by, t = box.t0 + (rr / by) % bt,
                          h = (rr / (by * bt)) % d.nh, b = rr / (by * bt * d.nh);
            const video_t* vb = vid + b * d.video();
            const stnls::NeighboursAoS<acc_t, pos_t> nb{pos, wts, (b * d.nh + h) * d.Q, d.K};
            // pixel x of this row is orow[(x - ob.x0) * C] and crow[(x - ob.x0) * nh]
            const int64_t row_px = ((b * oT + t - ob.t0) * oH + y - ob.y0) * oW;
            acc_t* orow = out + row_px * d.C + h * d.Ch;
            acc_t* crow = cnt + row_px * d.nh + h;
            for (int64_t et = tmap[t]; et < tmap[t + 1]; ++et) {
              const int64_t it = te[et] / d.pt;
              const int dt = static_cast<int>(te[et] - it * d.pt);
              for (int64_t ey = ymap[y]; ey < ymap[y + 1]; ++ey) {
                const int64_t iy = ye[ey] / d.ps;
                const int64_t dy = static_cast<int64_t>(d.dil) * (ye[ey] - iy * d.ps - r);
                const int64_t qrow = (it * nH + iy) * nW;
                for (int64_t ix = 0; ix < nW; ++ix) {
                  const int64_t gx = gx0 + ix * gs;
                  for (int64_t k = 0; k < d.K; ++k) {
                    Pos<acc_t> p;
                    acc_t w;
                    nb(qrow + ix, k, p, w);
                    const int64_t f = reflect(p.t + dt, d.T) * d.H;
                    const int64_t ra = (f + reflect(p.y0 + dy, d.H)) * d.W;
                    const int64_t rb = (f + reflect(p.y0 + dy + 1, d.H)) * d.W;
                    if (d.dil == 1 && gx - r >= 0 && gx + r < d.W && p.x0 - r >= 0 &&
                        p.x0 + r + 1 < d.W) {
                      // no column mirrored: the ps pixels read and written are contiguous
                      const video_t* s0 = vb + (ra + p.x0 - r) * d.C + h * d.Ch;
                      const video_t* s1 = vb + (rb + p.x0 - r) * d.C + h * d.Ch;
                      acc_t* o = orow + (gx - r - ob.x0) * d.C;
                      if (wts != nullptr)
                        grid_row_span<video_t, acc_t, true>(s0, s1, p, w, d.ps, d.C, d.Ch, o);
                      else
                        grid_row_span<video_t, acc_t, false>(s0, s1, p, w, d.ps, d.C, d.Ch, o);
                      for (int bb = 0; bb < d.ps; ++bb) crow[(gx - r + bb - ob.x0) * d.nh] += w;
                      continue;
                    }
                    for (int bb = 0; bb < d.ps; ++bb) {
                      const int64_t dx = static_cast<int64_t>(d.dil) * (bb - r);
                      const int64_t xo = reflect(gx + dx, d.W);
                      const int64_t ca = reflect(p.x0 + dx, d.W), cb = reflect(p.x0 + dx + 1, d.W);
                      const Corners kc{ra + ca, ra + cb, rb + ca, rb + cb};
                      acc_t* o = orow + (xo - ob.x0) * d.C;
                      for (int64_t c = 0; c < d.Ch; ++c) {
                        // rounded to the video's dtype, as gather stores it
                        const acc_t v = static_cast<acc_t>(static_cast<video_t>(
                            stnls::bilinear(vb, d.C, h * d.Ch + c, kc, p)));
                        o[c] += wts == nullptr ? v : v * w;
                      }
                      crow[(xo - ob.x0) * d.nh] += w;
                    }
                  }
                }
              }
            }
          }
        });
      });
    });
  }
  return {a.out.to(video.scalar_type()), a.cnt.to(video.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scatter_patches_backward_cpu(
    const std::optional<at::Tensor>& grad_video, const std::optional<at::Tensor>& grad_counts,
    const at::Tensor& patches, const at::Tensor& inds_, const std::optional<at::Tensor>& weights,
    int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt, int64_t dilation,
    std::array<bool, 3> needs) {
  const at::Tensor inds = stnls::check_inds(inds_, patches.dim() > 0 ? patches.size(0) : 0);
  const GDims d = stnls::scatter_dims(patches, inds, T, H, W, ps, pt, dilation);
  const auto acc = stnls::acc_type(patches.scalar_type());
  const auto w = stnls::weights_acc(weights, d, acc);
  const bool sub = inds.is_floating_point();
  auto gp = at::zeros(patches.sizes(), patches.options());
  auto gw = at::zeros({d.B, d.nh, d.Q, d.K}, patches.options().dtype(acc));
  auto gi = at::zeros(inds.sizes(), inds.options().dtype(sub ? inds.scalar_type() : acc));
  const auto wdtype = w.has_value() ? weights->scalar_type() : patches.scalar_type();
  at::Tensor gvid, gcnt;
  if (grad_video.has_value() && grad_video->defined()) {
    TORCH_CHECK(grad_video->sizes() == at::IntArrayRef({d.B, T, H, W, d.C}),
                "grad_video: expected (B, T, H, W, C), got ",
                stnls::shape_str(grad_video->sizes()));
    gvid = grad_video->to(patches.scalar_type()).contiguous();
  }
  if (grad_counts.has_value() && grad_counts->defined()) {
    TORCH_CHECK(grad_counts->sizes() == at::IntArrayRef({d.B, T, H, W, d.nh}),
                "grad_counts: expected (B, T, H, W, nheads), got ",
                stnls::shape_str(grad_counts->sizes()));
    gcnt = grad_counts->to(patches.scalar_type()).contiguous();
  }
  const bool need_p = needs[0] && gvid.defined();
  const bool need_w = needs[1] && w.has_value() && (gvid.defined() || gcnt.defined());
  const bool need_i = needs[2] && sub && (gvid.defined() || gcnt.defined());
  if (d.patches() > 0 && d.C > 0 && (need_p || need_w || need_i)) {
    const at::Tensor pat = patches.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(),
                                    "scatter_patches_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using patch_t = scalar_t;
      const patch_t* pd = pat.data_ptr<patch_t>();
      const patch_t* gvd = gvid.defined() ? gvid.data_ptr<patch_t>() : nullptr;
      const patch_t* gcd = gcnt.defined() ? gcnt.data_ptr<patch_t>() : nullptr;
      const acc_t* wd = w.has_value() ? w->data_ptr<acc_t>() : nullptr;
      patch_t* gpd = gp.data_ptr<patch_t>();
      acc_t* gwd = gw.data_ptr<acc_t>();
      stnls::dispatch_pos(inds.scalar_type(), [&](auto tag) {
        using pos_t = decltype(tag);
        const pos_t* pos = inds.data_ptr<pos_t>();
        pos_t* gid = need_i ? gi.data_ptr<pos_t>() : nullptr;
        const int64_t psz = d.psz(), per_batch = d.nh * d.Q * d.K;
        const int64_t frame_px = d.T * d.H * d.W;
        at::parallel_for(0, d.patches(), 16, [&](int64_t begin, int64_t end) {
          Loc loc;
          for (int64_t n = begin; n < end; ++n) {
            const int64_t b = n / per_batch, h = (n / (d.Q * d.K)) % d.nh;
            const Pos<acc_t> p = stnls::load_pos<acc_t>(pos + n * 3, need_i);
            loc.set(p, d);
            const acc_t wn = wd == nullptr ? acc_t(1) : wd[n];
            acc_t sw = 0, gy = 0, gx = 0;
            if (gvd != nullptr) {
              const patch_t* gvb = gvd + b * d.video();
              const patch_t* pn = pd + n * psz;
              patch_t* gpn = gpd + n * psz;
              int64_t m = 0;
              for (int dt = 0; dt < d.pt; ++dt)
                for (int64_t c = h * d.Ch; c < (h + 1) * d.Ch; ++c)
                  for (int a = 0; a < d.ps; ++a)
                    for (int bb = 0; bb < d.ps; ++bb, ++m) {
                      const Corners k = loc.at(dt, a, bb, d.W);
                      if (need_p || need_w) {
                        const acc_t G = stnls::bilinear(gvb, d.C, c, k, p);
                        if (need_p) gpn[m] = static_cast<patch_t>(wd == nullptr ? G : G * wn);
                        if (need_w) sw += static_cast<acc_t>(pn[m]) * G;
                      }
                      if (need_i) {
                        acc_t dy, dx;
                        stnls::bilinear_grad(gvb, d.C, c, k, p, &dy, &dx);
                        const acc_t pw = static_cast<acc_t>(pn[m]) * wn;
                        gy += pw * dy;
                        gx += pw * dx;
                      }
                    }
            }
            if (gcd != nullptr && (need_w || need_i)) {
              const patch_t* gcb = gcd + b * frame_px * d.nh;
              for (int dt = 0; dt < d.pt; ++dt)
                for (int a = 0; a < d.ps; ++a)
                  for (int bb = 0; bb < d.ps; ++bb) {
                    const Corners k = loc.at(dt, a, bb, d.W);
                    if (need_w) sw += stnls::bilinear(gcb, d.nh, h, k, p);
                    if (need_i) {
                      acc_t dy, dx;
                      stnls::bilinear_grad(gcb, d.nh, h, k, p, &dy, &dx);
                      gy += wn * dy;
                      gx += wn * dx;
                    }
                  }
            }
            if (need_w) gwd[n] = sw;
            if constexpr (std::is_floating_point<pos_t>::value) {
              if (need_i) {
                gid[n * 3 + 1] = static_cast<pos_t>(gy);
                gid[n * 3 + 2] = static_cast<pos_t>(gx);
              }
            }
          }
        });
      });
    });
  }
  return {gp, gw.to(wdtype), gi};
}

}  // namespace

TORCH_LIBRARY_IMPL(napari_stnls, CPU, m) {
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("gather_patches_backward", &gather_patches_backward_cpu);
  m.impl("scatter_patches", &scatter_patches_cpu);
  m.impl("scatter_patches_backward", &scatter_patches_backward_cpu);
  m.impl("aggregate_patches", &aggregate_patches_cpu);
  m.impl("aggregate_grid", &aggregate_grid_cpu);
}
