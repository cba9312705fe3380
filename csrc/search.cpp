// Operator schemas of the search (kernels in cpu/search/, cuda/search/; fake kernels and
// autograd in napari_stnls/ops/_ext.py).
//
// search_topk: the k best candidates of every query, their distances and ids (no gradient:
//              the differentiable distances are search_dists').
// search_positions_int: the ids' whole-pixel positions (itype="int"), written by one kernel.
// search_positions: their float positions (itype="float") where no gradient is needed.
// search_centres: the window centres chained along the flows, where no gradient is needed.
// search_dists: patch distances at given positions (differentiable in Python through
//               search_dists_backward), or the distances search_topk already computed there.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(napari_stnls, m) {
  // queries/keys: channels-last videos (B, T, H, W, C); coords (Q, 3) int64; centres
  // (B, Q, nt, 2) float (search-grid centres, y then x); frames (Q, nt) int64; offsets (ws,)
  // the grid offsets in the centres' dtype. Returns the distances (B, nheads, Q, k) in
  // float32 (float64 for float64 videos) and the ids (B, nheads, Q, k) int64 =
  // (slot * ws + i) * ws + j, best first, ties in ascending id order.
  m.def(
      "search_topk(Tensor queries, Tensor keys, Tensor coords, Tensor centres, Tensor frames, "
      "Tensor offsets, int ps, int pt, int dilation, int nheads, int k, bool l2, "
      "bool exclude_self) -> (Tensor, Tensor)");
  // The same top-k for whole-pixel search grids (integer centres and grid spacing), with
  // the queries on a regular grid: origin (t0, y0, x0) = grid[0..2], size (T_r, nH, nW) =
  // grid[3..5], spacing stride0; grid[6] is the (integer) search-grid spacing stride1. The
  // kernels share work between the overlapping patches of a tile of queries (box sums per
  // offset). grid is SymInt[] (sizes of the video): under torch.compile(dynamic=True) it
  // stays symbolic instead of specialising the graph on each video size.
  m.def(
      "search_topk_box(Tensor queries, Tensor keys, Tensor coords, Tensor centres, "
      "Tensor frames, Tensor offsets, SymInt[7] grid, int stride0, int ps, int pt, int dilation, "
      "int nheads, int k, bool l2, bool exclude_self) -> (Tensor, Tensor)");
  // The same top-k for sub-pixel search grids (a flow) with the queries on a dense regular
  // grid (t0, y0, x0, T_r, nH, nW), integer search-grid spacing 1 and dilation 1, L2,
  // float32: pairs (B, nheads, T, 4, H + 2 margin, W + 2 margin) are the keys' patch sums of
  // squared neighbour differences (napari_stnls/ops/_subpixel.py), so each candidate costs a
  // combination of whole-pixel box sums shared by a tile of queries. CUDA only.
  m.def(
      "search_topk_subpix(Tensor queries, Tensor keys, Tensor coords, Tensor centres, "
      "Tensor frames, Tensor pairs, SymInt[6] grid, int ws, int ps, int pt, int nheads, int k, "
      "int margin, bool exclude_self) -> (Tensor, Tensor)");
  // The whole-pixel positions (itype="int") of the ids search_topk(_box) returned: ids
  // (B, nheads, Q, k) int64, centres (B, Q, nt, 2) integer-valued floats, frames (Q, nt)
  // int64, the search grid's side ws and (integer) spacing stride1. Returns kpos
  // (B, nheads, Q, k, 3) int32 (t, y, x).
  m.def(
      "search_positions_int(Tensor ids, Tensor centres, Tensor frames, int ws, int stride1) -> "
      "Tensor");
  // The same ids' float positions (itype="float"), for calls that need no gradient w.r.t.
  // the centres: kpos (B, nheads, Q, k, 3) in the centres' dtype, the bits of the PyTorch
  // glue (napari_stnls/ops/_window.py, positions).
  m.def(
      "search_positions(Tensor ids, Tensor centres, Tensor frames, int ws, float stride1) -> "
      "Tensor");
  // The window centres (B, Q, nt, 2) (y, x) of queries coords (Q, 3) int64 in frames (Q, nt)
  // int64 (ascending), chained along fflow / bflow (B, T*H*W, 2) (dx, dy), in the flows'
  // dtype: the bits of the PyTorch glue (napari_stnls/ops/_window.py, centres), for calls
  // that need no gradient w.r.t. the flows. round: whole-pixel centres; r: the half-width
  // of the search grid (stride1 * (ws // 2)) kept inside the frame.
  m.def(
      "search_centres(Tensor coords, Tensor frames, Tensor fflow, Tensor bflow, int T, int H, "
      "int W, bool round, float r) -> Tensor");
  // kpos (B, nheads, Q, k, 3) float or integer (t, y, x). Returns dists (B, nheads, Q, k)
  // in float32 (float64 for float64 videos): computed, or a copy of `given` (the distances
  // search_topk returned for these positions, which its kernels summed in their own order).
  m.def(
      "search_dists(Tensor queries, Tensor keys, Tensor coords, Tensor kpos, int ps, int pt, "
      "int dilation, bool l2, Tensor? given=None) -> Tensor");
  // Gradients of sum(grad * dists) w.r.t. queries, keys (channels-last) and kpos.
  m.def(
      "search_dists_backward(Tensor grad, Tensor queries, Tensor keys, Tensor coords, "
      "Tensor kpos, int ps, int pt, int dilation, bool l2, bool[3] needs) -> "
      "(Tensor, Tensor, Tensor)");
}

// The top-k's distances and the int positions carry no gradient (search_dists gives the
// distances one): their outputs are plain tensors, with no autograd node to warn about.
TORCH_LIBRARY_IMPL(napari_stnls, Autograd, m) {
  m.impl("search_topk", torch::CppFunction::makeFallthrough());
  m.impl("search_topk_box", torch::CppFunction::makeFallthrough());
  m.impl("search_topk_subpix", torch::CppFunction::makeFallthrough());
  m.impl("search_positions_int", torch::CppFunction::makeFallthrough());
  m.impl("search_positions", torch::CppFunction::makeFallthrough());
  m.impl("search_centres", torch::CppFunction::makeFallthrough());
}
