// Host-side argument checks and dtype dispatch shared by the CPU and CUDA kernels of
// gather / scatter / iunfold / ifold (and a few of search's).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gather.h"
#include "patch.h"

namespace stnls {

// "[2, 3, 4]": a shape for an error message. (Messages once crashed on the device while
// formatting numbers; the cause was a static copy of libstdc++ linked into the module beside
// torch's shared one, which setup.py now prevents, not the IntArrayRef this replaced.)
inline std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline void check_patch_args(int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(ps >= 1 && ps <= kMaxPs, "ps: compiled kernels take 1 <= ps <= ", kMaxPs,
              ", got ", ps);
  TORCH_CHECK(pt >= 1 && pt <= kMaxPt, "pt: compiled kernels take 1 <= pt <= ", kMaxPt,
              ", got ", pt);
  TORCH_CHECK(dilation >= 1, "dilation: expected >= 1, got ", dilation);
}

// The dtype kernels accumulate in for a video: float64 for float64, else float32.
inline at::ScalarType acc_type(const at::Tensor& video) {
  return video.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// search_dists with `given`: a copy of the distances search_topk returned at these positions,
// after checking that they are the (B, nheads, Q, k) distances of this search.
inline at::Tensor given_dists(const at::Tensor& given, const at::Tensor& queries,
                              const at::Tensor& kpos) {
  const auto acc = acc_type(queries);
  TORCH_CHECK(given.dim() == 4 && given.sizes() == kpos.sizes().slice(0, 4),
              "given: expected the (B, nheads, Q, k) shape of kpos, got ",
              stnls::shape_str(given.sizes()));
  TORCH_CHECK(given.scalar_type() == acc && given.device() == queries.device(),
              "given: expected ", acc, " distances on ", queries.device());
  return given.clone(at::MemoryFormat::Contiguous);
}

// Calls f(std::integral_constant<int, KMAX>{}) with the smallest KMAX in {16, 32, 64, 128}
// that holds k: the capacity of a kernel's per-thread top-k list.
template <typename F>
void dispatch_kmax(int64_t k, F&& f) {
  if (k <= 16) {
    f(std::integral_constant<int, 16>{});
  } else if (k <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (k <= 64) {
    f(std::integral_constant<int, 64>{});
  } else {
    f(std::integral_constant<int, 128>{});
  }
}

inline void check_video_cl(const at::Tensor& v, const char* name) {
  TORCH_CHECK(v.dim() == 5, name, ": expected a channels-last video (B, T, H, W, C), got ",
              v.dim(), " dims");
  TORCH_CHECK(v.is_contiguous(), name, ": expected a contiguous tensor");
  TORCH_CHECK(v.is_floating_point(), name, ": expected a floating-point tensor");
}

// inds (B, nheads, Q, K, 3), int32/int64/float32/float64; returns it contiguous.
inline at::Tensor check_inds(const at::Tensor& inds, int64_t B) {
  TORCH_CHECK(inds.dim() == 5 && inds.size(4) == 3, "inds: expected (B, nheads, Q, K, 3), got ",
              stnls::shape_str(inds.sizes()));
  TORCH_CHECK(inds.size(0) == B, "inds: batch size ", inds.size(0), " does not match B=", B);
  const auto st = inds.scalar_type();
  TORCH_CHECK(st == at::kInt || st == at::kLong || st == at::kFloat || st == at::kDouble,
              "inds: expected int32, int64, float32 or float64, got ", st);
  return inds.contiguous();
}

// Calls f(pos_t{}) with the C++ type of an inds dtype (int32, int64, float, double).
template <typename F>
void dispatch_pos(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kInt:
      f(int32_t(0));
      break;
    case at::kLong:
      f(int64_t(0));
      break;
    case at::kFloat:
      f(float(0));
      break;
    case at::kDouble:
      f(double(0));
      break;
    default:
      TORCH_CHECK(false, "inds: unsupported dtype ", st);
  }
}

// Sizes from a channels-last video and inds.
inline GDims dims_from(const at::Tensor& video, const at::Tensor& inds, int64_t ps, int64_t pt,
                       int64_t dil) {
  const int64_t B = video.size(0), T = video.size(1), H = video.size(2), W = video.size(3),
                C = video.size(4);
  const int64_t nh = inds.size(1);
  TORCH_CHECK(nh >= 1 && C % nh == 0, "inds: nheads=", nh, " must divide C=", C);
  return GDims{B, T, H, W, C, nh, inds.size(2), inds.size(3), C / nh,
               static_cast<int>(ps), static_cast<int>(pt), static_cast<int>(dil)};
}

// patches (B, nh, Q, K, pt, Ch, ps, ps) -> sizes, checking inds against it.
inline GDims scatter_dims(const at::Tensor& patches, const at::Tensor& inds, int64_t T,
                          int64_t H, int64_t W, int64_t ps, int64_t pt, int64_t dilation) {
  check_patch_args(ps, pt, dilation);
  TORCH_CHECK(patches.dim() == 8 && patches.is_floating_point(),
              "patches: expected a floating (B, nheads, Q, K, pt, C/nheads, ps, ps) tensor");
  TORCH_CHECK(patches.size(4) == pt && patches.size(6) == ps && patches.size(7) == ps,
              "patches: expected (..., pt, C/nheads, ps, ps) with pt=", pt, ", ps=", ps,
              ", got ", stnls::shape_str(patches.sizes()));
  TORCH_CHECK(T >= 1 && H >= 1 && W >= 1, "T, H, W: expected >= 1");
  TORCH_CHECK(inds.size(1) == patches.size(1) && inds.size(2) == patches.size(2) &&
                  inds.size(3) == patches.size(3),
              "inds: expected (B, nheads, Q, K, 3) matching patches ",
              stnls::shape_str(patches.sizes()), ", got ",
              stnls::shape_str(inds.sizes()));
  const int64_t nh = patches.size(1), Ch = patches.size(5);
  return GDims{patches.size(0), T, H, W, nh * Ch, nh, patches.size(2), patches.size(3), Ch,
               static_cast<int>(ps), static_cast<int>(pt), static_cast<int>(dilation)};
}

// weights (B, nh, Q, K) checked and converted to the accumulation dtype (None: nullopt).
inline std::optional<at::Tensor> weights_acc(const std::optional<at::Tensor>& weights,
                                             const GDims& d, at::ScalarType acc) {
  if (!weights.has_value() || !weights->defined()) return std::nullopt;
  TORCH_CHECK(weights->is_floating_point() &&
                  weights->sizes() == at::IntArrayRef({d.B, d.nh, d.Q, d.K}),
              "weights: expected a floating (B, nheads, Q, K) tensor, got ",
              stnls::shape_str(weights->sizes()));
  return weights->to(acc).contiguous();
}

inline at::ScalarType acc_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

// Geometry of the query grid of iunfold / ifold: region (t0, t1, y0, y1, x0, x1), stride.
struct Grid {
  int64_t t0, t1, y0, y1, x0, x1, stride, nH, nW, Q;
};

inline Grid make_grid(at::IntArrayRef region, int64_t stride, int64_t T, int64_t H, int64_t W) {
  TORCH_CHECK(region.size() == 6, "region: expected 6 values (t0, t1, y0, y1, x0, x1)");
  TORCH_CHECK(stride >= 1, "stride: expected >= 1, got ", stride);
  Grid g{region[0], region[1], region[2], region[3], region[4], region[5], stride, 0, 0, 0};
  TORCH_CHECK(0 <= g.t0 && g.t0 < g.t1 && g.t1 <= T && 0 <= g.y0 && g.y0 < g.y1 && g.y1 <= H &&
                  0 <= g.x0 && g.x0 < g.x1 && g.x1 <= W,
              "region: ", shape_str(region), " is empty or not inside the video (T, H, W) = (",
              T, ", ", H, ", ", W, ")");
  g.nH = (g.y1 - g.y0 + stride - 1) / stride;
  g.nW = (g.x1 - g.x0 + stride - 1) / stride;
  g.Q = (g.t1 - g.t0) * g.nH * g.nW;
  return g;
}

inline void check_fold_args(int64_t ps, int64_t pt, int64_t dilation) {
  TORCH_CHECK(ps >= 1, "ps: expected >= 1, got ", ps);
  TORCH_CHECK(pt >= 1, "pt: expected >= 1, got ", pt);
  TORCH_CHECK(dilation >= 1, "dilation: expected >= 1, got ", dilation);
}

// The pixels ifold can touch: frames [t0, t1), rows [y0, y1), columns [x0, x1) (clamped to
// the video); everything else of its output is zero.
struct Box {
  int64_t t0, t1, y0, y1, x0, x1;
};

inline Box fold_box(const Grid& g, int64_t T, int64_t H, int64_t W, int64_t ps, int64_t pt,
                    int64_t dil) {
  const int64_t r = ps / 2;
  const int64_t ylast = g.y0 + (g.nH - 1) * g.stride, xlast = g.x0 + (g.nW - 1) * g.stride;
  Box b;
  b.t0 = g.t0;
  b.t1 = std::min(T, g.t1 - 1 + pt);
  b.y0 = std::max<int64_t>(0, g.y0 - dil * r);
  b.y1 = std::min(H, ylast + dil * (ps - 1 - r) + 1);
  b.x0 = std::max<int64_t>(0, g.x0 - dil * r);
  b.x1 = std::min(W, xlast + dil * (ps - 1 - r) + 1);
  return b;
}

// aggregate's and aggregate_grid's zeroed float32/float64 output (B, T, H, W, C) and counts
// (B, T, H, W, nh), and the weights in that dtype, into a.out, a.cnt and a.w.
template <typename Args>
void aggregate_outputs(const at::Tensor& video, const GDims& d,
                       const std::optional<at::Tensor>& weights, Args& a) {
  const auto acc = acc_type(video.scalar_type());
  a.out = at::zeros({d.B, d.T, d.H, d.W, d.C}, video.options().dtype(acc));
  a.cnt = at::zeros({d.B, d.T, d.H, d.W, d.nh}, video.options().dtype(acc));
  a.w = weights_acc(weights, d, acc);
}

// One axis map of aggregate_grid (see aggregate_grid.h): for the ng grid coordinates
// g0 + i * stride and the P offsets off(o), the CSR lists, per coordinate u of an axis of n,
// of the codes i * P + o whose mirrored coordinate reflect(g0 + i * stride + off(o), n) is u,
// in increasing code order.
template <typename Off>
std::vector<int64_t> axis_map(int64_t n, int64_t g0, int64_t ng, int64_t stride, int64_t P,
                              Off off) {
  std::vector<int64_t> m(n + 1 + ng * P, 0);
  std::vector<int64_t> target(ng * P);
  for (int64_t i = 0; i < ng; ++i)
    for (int64_t o = 0; o < P; ++o) {
      const int64_t u = reflect(g0 + i * stride + off(o), n);
      target[i * P + o] = u;
      ++m[u + 1];
    }
  for (int64_t u = 0; u < n; ++u) m[u + 1] += m[u];
  std::vector<int64_t> fill(m.begin(), m.begin() + n);
  for (int64_t code = 0; code < ng * P; ++code) m[n + 1 + fill[target[code]]++] = code;
  return m;
}

// [first, last] coordinates of an axis map that receive anything (n, n - 1 if none).
inline std::pair<int64_t, int64_t> map_span(const std::vector<int64_t>& m, int64_t n) {
  int64_t lo = 0, hi = n - 1;
  while (lo < n && m[lo + 1] == m[lo]) ++lo;
  while (hi >= 0 && m[hi + 1] == m[hi]) --hi;
  return {lo, hi};
}

// The three maps of aggregate_grid, one after the other (time, rows, columns), the grid and
// the box of pixels that receive anything (frames t0..t1-1, rows y0..y1-1, columns x0..x1-1).
struct GridMaps {
  std::vector<int64_t> all;
  int64_t ty, tx;  // where the row and column maps start
  Grid g;
  Box box;
};

inline GridMaps grid_maps(const Grid& g, int64_t T, int64_t H, int64_t W, int64_t ps,
                          int64_t pt, int64_t dil) {
  const int64_t r = ps / 2;
  auto tm = axis_map(T, g.t0, g.t1 - g.t0, 1, pt, [](int64_t o) { return o; });
  auto ym = axis_map(H, g.y0, g.nH, g.stride, ps, [&](int64_t o) { return dil * (o - r); });
  auto xm = axis_map(W, g.x0, g.nW, g.stride, ps, [&](int64_t o) { return dil * (o - r); });
  GridMaps out;
  out.g = g;
  const auto st = map_span(tm, T), sy = map_span(ym, H), sx = map_span(xm, W);
  out.box = {st.first, st.second + 1, sy.first, sy.second + 1, sx.first, sx.second + 1};
  out.ty = static_cast<int64_t>(tm.size());
  out.tx = out.ty + static_cast<int64_t>(ym.size());
  out.all = std::move(tm);
  out.all.insert(out.all.end(), ym.begin(), ym.end());
  out.all.insert(out.all.end(), xm.begin(), xm.end());
  return out;
}

// What aggregate_grid's CPU and CUDA hosts share: inds checked against the grid, the maps,
// the sizes, zeroed float32/float64 output and counts, the weights.
struct GridArgs {
  at::Tensor inds;
  GDims d;
  GridMaps maps;
  Box box;  // the output's pixels
  at::Tensor out, cnt;
  std::optional<at::Tensor> w;
};

inline GridArgs aggregate_grid_args(const at::Tensor& video, const at::Tensor& inds,
                                    const std::optional<at::Tensor>& weights,
                                    at::IntArrayRef region, int64_t stride, at::IntArrayRef box,
                                    int64_t ps, int64_t pt, int64_t dilation) {
  check_video_cl(video, "video");
  check_patch_args(ps, pt, dilation);
  const int64_t B = video.size(0);
  GridArgs a;
  a.inds = check_inds(inds, B);
  a.d = dims_from(video, a.inds, ps, pt, dilation);
  const Grid g = make_grid(region, stride, a.d.T, a.d.H, a.d.W);
  TORCH_CHECK(a.d.Q == g.Q, "inds: expected the ", g.Q, " queries of the grid of region ",
              shape_str(region), " and stride ", stride, ", got Q = ", a.d.Q);
  a.maps = grid_maps(g, a.d.T, a.d.H, a.d.W, ps, pt, dilation);
  TORCH_CHECK(box.size() == 6, "box: expected 6 values (t0, t1, y0, y1, x0, x1)");
  const Box& m = a.maps.box;  // what the grid reaches (empty when nothing)
  const bool reach = m.t1 > m.t0 && m.y1 > m.y0 && m.x1 > m.x0;
  TORCH_CHECK(0 <= box[0] && box[0] <= box[1] && box[1] <= a.d.T && 0 <= box[2] &&
                  box[2] <= box[3] && box[3] <= a.d.H && 0 <= box[4] && box[4] <= box[5] &&
                  box[5] <= a.d.W &&
                  (!reach || (box[0] <= m.t0 && m.t1 <= box[1] && box[2] <= m.y0 &&
                              m.y1 <= box[3] && box[4] <= m.x0 && m.x1 <= box[5])),
              "box: ", shape_str(box), " must lie in the video and hold the pixels the grid "
              "reaches, [", m.t0, ", ", m.t1, ") x [", m.y0, ", ", m.y1, ") x [", m.x0, ", ",
              m.x1, ")");
  a.box = {box[0], box[1], box[2], box[3], box[4], box[5]};
  GDims o = a.d;  // the output: the box's pixels
  o.T = box[1] - box[0];
  o.H = box[3] - box[2];
  o.W = box[5] - box[4];
  aggregate_outputs(video, o, weights, a);
  return a;
}

// What aggregate's CPU and CUDA hosts share: inds and at checked (same shape and dtype) and
// contiguous, the sizes, zeroed float32/float64 output and counts, and the weights.
struct AggregateArgs {
  at::Tensor inds, at;
  GDims d;
  at::Tensor out, cnt;
  std::optional<at::Tensor> w;
};

inline AggregateArgs aggregate_args(const at::Tensor& video, const at::Tensor& inds,
                                    const at::Tensor& at_pos,
                                    const std::optional<at::Tensor>& weights, int64_t ps,
                                    int64_t pt, int64_t dilation) {
  check_video_cl(video, "video");
  check_patch_args(ps, pt, dilation);
  const int64_t B = video.size(0);
  AggregateArgs a;
  a.inds = check_inds(inds, B);
  a.at = check_inds(at_pos, B);
  TORCH_CHECK(a.at.sizes() == a.inds.sizes(), "at: expected the shape of inds ",
              stnls::shape_str(a.inds.sizes()),
              ", got ", stnls::shape_str(a.at.sizes()));
  TORCH_CHECK(a.at.scalar_type() == a.inds.scalar_type(), "at: expected the dtype of inds (",
              a.inds.scalar_type(), "), got ", a.at.scalar_type());
  a.d = dims_from(video, a.inds, ps, pt, dilation);
  aggregate_outputs(video, a.d, weights, a);
  return a;
}

}  // namespace stnls
