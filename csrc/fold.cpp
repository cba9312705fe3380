// Operator schemas of iunfold / ifold (kernels in cpu/fold_cpu.cpp, cuda/fold_cuda.cu; fake
// kernels and autograd in napari_stnls/ops/_ext_patches.py: each op's backward is the other).
//
// Videos are (B, T, C, H, W) contiguous. The patches are those of the query grid of
// region = (t0, t1, y0, y1, x0, x1) with spacing stride: Q = (t1-t0) * nH * nW centres
// (t, y0 + i*stride, x0 + j*stride) in raster order, each flattened in (pt, C, ps, ps) order.
// Pixels outside the video read zero (iunfold) and are dropped (ifold), like F.unfold/F.fold.
// region and (T, H, W) are SymInt, as in gather.cpp: one compiled graph for every video size.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(napari_stnls, m) {
  // (B, Q, pt*C*ps*ps) in the video's dtype.
  m.def(
      "iunfold_patches(Tensor video, SymInt[6] region, int stride, int ps, int pt, int dilation) "
      "-> Tensor");
  // The adjoint: a new (B, T, C, H, W) video (C = patches.size(2) / (pt*ps*ps)) in the
  // patches' dtype, each pixel the sum of the patch values read from it.
  m.def(
      "ifold_patches(Tensor patches, SymInt[6] region, int stride, SymInt T, SymInt H, SymInt W, "
      "int ps, int pt, int dilation) -> Tensor");
}
