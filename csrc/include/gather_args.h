// What the CPU and CUDA hosts of gather / scatter / aggregate share: the sizes, read from
// the arguments and checked against each other, the weights in the accumulation dtype, and
// aggregate's zeroed outputs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "checks.h"
#include "dispatch.h"
#include "grid.h"
#include "patch_io.h"

namespace stnls {

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
  check_video(video, "video");
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
  check_video(video, "video");
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
