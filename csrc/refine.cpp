// Operator schema of refine (kernels in cpu/search/refine.cpp, cuda/search/refine.cu; fake
// kernel in napari_stnls/ops/_registrations.py). The differentiable distances are
// search_dists' (search.cpp), at the positions of the returned ids.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(napari_stnls, m) {
  // queries/keys: channels-last videos (B, T, H, W, C); coords (Q, 3) int64, the queries;
  // centres (B, nheads, Q, K_in, 3) float (t, y, x), the centres of each query's K_in windows
  // of side wr (odd), already inside the frame. Candidate (i, jj) of window j, id
  // (j * wr + i) * wr + jj, sits at (t, y + i - wr/2, x + jj - wr/2); a position reached from
  // several windows counts once, as the first window's. Returns the distances
  // (B, nheads, Q, k) in float32 (float64 for float64 videos) and the ids (B, nheads, Q, k)
  // int64 of the k best, by (distance, t, y, x); entries past a query's distinct candidates
  // get id 0 and the worst distance.
  m.def(
      "refine_topk(Tensor queries, Tensor keys, Tensor coords, Tensor centres, int wr, int ps, "
      "int pt, int dilation, int k, bool l2, bool exclude_self) -> (Tensor, Tensor)");
}

// The top-k's distances carry no gradient (search_dists gives them one).
TORCH_LIBRARY_IMPL(napari_stnls, Autograd, m) {
  m.impl("refine_topk", torch::CppFunction::makeFallthrough());
}
