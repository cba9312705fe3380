// Operator schemas of gather / scatter (kernels in cpu/gather_cpu.cpp, cuda/gather_cuda.cu;
// fake kernels and autograd in napari_stnls/ops/_ext_patches.py).
//
// Videos are channels-last (B, T, H, W, C) and contiguous; inds (B, nheads, Q, K, 3) hold
// (t, y, x) positions, integer (int32/int64: whole pixels) or floating (float32/float64:
// bilinear in y and x, t integer-valued). Patches are (B, nheads, Q, K, pt, C/nheads, ps, ps).
//
// Video sizes (T, H, W, region, box) are SymInt: under torch.compile(dynamic=True) they stay
// symbolic, where int would make Dynamo specialise the graph on each video size. The kernels
// take them as int64_t (the dispatcher passes concrete values).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(napari_stnls, m) {
  // The patches at inds, mirrored at the borders, read bilinearly at sub-pixel positions.
  m.def("gather_patches(Tensor video, Tensor inds, int ps, int pt, int dilation) -> Tensor");
  // Gradients of sum(grad * gather_patches(video, inds)) w.r.t. video (channels-last, the
  // video's dtype) and inds (inds' dtype; the t column is zero). needs = (video, inds); an
  // output not needed is returned as zeros.
  m.def(
      "gather_patches_backward(Tensor grad, Tensor video, Tensor inds, int ps, int pt, "
      "int dilation, bool[2] needs) -> (Tensor, Tensor)");
  // Sum of weight * patch added at the pixels gather reads it from (channels-last
  // (B, T, H, W, C)), and of the weights (B, T, H, W, nheads). weights (B, nheads, Q, K) of
  // any floating dtype; None is 1. Outputs in the patches' dtype.
  m.def(
      "scatter_patches(Tensor patches, Tensor inds, Tensor? weights, SymInt T, SymInt H, SymInt W, "
      "int ps, int pt, int dilation) -> (Tensor, Tensor)");
  // Gradients w.r.t. patches, weights (zeros when weights is None) and inds given the
  // gradients of scatter_patches' two outputs (None: zero). needs = (patches, weights, inds).
  m.def(
      "scatter_patches_backward(Tensor? grad_video, Tensor? grad_counts, Tensor patches, "
      "Tensor inds, Tensor? weights, SymInt T, SymInt H, SymInt W, int ps, int pt, int dilation, "
      "bool[3] needs) -> (Tensor, Tensor, Tensor)");
  // scatter_patches(gather_patches(video, inds), at, weights) without storing the patches:
  // outputs (B, T, H, W, C) and (B, T, H, W, nheads) in the video's dtype; at has inds' shape
  // and dtype. No autograd (napari_stnls.ops.aggregate composes gather and scatter when a
  // gradient is needed). The CUDA kernel adds with atomics, like scatter.
  m.def(
      "aggregate_patches(Tensor video, Tensor inds, Tensor at, Tensor? weights, int ps, int pt, "
      "int dilation) -> (Tensor, Tensor)");
  // aggregate_patches with at = each query's own position on the grid of region (t0, t1, y0,
  // y1, x0, x1) and stride (Q of inds = that grid's size), in fold form: each output pixel
  // sums what lands on it (csrc/include/aggregate_grid.h). No atomics on CUDA: the same bits
  // on every run. Outputs: the pixels of box (t0, t1, y0, y1, x0, x1), which must hold every
  // pixel the grid's patches reach: (B, t1 - t0, y1 - y0, x1 - x0, C) and (..., nheads), in
  // the video's dtype (only the box is allocated, so that a band of queries of a large video
  // costs the band's reach, not the video).
  m.def(
      "aggregate_grid(Tensor video, Tensor inds, Tensor? weights, SymInt[] region, int stride, "
      "SymInt[] box, int ps, int pt, int dilation) -> (Tensor, Tensor)");
}
